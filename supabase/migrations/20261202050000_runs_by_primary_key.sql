-- A run found by its primary key in the step transitions, whatever the planner thinks of the active runs
-- (bench/RESULTS.md "Postgres per transition, third pass").
--
-- The transitions check and end a run by id with its status in the same condition:
--   exists (select from chain_runs r where r.id = s.run_id and r.status in ('queued', 'running'))
--   update chain_runs ... where id = $1 and status in ('queued', 'running')
-- The second half is the predicate of the partial index chain_runs_active_deadline, so the planner may read that
-- index instead of the primary key: every active run's entry, and the entries of runs that have ended since the
-- last vacuum (an ended run leaves its entry behind until then), each checked against the id. It does so whenever
-- the index looks small: on a young database (every test's and benchmark's), and after any ANALYZE that sees few
-- active runs; plpgsql then keeps that plan for the connection. EXPLAIN (ANALYZE) of bc_complete_step's first
-- statement after 300 chain3 runs: a bitmap heap scan of 382 index entries and 18 heap pages (0.13 ms) where the
-- primary key reads one entry (0.01 ms); the generic plan of the run updates' form (`where id = $1 and status in
-- (...)`) took that index with the id as a filter.
-- Now the status is read from the run found by its key (a scalar subquery: no index condition but the id), and the
-- updates say "not ended" (`status not in (<the ended statuses>)`: the same rows, as chain_runs_status_check allows
-- exactly queued, running and the three ended ones), which the planner cannot match with the partial index's
-- predicate. Same guards, same answers; functions otherwise as in 20261202034000_known_producers.sql,
-- 20261202020000_end_run_lock_order.sql (bc_finish_run) and 20261121000000_chain_engine.sql (bc_fail_step).

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
        -- Skipped when nothing changes (the producer's completion already named this step): a row version saved.
        -- The run fields a step message needs besides the step come back from the same statement.
        update public.chain_runs r
           set status = 'running', current_step_key = v_step.step_key, updated_at = now()
         where r.id = v_step.run_id and r.status not in ('succeeded', 'failed', 'canceled')  -- still active
           and (r.status <> 'running' or r.current_step_key is distinct from v_step.step_key)
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
                   current_step_key = 'completed',
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
        update public.chain_runs set current_step_key = v_next.step_key, updated_at = now()
         where id = v_step.run_id;
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
           current_step_key = case p_status when 'succeeded' then 'completed' else p_status end,
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

create or replace function public.bc_fail_step(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_step public.chain_steps;
begin
    update public.chain_steps s
       set status = 'failed',
           error_code = p->>'error_code',
           error_message = p->>'error_message',
           provider_metadata = babychain_private.bc_merge_metadata(s.provider_metadata, p->'provider_metadata'),
           seq = s.seq + 1,
           next_check_at = null,
           completed_at = now(),
           updated_at = now()
     where s.id = (p->>'step_id')::uuid
       and s.status in ('queued', 'running')
       and (p->>'attempt' is null or s.attempt = (p->>'attempt')::int)
       and (p->>'seq' is null or s.seq = (p->>'seq')::int)
       and (select r.status from public.chain_runs r where r.id = s.run_id) in ('queued', 'running')
    returning s.* into v_step;
    if v_step.id is null then
        return null;
    end if;
    perform babychain_private.bc_finish_run(v_step.run_id, 'failed', p->>'error_code', p->>'error_message', null);
    return jsonb_build_object('run_status', 'failed', 'step', to_jsonb(v_step));
end
$$;
