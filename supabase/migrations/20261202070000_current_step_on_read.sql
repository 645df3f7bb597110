-- A run's current step is derived where the run is read, not written by every transition (bench/RESULTS.md "Run
-- writes and answers (branch pgread)").
--
-- chain_runs.current_step_key was kept up to date by the transitions: each claim named its step, each completion that
-- handed over to a next step named that one (a chain_runs UPDATE of its own: for a chain3 run two statements, two row
-- versions with ~10 CHECK preparations each and their WAL, for nothing but this column), the run's end wrote
-- 'completed', 'failed' or 'canceled'. Its value is a function of what is stored anyway:
--   * succeeded -> 'completed'; failed, canceled -> the status; queued -> 'processing' (no step claimed yet);
--   * running -> the key of the first step, in step order, that has not succeeded (the one being worked on, queued
--     again for a retry, or handed its producer's output and waiting for its claim); 'processing' if none.
-- The run's updated_at moved with those writes; what it showed is now the later of the run row's own updated_at and
-- its steps' last completed_at (a completion and the hand-over it made were one transaction, so one now()).
-- Both are computed from the steps each run read already aggregates (one pass, no further index probe), in
-- bc_run_as_json (get, create, cancel, callback) and bc_runs_as_json (the list). The API's resource is unchanged.
-- A list page's builder at 1,000,000 runs (21 runs, warm): +1-4% for pages of ended runs, +5% for a page of running
-- ones; two scalar subqueries by index for running runs only cost +0-4% and +23% (their plans start every call).
--
-- The column stays (bc_create_run and bc_create_run_queued still insert 'processing' into it) but nothing reads or
-- maintains it any more; see its comment.
--
-- Functions otherwise as in 20261202050000_runs_by_primary_key.sql (bc_take_step, bc_complete_step, bc_finish_run),
-- 20261201091000_run_json_once.sql (bc_run_as_json) and 20261202040000_list_rows_as_shown.sql (bc_runs_as_json, with
-- the generic plan of 20261202040200_list_and_purge_generic_plans.sql: `create or replace` resets a SET clause).

comment on column public.chain_runs.current_step_key is
    'Not maintained since 20261202070000_current_step_on_read.sql: the current step is derived on read '
    '(babychain_private.bc_run_as_json, bc_runs_as_json). Written only as ''processing'' at create.';

create or replace function babychain_private.bc_run_as_json(p_run_id uuid) returns json
language sql stable set search_path = '' as $$
    select json_build_object(
        'id', r.id, 'owner_id', r.owner_id, 'chain_slug', r.chain_slug, 'chain_version', r.chain_version,
        'mode', r.mode, 'status', r.status, 'input', r.input, 'metadata', r.metadata, 'webhook_url', r.webhook_url,
        'idempotency_key', r.idempotency_key, 'request_hash', r.request_hash,
        'current_step_key', case r.status when 'running' then coalesce(st.current_step_key, 'processing')
                                          when 'queued' then 'processing'
                                          when 'succeeded' then 'completed'
                                          else r.status end,
        'output', r.output, 'error_code', r.error_code, 'error_message', r.error_message, 'deadline_at', r.deadline_at,
        'callback_event_id', r.callback_event_id, 'callback_status', r.callback_status,
        'callback_attempts', r.callback_attempts, 'callback_next_at', r.callback_next_at,
        'callback_claimed_at', r.callback_claimed_at, 'callback_claimed_by', r.callback_claimed_by,
        'created_at', r.created_at, 'updated_at', greatest(r.updated_at, st.completed_at),
        'completed_at', r.completed_at, 'estimate', r.estimate,
        'steps', coalesce(st.steps, '[]'::json))
      from public.chain_runs r
     cross join lateral (
        select json_agg(s order by s.step_index) as steps,
               (array_agg(s.step_key order by s.step_index) filter (where s.status <> 'succeeded'))[1]
                   as current_step_key,
               max(s.completed_at) as completed_at
          from public.chain_steps s where s.run_id = r.id) st
     where r.id = p_run_id
$$;

create or replace function babychain_private.bc_runs_as_json(p_ids uuid[]) returns json
language sql stable set search_path = '' set plan_cache_mode = force_generic_plan as $$
    select json_build_object(
        'run_fields', json_build_array(
            'id', 'chain_slug', 'chain_version', 'mode', 'status', 'input', 'metadata', 'webhook_url',
            'current_step_key', 'output', 'error_code', 'error_message', 'callback_event_id', 'callback_status',
            'callback_attempts', 'callback_next_at', 'created_at', 'updated_at', 'completed_at', 'estimate', 'steps'),
        'step_fields', json_build_array(
            'id', 'step_index', 'step_key', 'step_kind', 'model_identifier', 'depends_on', 'status', 'input_files',
            'output_files', 'provider', 'provider_metadata', 'attempt', 'error_code', 'error_message', 'started_at',
            'completed_at', 'created_at', 'updated_at'),
        'runs', coalesce(json_agg(json_build_array(
            r.id, r.chain_slug, r.chain_version, r.mode, r.status, r.input, r.metadata, r.webhook_url,
            case r.status when 'running' then coalesce(st.current_step_key, 'processing')
                          when 'queued' then 'processing'
                          when 'succeeded' then 'completed'
                          else r.status end,
            r.output, r.error_code, r.error_message, r.callback_event_id, r.callback_status,
            r.callback_attempts, r.callback_next_at, r.created_at, greatest(r.updated_at, st.completed_at),
            r.completed_at, r.estimate, coalesce(st.steps, '[]'::json))
            order by u.n), '[]'::json))
      from unnest(p_ids) with ordinality u(id, n) join public.chain_runs r on r.id = u.id
     cross join lateral (
        select json_agg(json_build_array(
                   s.id, s.step_index, s.step_key, s.step_kind, s.model_identifier, s.depends_on, s.status,
                   s.input_files, s.output_files, s.provider, s.provider_metadata, s.attempt, s.error_code,
                   s.error_message, s.started_at, s.completed_at, s.created_at, s.updated_at) order by s.step_index)
                   as steps,
               (array_agg(s.step_key order by s.step_index) filter (where s.status <> 'succeeded'))[1]
                   as current_step_key,
               max(s.completed_at) as completed_at
          from public.chain_steps s where s.run_id = r.id) st
$$;

create or replace function public.bc_take_step(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_step public.chain_steps;
    v_run jsonb;
begin
    update public.chain_steps s
       set status = 'running',
           attempt = s.attempt + 1,
           seq = s.seq + 1,
           provider_job_id = null,
           next_check_at = now() + make_interval(secs => (p->>'submit_timeout_seconds')::double precision),
           started_at = coalesce(s.started_at, now()),
           error_code = null,
           error_message = null,
           updated_at = now()
     where s.id = (p->>'step_id')::uuid and s.run_id = (p->>'run_id')::uuid
       and s.status = 'queued'
       and s.seq = (p->>'seq')::int
       and (select r.status from public.chain_runs r where r.id = s.run_id) in ('queued', 'running')
       -- A first step has no producer: no read of the run's steps for it.
       and (cardinality(s.depends_on) = 0
            or not exists (select from public.chain_steps d
                            where d.run_id = s.run_id and d.step_key = any (s.depends_on)
                              and d.status <> 'succeeded'))
    returning s.* into v_step;
    if v_step.id is not null then
        -- Only a queued run changes (it starts; the current step is derived on read): a later step's claim saves a
        -- row version. The run fields a step message needs besides the step come back from the same statement.
        update public.chain_runs r
           set status = 'running', updated_at = now()
         where r.id = v_step.run_id and r.status not in ('running', 'succeeded', 'failed', 'canceled')  -- queued
        returning jsonb_build_object('id', r.id, 'mode', r.mode, 'status', r.status, 'webhook_url', r.webhook_url)
          into v_run;
        if v_run is null then  -- the run row was left as it was: read it
            select jsonb_build_object('id', r.id, 'mode', r.mode, 'status', r.status, 'webhook_url', r.webhook_url)
              into v_run from public.chain_runs r where r.id = v_step.run_id;
        end if;
        return jsonb_build_object('action', 'claimed', 'step', to_jsonb(v_step), 'run', v_run);
    end if;
    select s.* into v_step from public.chain_steps s
     where s.id = (p->>'step_id')::uuid and s.run_id = (p->>'run_id')::uuid
       and s.status = 'running' and s.seq = (p->>'seq')::int and s.provider_job_id is not null
       and (select r.status from public.chain_runs r where r.id = s.run_id) in ('queued', 'running');
    if v_step.id is null then
        return null;
    end if;
    return jsonb_build_object('action', 'check', 'step', to_jsonb(v_step),
                              'run', babychain_private.bc_step_run_json(v_step.run_id));
end
$$;

create or replace function public.bc_complete_step(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_step public.chain_steps;
    v_next public.chain_steps;
    v_claim boolean := p->'claim_next' is not null and p->'claim_next' <> 'null'::jsonb;
begin
    update public.chain_steps s
       set status = 'succeeded',
           output_files = p->'output_files',
           provider = coalesce(p->>'provider', s.provider),
           provider_job_id = coalesce(p->>'provider_job_id', s.provider_job_id),
           request_params = coalesce(nullif(p->'request_params', 'null'::jsonb), s.request_params),
           input_files = coalesce(nullif(p->'input_files', 'null'::jsonb), s.input_files),
           provider_metadata = s.provider_metadata || coalesce(nullif(p->'provider_metadata', 'null'::jsonb),
                                                               '{}'::jsonb),
           seq = s.seq + 1,
           next_check_at = null,
           error_code = null,
           error_message = null,
           completed_at = now(),
           updated_at = now()
     where s.id = (p->>'step_id')::uuid and s.status = 'running' and s.attempt = (p->>'attempt')::int
       and (select r.status from public.chain_runs r where r.id = s.run_id) = 'running'
    returning s.* into v_step;
    if v_step.id is null then
        return null;
    end if;

    -- The dependent step gets the outputs, and is claimed when asked and every producer of it is done: one update.
    update public.chain_steps n
       set input_files = p->'output_files',
           status = case when v_claim then 'running' else n.status end,
           attempt = case when v_claim then n.attempt + 1 else n.attempt end,
           seq = case when v_claim then n.seq + 1 else n.seq end,
           started_at = case when v_claim then coalesce(n.started_at, now()) else n.started_at end,
           next_check_at = case when v_claim
                                then now() + make_interval(secs => (p->'claim_next'->>'submit_timeout_seconds')
                                                                   ::double precision)
                                else now() end,
           updated_at = now()
     where n.run_id = v_step.run_id and n.status = 'queued' and v_step.step_key = any (n.depends_on)
       and (not v_claim
            -- This step is its only producer (it has just succeeded): nothing else to wait for, nothing to read.
            or n.depends_on = array[v_step.step_key]
            or not exists (select from public.chain_steps d
                            where d.run_id = n.run_id and d.step_key = any (n.depends_on)
                              and d.status <> 'succeeded'))
    returning n.* into v_next;
    if v_next.id is null then
        -- The run ends when no step is left unfinished. Asked first: then no queued step depends on this one either
        -- (the last step's completion, the usual case here, makes no second search for a dependent).
        if not exists (select from public.chain_steps where run_id = v_step.run_id and status <> 'succeeded') then
            -- bc_finish_run's update for a run that succeeds (it has no active step left to end), written out: a
            -- call of a helper with a SET clause costs its own set-up.
            update public.chain_runs
               set status = 'succeeded',
                   error_code = null,
                   error_message = null,
                   output = jsonb_build_object('final_step_key', v_step.step_key, 'output_files', p->'output_files'),
                   completed_at = now(),
                   updated_at = now(),
                   callback_status = case when webhook_url is null then null else 'pending' end,
                   callback_next_at = case when webhook_url is null then null else now() end
             where id = v_step.run_id and status not in ('succeeded', 'failed', 'canceled');  -- still active
            return jsonb_build_object('run_status', 'succeeded', 'next_step', null, 'next_claimed', false);
        end if;
        if v_claim then
            -- Another producer of it is still running: hand over the outputs only; its completion claims it.
            update public.chain_steps n
               set input_files = p->'output_files', next_check_at = now(), updated_at = now()
             where n.run_id = v_step.run_id and n.status = 'queued' and v_step.step_key = any (n.depends_on)
            returning n.* into v_next;
            v_claim := false;
        end if;
    end if;
    if v_next.id is not null then
        return jsonb_build_object('run_status', 'running', 'next_step', to_jsonb(v_next),
                                  'next_claimed', v_claim);
    end if;
    -- No step depends on this one, and others are still unfinished.
    return jsonb_build_object('run_status', 'running', 'next_step', null, 'next_claimed', false);
end
$$;

create or replace function babychain_private.bc_finish_run(p_run_id uuid, p_status text, p_code text, p_message text,
                                                           p_output jsonb)
returns boolean
language plpgsql set search_path = '' as $$
declare
    v_found boolean;
begin
    if p_status <> 'succeeded' then
        perform from public.chain_steps
         where run_id = p_run_id and status in ('queued', 'running')
         order by step_index
           for update;
    end if;
    update public.chain_runs
       set status = p_status,
           error_code = p_code,
           error_message = p_message,
           output = p_output,
           completed_at = now(),
           updated_at = now(),
           callback_status = case when webhook_url is null then null else 'pending' end,
           callback_next_at = case when webhook_url is null then null else now() end
     where id = p_run_id and status not in ('succeeded', 'failed', 'canceled')  -- still active
    returning true into v_found;
    if not coalesce(v_found, false) then
        return false;
    end if;
    if p_status <> 'succeeded' then
        update public.chain_steps
           set status = case when status = 'running' then 'canceled' else 'skipped' end,
               completed_at = case when status = 'running' then now() else completed_at end,
               next_check_at = null,
               seq = seq + 1,
               updated_at = now()
         where run_id = p_run_id and status in ('queued', 'running');
    end if;
    return true;
end
$$;
