-- The one-machine create in one function, answering json (bench/RESULTS.md "The local queue and the create in
-- Postgres (branch pgqueue)").
--
-- bc_create_run_queued (20261201120000_create_run_queued.sql) called bc_create_run, which built the new run's json
-- text (bc_run_as_json), cast it to jsonb (parsing it all again) and wrapped it; then it took the first step's ids
-- out of that jsonb and called bc_queue_send, whose count-and-filter of what it inserted and whose wake-up are for
-- any batch of messages; and its jsonb answer was printed back to text for the client. Two nested calls of
-- functions with a SET clause (each its own set-up), a parse and a print of the run for nothing. Now:
--   * the run and its steps are inserted here, as bc_create_run inserts them (the AWS shape's create, unchanged;
--     tests/integration/test_local_queue.py checks that both store the same rows);
--   * the first step's id and seq come from the steps' insert (RETURNING), not from the run's JSON;
--   * the message is inserted and one waiter woken as bc_queue_send does for one due message (the queue's lock
--     taken shared after the insert, held to the commit: 20261201065000_queue_wake_one.sql);
--   * the answer is json: the run's json text as bc_run_as_json builds it (the one definition of the run
--     resource), not cast to jsonb and back. The client decodes json and jsonb alike.
-- A replay (same Idempotency-Key) sends nothing and answers the existing run, as before.

drop function public.bc_create_run_queued(jsonb);

-- {run: <bc_create_run's argument>, queue, message: <the step message's fields other than its ids>}
--   -> {run, created}, as bc_create_run answers (json).
create function public.bc_create_run_queued(p jsonb) returns json
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
                                   idempotency_key, request_hash, current_step_key, deadline_at,
                                   callback_event_id, callback_status, estimate)
    values (v_id, v_run->>'owner_id', v_run->>'chain_slug', v_run->>'chain_version', v_run->>'mode', v_run->'input',
            coalesce(nullif(v_run->'metadata', 'null'::jsonb), '{}'::jsonb), v_run->>'webhook_url',
            v_run->>'idempotency_key', v_run->>'request_hash', 'processing',
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

revoke execute on function public.bc_create_run_queued(jsonb) from public, anon, authenticated;
grant execute on function public.bc_create_run_queued(jsonb) to service_role;
