-- Fewer nested calls in the hot path (bench/RESULTS.md "Postgres per run, second pass").
--
-- A call of a helper function with a SET clause (every function here pins search_path) is a call of its own: the
-- function's set-up, a configuration level pushed and popped; 30 to 50 µs here whatever it then does.
--   * bc_complete_step ends a run that succeeds with bc_finish_run's update written out (a run that succeeds has no
--     active step left, so that is all bc_finish_run did for it; the guard on the run's status is the same).
--   * bc_create_run reads the new run's JSON through bc_run_as_json and one cast, not through bc_run_json (a wrapper
--     that does that cast).
--   * bc_queue_wake (once per send) marks and notifies its waiters in one statement, not a loop that ran one more
--     statement per notification.

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
            return jsonb_build_object('run', babychain_private.bc_run_as_json(v_existing)::jsonb, 'created', false);
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
        return jsonb_build_object('run', babychain_private.bc_run_as_json(v_existing)::jsonb, 'created', false);
    end if;
    insert into public.chain_steps (run_id, step_index, step_key, step_kind, model_identifier, depends_on, params,
                                    next_check_at)
    select v_id, (s->>'step_index')::int, s->>'step_key', s->>'step_kind', s->>'model_identifier',
           coalesce((select array_agg(d) from jsonb_array_elements_text(s->'depends_on') d), '{}'),
           coalesce(s->'params', '{}'::jsonb),
           -- The first step is due now; later steps become due when their producer succeeds.
           case when (s->>'step_index')::int = 0 then now() else null end
      from jsonb_array_elements(p->'steps') s;
    return jsonb_build_object('run', babychain_private.bc_run_as_json(v_id)::jsonb, 'created', true);
end
$$;

create or replace function babychain_private.bc_queue_wake(p_queue text, p_count integer) returns integer
language plpgsql set search_path = '' as $$
declare
    v_woken integer;
begin
    if p_count <= 0 then
        return 0;
    end if;
    -- One statement (not a loop over the update's rows with a statement per notification).
    with picked as (
        select w.receiver
          from public.bc_queue_waiters w
         where w.queue = p_queue and not w.notified
         order by w.wake_at is not null, w.since desc
         limit p_count
           for update skip locked
    ), woken as (
        update public.bc_queue_waiters w
           set notified = true
          from picked
         where w.queue = p_queue and w.receiver = picked.receiver
        returning w.receiver
    )
    select count(pg_notify('bc_queue_r' || woken.receiver, ''))::integer into v_woken from woken;
    return v_woken;
end
$$;
