-- The step timers written by the claim and the completion themselves (bench/RESULTS.md "Postgres per transition,
-- third pass").
--
-- The timers trigger (20261201100000_step_timers.sql) ran for 7 of a chain3 run's step updates: for each, a plpgsql
-- call and a statement of its own (plan revalidation, executor set-up), about 60-90 µs. The two transitions that
-- make up nearly all of them, queued -> running (bc_take_step, and bc_complete_step's claim of the next step) and
-- running -> succeeded (bc_complete_step), now write the timer in the statement that changes the step, as a
-- data-modifying CTE, and the update trigger leaves those two transitions alone (its WHEN is false for them: no
-- call). No other function writes them (test_sql_hygiene.py pins that). Every other change of a copied column
-- (submission, defer, retry, fail, cancel, the sweeper, an update by hand) still goes through the trigger.
-- Everything else is 20261202034000_known_producers.sql unchanged: the same statements, guards and answers.
-- (Tried first: each transition as one statement, the run's update and the end of the run in CTEs as well; paired
-- with pg_cpu.py it cost more, +30% per completion: the executor set-up of every CTE's plan, needed or not.)

drop trigger chain_steps_timer_update on public.chain_steps;
create trigger chain_steps_timer_update after update on public.chain_steps
    for each row when ((old.status is distinct from new.status
                        or old.next_check_at is distinct from new.next_check_at
                        or old.started_at is distinct from new.started_at
                        or (old.provider_job_id is null) <> (new.provider_job_id is null))
                       -- written with the timer by bc_take_step / bc_complete_step in the same statement
                       and not (old.status = 'queued' and new.status = 'running')
                       and not (old.status = 'running' and new.status = 'succeeded'))
    execute function babychain_private.bc_sync_step_timer();

create or replace function public.bc_take_step(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_step public.chain_steps;
    v_run jsonb;
begin
    with taken as (
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
       and exists (select from public.chain_runs r where r.id = s.run_id and r.status in ('queued', 'running'))
       -- A first step has no producer: no read of the run's steps for it.
       and (cardinality(s.depends_on) = 0
            or not exists (select from public.chain_steps d
                            where d.run_id = s.run_id and d.step_key = any (s.depends_on)
                              and d.status <> 'succeeded'))
    returning s.*
    ), timer as (
        -- A step queued with a next check (a first step, a re-drive) has its timer: updated in place, found by its
        -- key (a scalar subquery, as a parameter would be).
        update babychain_private.chain_step_timers t
           set status = k.status, next_check_at = k.next_check_at, started_at = k.started_at,
               has_job = k.provider_job_id is not null
          from taken k where t.step_id = (select k.id from taken k)
        returning t.step_id
    ), new_timer as (
        -- One that waited for its producer has none. A plain insert (ON CONFLICT would make it a speculative
        -- insertion); the step's row lock keeps every other writer of its timer out.
        insert into babychain_private.chain_step_timers
               (step_id, run_id, status, step_kind, next_check_at, started_at, has_job)
        select k.id, k.run_id, k.status, k.step_kind, k.next_check_at, k.started_at, k.provider_job_id is not null
          from taken k where not exists (select from timer)
    )
    select * into v_step from taken;
    if v_step.id is not null then
        -- Skipped when nothing changes (the producer's completion already named this step): a row version saved.
        -- The run fields a step message needs besides the step come back from the same statement.
        update public.chain_runs r
           set status = 'running', current_step_key = v_step.step_key, updated_at = now()
         where r.id = v_step.run_id and r.status in ('queued', 'running')
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
       and exists (select from public.chain_runs r where r.id = s.run_id and r.status in ('queued', 'running'));
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
    with done as (
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
       and exists (select from public.chain_runs r where r.id = s.run_id and r.status = 'running')
    returning s.*
    ), timer as (
        delete from babychain_private.chain_step_timers t where t.step_id = (select d.id from done d)
    )
    select * into v_step from done;
    if v_step.id is null then
        return null;
    end if;

    -- The dependent step gets the outputs, and is claimed when asked and every producer of it is done: one update.
    with claimed as (
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
    returning n.*
    ), timer as (
        -- A step claimed after a hand-over (it was due) has a timer: updated in place.
        update babychain_private.chain_step_timers t
           set status = c.status, next_check_at = c.next_check_at, started_at = c.started_at,
               has_job = c.provider_job_id is not null
          from claimed c where t.step_id = (select c.id from claimed c where c.status = 'running')
        returning t.step_id
    ), new_timer as (
        -- One that waited for its producer (the usual case) has none. Not claimed: the trigger gives it its timer.
        insert into babychain_private.chain_step_timers
               (step_id, run_id, status, step_kind, next_check_at, started_at, has_job)
        select c.id, c.run_id, c.status, c.step_kind, c.next_check_at, c.started_at, c.provider_job_id is not null
          from claimed c where c.status = 'running' and not exists (select from timer)
    )
    select * into v_next from claimed;
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
             where id = v_step.run_id and status in ('queued', 'running');
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
