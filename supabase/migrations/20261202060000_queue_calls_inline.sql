-- The local queue's hot calls without nested function calls (bench/RESULTS.md "The local queue and the create in
-- Postgres (branch pgqueue)").
--
-- A call of a helper with a SET clause (every function here pins search_path) has its own set-up and a
-- configuration level pushed and popped, 30 to 50 µs here whatever it then does; a SQL function called from
-- plpgsql is not inlined either. Per message the hot path called three:
--   * bc_queue_receive called babychain_private.bc_queue_take once, or twice when it found nothing: one statement
--     of five parts (acknowledge, pick, bury the over-received, dead letters, receive), each with its executor
--     set-up even when it had nothing to do. Now the receive runs them itself: the acknowledgement only when there
--     is one, the pick-and-receive (one statement, run from one place in a loop whose second pass is the look under
--     the queue's lock of 20261202032000_lean_queue_calls.sql), and the redrive only when a picked message was
--     received max_receives times already;
--   * a receive that got a message called bc_queue_unregister, which deletes the consumer's waiter row, even when
--     it had none (a busy consumer, the usual case at concurrency): the delete is now inline, and the keeper's
--     hand-over (rare: a keeper that takes a message) still calls bc_queue_cover;
--   * bc_queue_send called bc_queue_wake for every due message: its marking-and-notifying statement is now inline.
-- bc_queue_take, bc_queue_wake and bc_queue_unregister stay for the rarer calls (change of visibility, leave).
-- What each call does and answers is unchanged; tests/integration/test_local_queue.py covers it.

create or replace function public.bc_queue_receive(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_queue text := p->>'queue';
    v_receiver integer := (p->>'receiver')::int;
    v_waits boolean := p ? 'idle_wait_seconds' and v_receiver is not null;
    v_max_messages integer := coalesce((p->>'max_messages')::int, 1);
    v_max_receives integer := (p->>'max_receives')::int;
    v_visibility interval := make_interval(secs => (p->>'visibility_timeout_seconds')::float8);
    v_dead bigint[];
    v_locked boolean := false;
    v_messages jsonb;
    v_now timestamptz;
    v_next timestamptz;
    v_keeper boolean;
begin
    -- At-least-once either way: a receive or an acknowledgement lost in a crash of the server means the message is
    -- delivered again (20261202030000_queue_acks_without_flush.sql).
    perform set_config('synchronous_commit', 'off', true);
    -- The previous message's acknowledgement, when there is one (an empty part of one big statement still cost its
    -- executor set-up).
    if p ? 'ack' then
        delete from public.bc_queue_messages
         where id = (p->'ack'->>'id')::bigint and queue = v_queue and receipt = (p->'ack'->>'receipt')::uuid;
    end if;
    loop
        v_now := clock_timestamp();
        -- Pick and receive (v_now a parameter, not clock_timestamp() in the query, so the due index serves the
        -- comparison). A picked message already received max_receives times is not received but buried below.
        with due as (
            select id, receive_count
              from public.bc_queue_messages
             where queue = v_queue and visible_at <= v_now
             order by visible_at, id
             limit v_max_messages
               for update skip locked
        ), received as (
            update public.bc_queue_messages m
               set visible_at = now() + v_visibility,
                   receive_count = m.receive_count + 1,
                   first_received_at = coalesce(m.first_received_at, now()),
                   receipt = gen_random_uuid(),
                   receiver = v_receiver
              from due
             where m.id = due.id and due.receive_count < v_max_receives
            returning m.id, m.body, m.receive_count, m.receipt, m.sent_at, m.first_received_at
        )
        select coalesce((select jsonb_agg(to_jsonb(r) order by r.id) from received r), '[]'::jsonb),
               (select array_agg(due.id) from due where due.receive_count >= v_max_receives)
          into v_messages, v_dead;
        if v_dead is not null then
            -- Redrive (rare): the rows are locked by this transaction since the pick.
            with dead as (
                delete from public.bc_queue_messages m
                 where m.id = any (v_dead)
                returning m.id, m.queue, m.body, m.sent_at, m.receive_count
            )
            insert into public.bc_queue_dead_letters (id, queue, body, sent_at, receive_count)
            select id, queue, body, sent_at, receive_count from dead;
        end if;
        exit when jsonb_array_length(v_messages) > 0 or not v_waits or v_locked;
        -- Nothing due: register, under the queue's lock, after one more look (20261201065000_queue_wake_one.sql).
        -- The look is an index probe; only when it sees a due message (one sent meanwhile, or one another receive
        -- is taking) does the receive take again.
        perform pg_advisory_xact_lock(7273, hashtext(v_queue));
        v_locked := true;
        exit when not exists (
            select from public.bc_queue_messages m where m.queue = v_queue and m.visible_at <= clock_timestamp()
        );
    end loop;

    if not v_waits then
        if jsonb_array_length(v_messages) > 0 then
            return jsonb_build_object('messages', v_messages, 'next_visible_in_seconds', null);
        end if;
        select m.visible_at into v_next
          from public.bc_queue_messages m
         where m.queue = v_queue
         order by m.visible_at
         limit 1;
        return jsonb_build_object('messages', v_messages,
                                  'next_visible_in_seconds', extract(epoch from v_next - clock_timestamp()));
    end if;

    if jsonb_array_length(v_messages) > 0 then
        -- No longer a waiter (bc_queue_unregister inline): a keeper hands its role on.
        delete from public.bc_queue_waiters w
         where w.queue = v_queue and w.receiver = v_receiver
        returning w.wake_at is not null into v_keeper;
        if v_keeper then
            perform pg_advisory_xact_lock(7273, hashtext(v_queue));
            perform babychain_private.bc_queue_cover(v_queue, (
                select min(m.visible_at)
                  from public.bc_queue_messages m
                 where m.queue = v_queue and m.visible_at > clock_timestamp() and m.receiver is null
            ));
        end if;
        return jsonb_build_object('messages', v_messages, 'next_visible_in_seconds', null);
    end if;

    -- Due rows still in the queue are locked by receives under way: they are taken. The keeper covers the future:
    -- delayed messages and retries (20261201065000_queue_wake_one.sql).
    select m.visible_at into v_next
      from public.bc_queue_messages m
     where m.queue = v_queue and m.visible_at > v_now and m.receiver is null
     order by m.visible_at
     limit 1;
    v_keeper := v_next is not null and not exists (
        select from public.bc_queue_waiters w
         where w.queue = v_queue and w.receiver <> v_receiver and w.wake_at <= v_next
    );
    insert into public.bc_queue_waiters as w (queue, receiver, since, wake_at, notified)
    values (v_queue, v_receiver, v_now,
            case when v_keeper
                 then least(v_next, v_now + make_interval(secs => (p->>'idle_wait_seconds')::float8)) end,
            false)
    on conflict (queue, receiver) do update
       set since = excluded.since, wake_at = excluded.wake_at, notified = false;
    return jsonb_build_object(
        'messages', v_messages,
        'next_visible_in_seconds', case when v_keeper then extract(epoch from v_next - clock_timestamp()) end
    );
end
$$;

create or replace function public.bc_queue_send(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_queue text := p->>'queue';
    v_count integer;
    v_due integer;
    v_first_delayed timestamptz;
    v_woken integer;
begin
    with sent as (
        insert into public.bc_queue_messages (queue, body, visible_at)
        select v_queue, m->'body',
               -- SQS's delay bounds: 0 to 15 minutes.
               now() + make_interval(secs => least(greatest(coalesce((m->>'delay_seconds')::float8, 0), 0), 900))
          from jsonb_array_elements(p->'messages') as m
        returning visible_at
    )
    select count(*), count(*) filter (where visible_at <= now()), min(visible_at) filter (where visible_at > now())
      into v_count, v_due, v_first_delayed
      from sent;
    -- Held until commit: a consumer registering now waits for this send and then sees its messages.
    perform pg_advisory_xact_lock_shared(7273, hashtext(v_queue));
    if v_due > 0 then
        -- bc_queue_wake inline: one waiter per due message, those that wait to be notified first (a keeper stays
        -- asleep for its due time), the most recently idle first.
        with picked as (
            select w.receiver
              from public.bc_queue_waiters w
             where w.queue = v_queue and not w.notified
             order by w.wake_at is not null, w.since desc
             limit v_due
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
    if v_first_delayed is not null then
        perform babychain_private.bc_queue_cover(v_queue, v_first_delayed);
    end if;
    return to_jsonb(v_count);
end
$$;
