-- A claim and a completion in one SQL statement each, their step timers written by that statement
-- (bench/RESULTS.md "Postgres per transition, third pass").
--
-- Each statement a plpgsql function runs costs its executor set-up and the revalidation of its cached plan, whatever
-- it finds; each row the timers trigger (20261201100000_step_timers.sql) sees costs a plpgsql call and a statement of
-- its own. A chain3 run made 12 statements in bc_take_step and bc_complete_step and 7 trigger calls. Now:
--   * bc_take_step: the step's claim, its timer and the run's update are one statement (data-modifying CTEs); the
--     run's fields come back from it, or from the same statement's read when the run row needed no change;
--   * bc_complete_step: the step's success, the removal of its timer, the dependent step's hand-over or claim, the
--     claimed step's timer, and the run's update (the next step named, or the run succeeded when no other step is
--     unfinished) are one statement.
-- The transitions these two write themselves, queued -> running and running -> succeeded, are written nowhere
-- else (test_sql_hygiene.py pins that), and the update trigger leaves them alone (its WHEN is false for them: no
-- call at all). Every other change of a copied column (submission, defer, retry, fail, cancel, the sweeper, an
-- update by hand) still goes through the trigger, which stays as it was.
--
-- Same guards and answers as 20261202034000_known_producers.sql. One statement sees one snapshot, so the
-- questions the old versions asked after their first update ("has every producer of the dependent succeeded?",
-- "is any step of the run unfinished?") leave out the step that this statement completes. The lock order stays
-- steps first, then the run: a CTE runs when the final SELECT (or another CTE) first reads it, in that order. Each
-- row is found by its key as a scalar subquery (`id = (select ... from done)`), as the old statements found it by a
-- parameter: joined to a CTE instead, the planner took a scan of every active run (the partial index on their
-- deadline, dead entries included) while the tables were young, and plpgsql kept that plan.

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
    v_res record;
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
           -- The run's status by its primary key (a scalar subquery: an EXISTS here may be planned as a scan of
           -- every active run, while the tables are small or their statistics young, and plpgsql keeps that plan).
           and (select r.status from public.chain_runs r where r.id = s.run_id) in ('queued', 'running')
           -- A first step has no producer: no read of the run's steps for it.
           and (cardinality(s.depends_on) = 0
                or not exists (select from public.chain_steps d
                                where d.run_id = s.run_id and d.step_key = any (s.depends_on)
                                  and d.status <> 'succeeded'))
        returning s as step_row, s.id, s.run_id, s.step_key, s.status, s.step_kind, s.next_check_at, s.started_at,
                  s.provider_job_id
    ), timer as (
        -- A step queued with a next check (a first step, a re-drive) has its timer already: updated in place.
        update babychain_private.chain_step_timers t
           set status = k.status, next_check_at = k.next_check_at, started_at = k.started_at,
               has_job = k.provider_job_id is not null
          from taken k where t.step_id = (select k.id from taken k)
        returning t.step_id
    ), new_timer as (
        -- One that waited for its producer has none. A plain insert (no ON CONFLICT: that would be a speculative
        -- insertion, an extra WAL record): the step's row lock keeps any other writer of its timer out.
        insert into babychain_private.chain_step_timers
               (step_id, run_id, status, step_kind, next_check_at, started_at, has_job)
        select k.id, k.run_id, k.status, k.step_kind, k.next_check_at, k.started_at, k.provider_job_id is not null
          from taken k where not exists (select from timer)
        returning step_id
    ), run as (
        -- Skipped when nothing changes (the producer's completion already named this step): a row version saved.
        update public.chain_runs r
           set status = 'running', current_step_key = k.step_key, updated_at = now()
          from taken k
         where r.id = (select k.run_id from taken k) and r.status in ('queued', 'running')
           and (r.status <> 'running' or r.current_step_key is distinct from k.step_key)
        returning jsonb_build_object('id', r.id, 'mode', r.mode, 'status', r.status, 'webhook_url', r.webhook_url)
                  as run_json
    )
    select (select k.step_row from taken k) as step,
           -- The run row left as it was is read as this statement sees it (only when the update changed nothing).
           coalesce((select run_json from run),
                    (select jsonb_build_object('id', r.id, 'mode', r.mode, 'status', r.status,
                                               'webhook_url', r.webhook_url)
                       from public.chain_runs r where r.id = (select k.run_id from taken k))) as run
      into v_res;
    v_step := v_res.step;
    if v_step.id is not null then
        return jsonb_build_object('action', 'claimed', 'step', to_jsonb(v_step), 'run', v_res.run);
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
    v_claim boolean := p->'claim_next' is not null and p->'claim_next' <> 'null'::jsonb;
    v_step public.chain_steps;
    v_next public.chain_steps;
    v_res record;
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
           and (select r.status from public.chain_runs r where r.id = s.run_id) = 'running'  -- by primary key
        returning s as step_row, s.id, s.run_id, s.step_key
    ), done_timer as (
        delete from babychain_private.chain_step_timers t where t.step_id = (select d.id from done d)
        returning t.step_id
    ), next as (
        -- The dependent step gets the outputs, and is claimed when asked and every producer of it is done (this one
        -- included: it has just succeeded).
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
          from done d
         where n.run_id = (select d.run_id from done d) and n.status = 'queued' and d.step_key = any (n.depends_on)
           and (not v_claim
                -- This step is its only producer: nothing else to wait for, nothing to read.
                or n.depends_on = array[d.step_key]
                or not exists (select from public.chain_steps o
                                where o.run_id = n.run_id and o.step_key = any (n.depends_on)
                                  and o.id <> d.id and o.status <> 'succeeded'))
        returning n as step_row, n.id, n.run_id, n.step_key, n.status, n.step_kind, n.next_check_at, n.started_at,
                  n.provider_job_id
    ), next_timer as (
        -- A claimed step that was due (its other producer handed it over first) has a timer: updated in place.
        update babychain_private.chain_step_timers t
           set status = n.status, next_check_at = n.next_check_at, started_at = n.started_at,
               has_job = n.provider_job_id is not null
          from next n where t.step_id = (select n.id from next n where n.status = 'running')
        returning t.step_id
    ), next_new_timer as (
        -- One that waited with no next check (the usual case) has none. (A hand-over's step gets its timer from
        -- the trigger.)
        insert into babychain_private.chain_step_timers
               (step_id, run_id, status, step_kind, next_check_at, started_at, has_job)
        select n.id, n.run_id, n.status, n.step_kind, n.next_check_at, n.started_at, n.provider_job_id is not null
          from next n where n.status = 'running' and not exists (select from next_timer)
        returning step_id
    ), run_next as (
        update public.chain_runs r set current_step_key = n.step_key, updated_at = now()
          from next n where r.id = (select n.run_id from next n)
        returning r.id
    ), run_end as (
        -- The run succeeds when no other step is unfinished (then no step waits for this one either).
        update public.chain_runs r
           set status = 'succeeded',
               error_code = null,
               error_message = null,
               output = jsonb_build_object('final_step_key', d.step_key, 'output_files', p->'output_files'),
               current_step_key = 'completed',
               completed_at = now(),
               updated_at = now(),
               callback_status = case when r.webhook_url is null then null else 'pending' end,
               callback_next_at = case when r.webhook_url is null then null else now() end
          from done d
         where r.id = (select d.run_id from done d) and r.status in ('queued', 'running')
           and not exists (select from public.chain_steps o
                            where o.run_id = d.run_id and o.id <> d.id and o.status <> 'succeeded')
        returning r.id
    )
    -- Read in lock order: the step, the dependent step, then the run (run_next reads the dependent step's row; the
    -- CTEs nothing reads run after this select, as every data-modifying CTE runs to its end).
    select (select d.step_row from done d) as step,
           (select n.step_row from next n) as next,
           exists (select from run_end) as ended
      into v_res;
    v_step := v_res.step;
    if v_step.id is null then
        return null;
    end if;
    if v_res.ended then
        return jsonb_build_object('run_status', 'succeeded', 'next_step', null, 'next_claimed', false);
    end if;
    v_next := v_res.next;
    if v_next.id is null and v_claim then
        -- Another producer of the dependent step is still unfinished: hand over the outputs only (the step is due
        -- now; the trigger gives it its timer); that producer's completion claims it.
        update public.chain_steps n
           set input_files = p->'output_files', next_check_at = now(), updated_at = now()
         where n.run_id = v_step.run_id and n.status = 'queued' and v_step.step_key = any (n.depends_on)
        returning n.* into v_next;
        if v_next.id is not null then
            update public.chain_runs set current_step_key = v_next.step_key, updated_at = now()
             where id = v_step.run_id;
        end if;
    end if;
    if v_next.id is not null then
        return jsonb_build_object('run_status', 'running', 'next_step', to_jsonb(v_next),
                                  'next_claimed', v_next.status = 'running');
    end if;
    -- No step depends on this one, and others are still unfinished.
    return jsonb_build_object('run_status', 'running', 'next_step', null, 'next_claimed', false);
end
$$;
