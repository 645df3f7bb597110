-- Fewer statements inside the hot transitions (bench/pg_cpu.py; bench/RESULTS.md "Postgres per run, second pass").
--
-- A statement inside a function costs its executor's set-up whatever it finds, and one that writes chain_steps or
-- chain_runs also prepares every CHECK constraint of the table again (8 and 10 of them: about 40 µs per statement
-- here). Same guards, same answers; per chain3 run three statements fewer:
--   * bc_complete_step of the last step asked twice for a dependent step that does not exist (the claim, then the
--     hand-over to a dependent with another unfinished producer) before counting the run's unfinished steps. Now the
--     count comes first: when every step has succeeded, no queued step can depend on this one.
--   * bc_take_step's claim of a run's first step updates the run row (queued -> running) and then read it again for
--     the executor: the update returns those fields itself; the read is left for a claim that changes no run field.
--   * The timers trigger updated a step's timer row and inserted one only when none was found: a step claimed after
--     waiting for its producer (steps 2 and 3 of a chain3 run) has none, so that update found nothing. It now asks
--     the old row first (a step had a timer exactly when it was running, or queued with a next check); a missing row
--     still falls through to the insert.

create or replace function babychain_private.bc_sync_step_timer() returns trigger
language plpgsql set search_path = '' as $$
begin
    if new.status = 'running' or (new.status = 'queued' and new.next_check_at is not null) then
        -- Only a step that had a timer before this update can have one to update; a step claimed or made due
        -- after waiting for its producer has none (one statement fewer in the trigger: no update that finds
        -- nothing). A missing row falls through to the insert either way.
        if tg_op = 'UPDATE' and (old.status = 'running' or (old.status = 'queued' and old.next_check_at is not null))
        then
            update babychain_private.chain_step_timers
               set status = new.status, next_check_at = new.next_check_at,
                   started_at = new.started_at, has_job = new.provider_job_id is not null
             where step_id = new.id;
            if found then
                return null;
            end if;
        end if;
        -- A step's transitions are serialised by its row lock, so nobody inserts its timer meanwhile; the conflict
        -- clause only covers a leftover row (a load that bypassed the triggers).
        insert into babychain_private.chain_step_timers as t
               (step_id, run_id, status, step_kind, next_check_at, started_at, has_job)
        values (new.id, new.run_id, new.status, new.step_kind, new.next_check_at, new.started_at,
                new.provider_job_id is not null)
        on conflict (step_id) do update
           set status = excluded.status, next_check_at = excluded.next_check_at,
               started_at = excluded.started_at, has_job = excluded.has_job;
    elsif tg_op = 'UPDATE' then
        delete from babychain_private.chain_step_timers where step_id = new.id;
    end if;
    return null;
end
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
       and exists (select from public.chain_runs r where r.id = s.run_id and r.status in ('queued', 'running'))
       and not exists (select from public.chain_steps d
                        where d.run_id = s.run_id and d.step_key = any (s.depends_on) and d.status <> 'succeeded')
    returning s.* into v_step;
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
       and (not v_claim or not exists (select from public.chain_steps d
                                        where d.run_id = n.run_id and d.step_key = any (n.depends_on)
                                          and d.status <> 'succeeded'))
    returning n.* into v_next;
    if v_next.id is null then
        -- The run ends when no step is left unfinished. Asked first: then no queued step depends on this one either
        -- (the last step's completion, the usual case here, makes no second search for a dependent).
        if not exists (select from public.chain_steps where run_id = v_step.run_id and status <> 'succeeded') then
            perform babychain_private.bc_finish_run(v_step.run_id, 'succeeded', null, null,
                                                    jsonb_build_object('final_step_key', v_step.step_key,
                                                                       'output_files', p->'output_files'));
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
