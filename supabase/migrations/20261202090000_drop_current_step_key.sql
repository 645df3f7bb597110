-- chain_runs.current_step_key dropped: nothing has read or maintained it since 20261202070000_current_step_on_read.sql
-- (the API's current_step_key is derived where a run is read: babychain_private.bc_run_as_json, bc_runs_as_json), and
-- a column that says 'processing' for every run, ended or not, misleads whoever reads the table itself.
--
-- The two creates were its last writers; they are redefined first without it, otherwise as in
-- 20261202033000_fewer_calls.sql (bc_create_run) and 20261202062000_create_run_queued_lean.sql (bc_create_run_queued).
-- `create or replace` keeps their grants.

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
                                   idempotency_key, request_hash, deadline_at,
                                   callback_event_id, callback_status, estimate)
    values (v_id, p->>'owner_id', p->>'chain_slug', p->>'chain_version', p->>'mode', p->'input',
            coalesce(nullif(p->'metadata', 'null'::jsonb), '{}'::jsonb), p->>'webhook_url',
            p->>'idempotency_key', p->>'request_hash',
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

create or replace function public.bc_create_run_queued(p jsonb) returns json
language plpgsql security definer set search_path = '' as $$
declare
    v_run jsonb := p->'run';
    v_id uuid := (p->'run'->>'id')::uuid;
    v_queue text := p->>'queue';
    v_existing uuid;
    v_first_id uuid;
    v_first_seq integer;
    v_woken integer;
begin
    if v_run->>'idempotency_key' is not null then
        select id into v_existing from public.chain_runs
         where owner_id = v_run->>'owner_id' and idempotency_key = v_run->>'idempotency_key';
        if v_existing is not null then
            return json_build_object('run', babychain_private.bc_run_as_json(v_existing), 'created', false);
        end if;
    end if;
    insert into public.chain_runs (id, owner_id, chain_slug, chain_version, mode, input, metadata, webhook_url,
                                   idempotency_key, request_hash, deadline_at,
                                   callback_event_id, callback_status, estimate)
    values (v_id, v_run->>'owner_id', v_run->>'chain_slug', v_run->>'chain_version', v_run->>'mode', v_run->'input',
            coalesce(nullif(v_run->'metadata', 'null'::jsonb), '{}'::jsonb), v_run->>'webhook_url',
            v_run->>'idempotency_key', v_run->>'request_hash',
            now() + make_interval(secs => (v_run->>'run_timeout_seconds')::double precision),
            v_run->>'callback_event_id', case when v_run->>'webhook_url' is null then null else 'waiting' end,
            nullif(v_run->'estimate', 'null'::jsonb))
    on conflict (owner_id, idempotency_key) where idempotency_key is not null do nothing;
    if not found then
        -- A concurrent request with the same key won the race: hand back its run.
        select id into v_existing from public.chain_runs
         where owner_id = v_run->>'owner_id' and idempotency_key = v_run->>'idempotency_key';
        return json_build_object('run', babychain_private.bc_run_as_json(v_existing), 'created', false);
    end if;
    with inserted as (
        insert into public.chain_steps (run_id, step_index, step_key, step_kind, model_identifier, depends_on,
                                        params, next_check_at)
        select v_id, (s->>'step_index')::int, s->>'step_key', s->>'step_kind', s->>'model_identifier',
               coalesce((select array_agg(d) from jsonb_array_elements_text(s->'depends_on') d), '{}'),
               coalesce(s->'params', '{}'::jsonb),
               -- The first step is due now; later steps become due when their producer succeeds.
               case when (s->>'step_index')::int = 0 then now() else null end
          from jsonb_array_elements(v_run->'steps') s
        returning id, seq, step_index
    )
    select i.id, i.seq into v_first_id, v_first_seq from inserted i where i.step_index = 0;
    if v_queue is not null then
        insert into public.bc_queue_messages (queue, body)
        values (v_queue, coalesce(p->'message', '{}'::jsonb)
                         || jsonb_build_object('run_id', v_id, 'step_id', v_first_id, 'seq', v_first_seq));
        -- Held until commit: a consumer registering now waits for this send and then sees its message.
        perform pg_advisory_xact_lock_shared(7273, hashtext(v_queue));
        with picked as (
            select w.receiver
              from public.bc_queue_waiters w
             where w.queue = v_queue and not w.notified
             order by w.busy, w.wake_at is not null, case when w.busy then w.since end, w.since desc
             limit 1
               for update skip locked
        ), woken as (
            update public.bc_queue_waiters w
               set notified = true
              from picked
             where w.queue = v_queue and w.receiver = picked.receiver
            returning w.receiver
        )
        select count(pg_notify('bc_queue_r' || woken.receiver, ''))::integer into v_woken from woken;
    end if;
    return json_build_object('run', babychain_private.bc_run_as_json(v_id), 'created', true);
end
$$;

alter table public.chain_runs drop column current_step_key;
