-- A list page's cost was its JSON: the page is found by index in ~0.1 ms, then each run and its steps were built as
-- jsonb (to_jsonb of each row, `||` the steps, jsonb_agg) and the page's jsonb_agg took every run apart and built it
-- again: each step's values were serialised four or five times. Building json (text, appended once) costs a third of
-- that, and one cast to jsonb at the end parses it once. The result is the same jsonb, byte for byte: jsonb orders
-- keys itself, and json and jsonb render every value of these columns alike (tests/integration/test_run_json.py
-- compares it with the to_jsonb definition over runs in every state).

-- A run with its steps as json text: the run's columns by name (a new column must be added here; the test above
-- fails until it is), its steps as whole rows in step order.
create function babychain_private.bc_run_as_json(p_run_id uuid) returns json
language sql stable set search_path = '' as $$
    select json_build_object(
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
      from public.chain_runs r where r.id = p_run_id
$$;

-- A run with its steps, as every run-returning function answers it.
create or replace function babychain_private.bc_run_json(p_run_id uuid) returns jsonb
language sql stable set search_path = '' as $$
    select babychain_private.bc_run_as_json(p_run_id)::jsonb
$$;

revoke execute on function babychain_private.bc_run_as_json(uuid) from public, anon, authenticated, service_role;

-- The run list of 20261201083000_list_by_index.sql, unchanged but for how the page is built.
create or replace function public.bc_list_runs(p jsonb) returns jsonb
language sql stable security definer set search_path = '' as $$
    -- The page as one json array, cast once (not jsonb_agg of each run's jsonb, which rebuilds every run).
    select coalesce(
        json_agg(babychain_private.bc_run_as_json(page.id) order by page.created_at desc, page.id desc)::jsonb,
        '[]'::jsonb)
      from (
        (select r.id, r.created_at from public.chain_runs r
          where p->>'chain_slug' is null and coalesce(p->>'status', 'queued') = 'queued'
            and r.owner_id = p->>'owner_id' and r.status = 'queued'
            and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                        coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          order by r.created_at desc, r.id desc limit (p->>'limit')::int)
        union all
        (select r.id, r.created_at from public.chain_runs r
          where p->>'chain_slug' is null and coalesce(p->>'status', 'running') = 'running'
            and r.owner_id = p->>'owner_id' and r.status = 'running'
            and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                        coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          order by r.created_at desc, r.id desc limit (p->>'limit')::int)
        union all
        (select r.id, r.created_at from public.chain_runs r
          where p->>'chain_slug' is null and coalesce(p->>'status', 'succeeded') = 'succeeded'
            and r.owner_id = p->>'owner_id' and r.status = 'succeeded'
            and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                        coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          order by r.created_at desc, r.id desc limit (p->>'limit')::int)
        union all
        (select r.id, r.created_at from public.chain_runs r
          where p->>'chain_slug' is null and coalesce(p->>'status', 'failed') = 'failed'
            and r.owner_id = p->>'owner_id' and r.status = 'failed'
            and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                        coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          order by r.created_at desc, r.id desc limit (p->>'limit')::int)
        union all
        (select r.id, r.created_at from public.chain_runs r
          where p->>'chain_slug' is null and coalesce(p->>'status', 'canceled') = 'canceled'
            and r.owner_id = p->>'owner_id' and r.status = 'canceled'
            and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                        coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          order by r.created_at desc, r.id desc limit (p->>'limit')::int)
        union all
        (select r.id, r.created_at from public.chain_runs r
          where p->>'chain_slug' is not null and coalesce(p->>'status', 'queued') = 'queued'
            and r.owner_id = p->>'owner_id' and r.chain_slug = p->>'chain_slug' and r.status = 'queued'
            and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                        coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          order by r.created_at desc, r.id desc limit (p->>'limit')::int)
        union all
        (select r.id, r.created_at from public.chain_runs r
          where p->>'chain_slug' is not null and coalesce(p->>'status', 'running') = 'running'
            and r.owner_id = p->>'owner_id' and r.chain_slug = p->>'chain_slug' and r.status = 'running'
            and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                        coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          order by r.created_at desc, r.id desc limit (p->>'limit')::int)
        union all
        (select r.id, r.created_at from public.chain_runs r
          where p->>'chain_slug' is not null and coalesce(p->>'status', 'succeeded') = 'succeeded'
            and r.owner_id = p->>'owner_id' and r.chain_slug = p->>'chain_slug' and r.status = 'succeeded'
            and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                        coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          order by r.created_at desc, r.id desc limit (p->>'limit')::int)
        union all
        (select r.id, r.created_at from public.chain_runs r
          where p->>'chain_slug' is not null and coalesce(p->>'status', 'failed') = 'failed'
            and r.owner_id = p->>'owner_id' and r.chain_slug = p->>'chain_slug' and r.status = 'failed'
            and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                        coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          order by r.created_at desc, r.id desc limit (p->>'limit')::int)
        union all
        (select r.id, r.created_at from public.chain_runs r
          where p->>'chain_slug' is not null and coalesce(p->>'status', 'canceled') = 'canceled'
            and r.owner_id = p->>'owner_id' and r.chain_slug = p->>'chain_slug' and r.status = 'canceled'
            and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                        coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          order by r.created_at desc, r.id desc limit (p->>'limit')::int)
        order by created_at desc, id desc
        limit (p->>'limit')::int
      ) page
$$;
