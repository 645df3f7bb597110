-- Less Postgres work per step transition (bench/pg_cpu.py profiles it: perf of the backend, CPU per statement).
--
-- The step timers (20261201100000_step_timers.sql) cost about a tenth of the backend's CPU and a third of the WAL
-- records of a run: three timer rows per run at create, an upsert (speculative insertion) per transition, and
-- none of their updates HOT. Now:
--   * a timer row exists only for a step some sweeper rule can pick: running, or queued with a next check. A step
--     waiting for its producer (queued, no next check: steps 2 and 3 of a new run) has none, and its insert does
--     not even call the trigger function (a WHEN clause); it gets its row when it is claimed or becomes due;
--   * the trigger updates an existing row in place and inserts only when there is none (no upsert).
-- (Dropping chain_step_timers_lost and filtering the due index instead saved an index entry per claim, but with
-- many polls overdue the lost-claim rule then read every due timer: at 1M runs with every step due, a sequential
-- scan of the timers. It stays.)
-- bc_complete_step looks for the dependent step before counting the run's unfinished steps (a step with a
-- dependent never ends the run, so the count is needed only when none is found), and a run that succeeds skips
-- bc_finish_run's sweep of its active steps (every step has succeeded). bc_create_run finds a concurrent duplicate
-- with ON CONFLICT instead of a subtransaction. The one-line helpers (bc_seconds, bc_merge_metadata,
-- bc_step_run_json, bc_text_array) are written out in these hot functions: each call of a SQL function with a SET
-- clause is a separate function call with its own set-up, once per transaction.

create or replace function babychain_private.bc_sync_step_timer() returns trigger
language plpgsql set search_path = '' as $$
begin
    if new.status = 'running' or (new.status = 'queued' and new.next_check_at is not null) then
        if tg_op = 'UPDATE' then
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
revoke execute on function babychain_private.bc_sync_step_timer() from public, anon, authenticated, service_role;

drop trigger chain_steps_timer_insert on public.chain_steps;
create trigger chain_steps_timer_insert after insert on public.chain_steps
    for each row when (new.status = 'running' or (new.status = 'queued' and new.next_check_at is not null))
    execute function babychain_private.bc_sync_step_timer();

-- Waiting steps lose their rows (the trigger's lock on chain_steps, taken above, holds until this commits).
delete from babychain_private.chain_step_timers where status = 'queued' and next_check_at is null;

-- A run succeeds only once every step has (bc_complete_step counts them first): no active step is left to end.
create or replace function babychain_private.bc_finish_run(p_run_id uuid, p_status text, p_code text, p_message text,
                                                           p_output jsonb)
returns boolean
language plpgsql set search_path = '' as $$
declare
    v_found boolean;
begin
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
     where id = p_run_id and status in ('queued', 'running')
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
revoke execute on function babychain_private.bc_finish_run(uuid, text, text, text, jsonb)
    from public, anon, authenticated, service_role;

create or replace function public.bc_create_run(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_id uuid := (p->>'id')::uuid;
    v_existing uuid;
begin
    if p->>'idempotency_key' is not null then
        select id into v_existing from public.chain_runs
         where owner_id = p->>'owner_id' and idempotency_key = p->>'idempotency_key';
        if v_existing is not null then
            return jsonb_build_object('run', babychain_private.bc_run_json(v_existing), 'created', false);
        end if;
    end if;
    insert into public.chain_runs (id, owner_id, chain_slug, chain_version, mode, input, metadata, webhook_url,
                                   idempotency_key, request_hash, current_step_key, deadline_at,
                                   callback_event_id, callback_status, estimate)
    values (v_id, p->>'owner_id', p->>'chain_slug', p->>'chain_version', p->>'mode', p->'input',
            coalesce(nullif(p->'metadata', 'null'::jsonb), '{}'::jsonb), p->>'webhook_url',
            p->>'idempotency_key', p->>'request_hash', 'processing',
            now() + make_interval(secs => (p->>'run_timeout_seconds')::double precision),
            p->>'callback_event_id', case when p->>'webhook_url' is null then null else 'waiting' end,
            nullif(p->'estimate', 'null'::jsonb))
    on conflict (owner_id, idempotency_key) where idempotency_key is not null do nothing;
    if not found then
        -- A concurrent request with the same key won the race: hand back its run.
        select id into v_existing from public.chain_runs
         where owner_id = p->>'owner_id' and idempotency_key = p->>'idempotency_key';
        return jsonb_build_object('run', babychain_private.bc_run_json(v_existing), 'created', false);
    end if;
    insert into public.chain_steps (run_id, step_index, step_key, step_kind, model_identifier, depends_on, params,
                                    next_check_at)
    select v_id, (s->>'step_index')::int, s->>'step_key', s->>'step_kind', s->>'model_identifier',
           coalesce((select array_agg(d) from jsonb_array_elements_text(s->'depends_on') d), '{}'),
           coalesce(s->'params', '{}'::jsonb),
           -- The first step is due now; later steps become due when their producer succeeds.
           case when (s->>'step_index')::int = 0 then now() else null end
      from jsonb_array_elements(p->'steps') s;
    return jsonb_build_object('run', babychain_private.bc_run_json(v_id), 'created', true);
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
        update public.chain_runs
           set status = 'running', current_step_key = v_step.step_key, updated_at = now()
         where id = v_step.run_id and status in ('queued', 'running')
           and (status <> 'running' or current_step_key is distinct from v_step.step_key);
        select jsonb_build_object('id', r.id, 'mode', r.mode, 'status', r.status, 'webhook_url', r.webhook_url)
          into v_run from public.chain_runs r where r.id = v_step.run_id;
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
    if v_next.id is null and v_claim then
        -- Another producer of it is still running: hand over the outputs only; its completion claims it.
        update public.chain_steps n
           set input_files = p->'output_files', next_check_at = now(), updated_at = now()
         where n.run_id = v_step.run_id and n.status = 'queued' and v_step.step_key = any (n.depends_on)
        returning n.* into v_next;
        v_claim := false;
    end if;
    if v_next.id is not null then
        update public.chain_runs set current_step_key = v_next.step_key, updated_at = now()
         where id = v_step.run_id;
        return jsonb_build_object('run_status', 'running', 'next_step', to_jsonb(v_next),
                                  'next_claimed', v_claim);
    end if;

    -- No step depends on this one: the run ends when no other step is left unfinished.
    if not exists (select from public.chain_steps where run_id = v_step.run_id and status <> 'succeeded') then
        perform babychain_private.bc_finish_run(v_step.run_id, 'succeeded', null, null,
                                                jsonb_build_object('final_step_key', v_step.step_key,
                                                                   'output_files', p->'output_files'));
        return jsonb_build_object('run_status', 'succeeded', 'next_step', null, 'next_claimed', false);
    end if;
    return jsonb_build_object('run_status', 'running', 'next_step', null, 'next_claimed', false);
end
$$;
