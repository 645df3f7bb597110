-- Smaller answers from the step transitions (bench/RESULTS.md "Run writes and answers (branch pgread)").
--
-- bc_take_step and bc_complete_step answered a step as to_jsonb of its whole row (24 columns, ~0.7 KB for a chain3
-- step), which the executor parsed (store/postgres.py: json.loads). The executor reads 14 of them (the claim's step
-- to submit, a running step to check, the next step it claimed or sends a message for); the run id it has, and the
-- step's index, submitted request, outputs, next check, error, completion and row timestamps it never reads. Now the
-- step is jsonb_build_object of those 14 (store/rows.py: WorkStep): per chain3 run 3.0 KB -> 2.0 KB of answers and
-- ~12 us less of the executor's json.loads; Postgres's CPU for the two functions did not move measurably. (Answering
-- json instead of jsonb, built as text once, was tried: it was not cheaper for the server, so the return types stay.)
-- Guards, writes and every other answer field as in 20261202070000_current_step_on_read.sql; the check's run fields
-- are read by bc_step_run_json's query written out, not through a nested function call.

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
        return jsonb_build_object('action', 'claimed', 'step', jsonb_build_object(
                'id', v_step.id, 'step_key', v_step.step_key, 'step_kind', v_step.step_kind,
                'model_identifier', v_step.model_identifier, 'depends_on', v_step.depends_on, 'status', v_step.status,
                'params', v_step.params, 'input_files', v_step.input_files, 'provider', v_step.provider,
                'provider_job_id', v_step.provider_job_id, 'provider_metadata', v_step.provider_metadata,
                'attempt', v_step.attempt, 'seq', v_step.seq, 'started_at', v_step.started_at), 'run', v_run);
    end if;
    select s.* into v_step from public.chain_steps s
     where s.id = (p->>'step_id')::uuid and s.run_id = (p->>'run_id')::uuid
       and s.status = 'running' and s.seq = (p->>'seq')::int and s.provider_job_id is not null
       and (select r.status from public.chain_runs r where r.id = s.run_id) in ('queued', 'running');
    if v_step.id is null then
        return null;
    end if;
    select jsonb_build_object('id', r.id, 'mode', r.mode, 'status', r.status, 'webhook_url', r.webhook_url)
      into v_run from public.chain_runs r where r.id = v_step.run_id;
    return jsonb_build_object('action', 'check', 'step', jsonb_build_object(
            'id', v_step.id, 'step_key', v_step.step_key, 'step_kind', v_step.step_kind,
            'model_identifier', v_step.model_identifier, 'depends_on', v_step.depends_on, 'status', v_step.status,
            'params', v_step.params, 'input_files', v_step.input_files, 'provider', v_step.provider,
            'provider_job_id', v_step.provider_job_id, 'provider_metadata', v_step.provider_metadata,
            'attempt', v_step.attempt, 'seq', v_step.seq, 'started_at', v_step.started_at), 'run', v_run);
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
        return jsonb_build_object('run_status', 'running', 'next_step', jsonb_build_object(
                    'id', v_next.id, 'step_key', v_next.step_key, 'step_kind', v_next.step_kind,
                    'model_identifier', v_next.model_identifier, 'depends_on', v_next.depends_on, 'status', v_next.status,
                    'params', v_next.params, 'input_files', v_next.input_files, 'provider', v_next.provider,
                    'provider_job_id', v_next.provider_job_id, 'provider_metadata', v_next.provider_metadata,
                    'attempt', v_next.attempt, 'seq', v_next.seq, 'started_at', v_next.started_at),
                                  'next_claimed', v_claim);
    end if;
    -- No step depends on this one, and others are still unfinished.
    return jsonb_build_object('run_status', 'running', 'next_step', null, 'next_claimed', false);
end
$$;


-- bc_take_step was its only caller.
drop function babychain_private.bc_step_run_json(uuid);
