-- A list page under 2 ms at any history: the page's JSON built in one statement and returned as json.
--
-- The page was found by index in ~0.1 ms and then cost 2–2.5 ms more (1,000,000 runs, a page of 21 runs with 63
-- steps, ~70 KB): one bc_run_as_json call per run (a function call, a second primary-key lookup, and under a forced
-- custom plan a fresh plan of its statement for every run), then the page's json parsed into jsonb (~0.6 ms), which
-- the server serialised to text again for the client (~0.3 ms). Now one helper builds the whole page from the ids in
-- page order (each run's steps by their (run_id, step_index) index), and bc_list_runs returns that json as it is:
-- nothing is parsed or serialised twice.
--
-- The values are the same: json and jsonb render every value of these columns alike and the jsonb columns (input,
-- metadata, output, estimate, a step's params and provider metadata) are rendered from their jsonb, so `::jsonb` of
-- the page is byte for byte the page before (tests/integration/test_run_json.py compares it with the to_jsonb
-- definition). What differs on the wire is only the run's and the step's key order and spacing, which the client's
-- parse does not keep: the API builds its resource field by field (engine/presenter.py).

-- Runs by id, as one json array in the order of the ids; the run's columns as bc_run_as_json names them (a new column
-- must be added in both: test_run_json fails until it is).
create function babychain_private.bc_runs_as_json(p_ids uuid[]) returns json
language sql stable set search_path = '' as $$
    select coalesce(json_agg(json_build_object(
        'id', r.id, 'owner_id', r.owner_id, 'chain_slug', r.chain_slug, 'chain_version', r.chain_version,
        'mode', r.mode, 'status', r.status, 'input', r.input, 'metadata', r.metadata, 'webhook_url', r.webhook_url,
        'idempotency_key', r.idempotency_key, 'request_hash', r.request_hash, 'current_step_key', r.current_step_key,
        'output', r.output, 'error_code', r.error_code, 'error_message', r.error_message, 'deadline_at', r.deadline_at,
        'callback_event_id', r.callback_event_id, 'callback_status', r.callback_status,
        'callback_attempts', r.callback_attempts, 'callback_next_at', r.callback_next_at,
        'callback_claimed_at', r.callback_claimed_at, 'callback_claimed_by', r.callback_claimed_by,
        'created_at', r.created_at, 'updated_at', r.updated_at, 'completed_at', r.completed_at,
        'estimate', r.estimate,
        'steps', coalesce((select json_agg(s order by s.step_index) from public.chain_steps s where s.run_id = r.id),
                          '[]'::json))
        order by u.n), '[]'::json)
      from unnest(p_ids) with ordinality u(id, n) join public.chain_runs r on r.id = u.id
$$;
revoke execute on function babychain_private.bc_runs_as_json(uuid[]) from public, anon, authenticated, service_role;

-- The return type changes (jsonb -> json), which `create or replace` cannot do.
--
-- The page is found as in 20261201083000_list_by_index.sql (every filter and the cursor are index conditions; a page
-- with no status filter merges one index range per status), but each kind of filter has its own query, chosen by a
-- CASE on the arguments, instead of ten arms gated by conditions on them: a custom plan (the arguments known) folds
-- the CASE and plans only the query it needs (one index range for a status filter, five otherwise) rather than
-- ten arms, and a generic plan holds the four queries and runs only the one the CASE picks.
drop function public.bc_list_runs(jsonb);
create function public.bc_list_runs(p jsonb) returns json
language sql stable security definer set search_path = '' as $$
    select babychain_private.bc_runs_as_json(case
        when p->>'status' is not null and p->>'chain_slug' is not null then
          array(select r.id from public.chain_runs r
              where r.owner_id = p->>'owner_id' and r.chain_slug = p->>'chain_slug' and r.status = p->>'status'
                and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                            coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
              order by r.created_at desc, r.id desc limit (p->>'limit')::int)
        when p->>'status' is not null then
          array(select r.id from public.chain_runs r
              where r.owner_id = p->>'owner_id' and r.status = p->>'status'
                and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                            coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
              order by r.created_at desc, r.id desc limit (p->>'limit')::int)
        when p->>'chain_slug' is not null then
          array(select page.id from (
            (select r.id, r.created_at from public.chain_runs r
              where r.owner_id = p->>'owner_id' and r.chain_slug = p->>'chain_slug' and r.status = 'queued'
                and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                            coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
              order by r.created_at desc, r.id desc limit (p->>'limit')::int)
            union all
            (select r.id, r.created_at from public.chain_runs r
              where r.owner_id = p->>'owner_id' and r.chain_slug = p->>'chain_slug' and r.status = 'running'
                and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                            coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
              order by r.created_at desc, r.id desc limit (p->>'limit')::int)
            union all
            (select r.id, r.created_at from public.chain_runs r
              where r.owner_id = p->>'owner_id' and r.chain_slug = p->>'chain_slug' and r.status = 'succeeded'
                and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                            coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
              order by r.created_at desc, r.id desc limit (p->>'limit')::int)
            union all
            (select r.id, r.created_at from public.chain_runs r
              where r.owner_id = p->>'owner_id' and r.chain_slug = p->>'chain_slug' and r.status = 'failed'
                and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                            coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
              order by r.created_at desc, r.id desc limit (p->>'limit')::int)
            union all
            (select r.id, r.created_at from public.chain_runs r
              where r.owner_id = p->>'owner_id' and r.chain_slug = p->>'chain_slug' and r.status = 'canceled'
                and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                            coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
              order by r.created_at desc, r.id desc limit (p->>'limit')::int)
            order by created_at desc, id desc limit (p->>'limit')::int) page
          order by page.created_at desc, page.id desc)
        else
          array(select page.id from (
            (select r.id, r.created_at from public.chain_runs r
              where r.owner_id = p->>'owner_id' and r.status = 'queued'
                and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                            coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
              order by r.created_at desc, r.id desc limit (p->>'limit')::int)
            union all
            (select r.id, r.created_at from public.chain_runs r
              where r.owner_id = p->>'owner_id' and r.status = 'running'
                and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                            coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
              order by r.created_at desc, r.id desc limit (p->>'limit')::int)
            union all
            (select r.id, r.created_at from public.chain_runs r
              where r.owner_id = p->>'owner_id' and r.status = 'succeeded'
                and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                            coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
              order by r.created_at desc, r.id desc limit (p->>'limit')::int)
            union all
            (select r.id, r.created_at from public.chain_runs r
              where r.owner_id = p->>'owner_id' and r.status = 'failed'
                and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                            coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
              order by r.created_at desc, r.id desc limit (p->>'limit')::int)
            union all
            (select r.id, r.created_at from public.chain_runs r
              where r.owner_id = p->>'owner_id' and r.status = 'canceled'
                and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                            coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
              order by r.created_at desc, r.id desc limit (p->>'limit')::int)
            order by created_at desc, id desc limit (p->>'limit')::int) page
          order by page.created_at desc, page.id desc)
        end)
$$;
grant execute on function public.bc_list_runs(jsonb) to service_role;
