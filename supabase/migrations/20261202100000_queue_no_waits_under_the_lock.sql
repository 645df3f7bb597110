-- No deadlock between receives under the queue's lock. Found by test_local_queue.py's
-- test_concurrent_sends_each_wake_a_consumer_and_none_is_missed, which failed in CI: two senders and a consumer had
-- been killed by "deadlock detected", so their messages were never sent or handled.
--
-- The cycle, from the server's log: a receive registering held the queue's lock (7273, exclusively) and, taking again
-- after its second look found a due row, waited for another receive's transaction "while locking updated version of
-- tuple"; that other receive had acknowledged (deleted) the newer version of the same message and was waiting for the
-- queue's lock to register. `for update skip locked` skips a row whose lock it cannot take, but when the row's taker
-- commits between the scan and the lock, PostgreSQL goes on to lock the row's newer versions and waits for whoever
-- holds those, SKIP LOCKED or not. Every send then queued behind the lock, and the deadlock detector killed sends and
-- receives alike (40P01): in the one-machine server, a lost next step or an API create answered 503.
--
-- The rule now: a transaction that holds the queue's lock never waits for a row that a transaction waiting for that
-- lock may hold.
--   * Waiter rows: every receive changes its waiter row under the queue's lock. A receive with more messages due
--     (no longer a waiter) used to delete its row first and take the lock after, to hand a keeper's role on; it now
--     takes the lock (shared, as a send does for the same hand-over) before it touches its row. Sends, wake-ups,
--     covers and leaves already changed waiter rows only under the lock; bc_queue_release_orphans deletes the rows of
--     consumers that are gone and waits for no lock after that.
--   * Message rows: a receive takes them, and acknowledges, before it takes the lock. Under the lock it only looks,
--     except for the second take of a receive whose second look saw a due row (a send committed between its first
--     take and the lock, or the old version of a message another receive is taking): that take is the wait found
--     above, and runs with lock_timeout 1 ms. Instead of waiting it fails with lock_not_available (55P03), the whole
--     receive rolls back (its acknowledgement too) and the consumer receives again (PostgresQueue._receive). It
--     needs a commit to land inside one statement, so it is rare: the test above failed about once in a hundred runs
--     of 240 messages with both cores busy.
-- Nothing else changes: what a receive answers, and when it registers.

create or replace function public.bc_queue_receive(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_queue text := p->>'queue';
    v_receiver integer := (p->>'receiver')::int;
    v_waits boolean := p ? 'idle_wait_seconds' and v_receiver is not null;
    v_idle_after boolean := coalesce((p->>'idle_after')::boolean, false);
    v_max_messages integer := coalesce((p->>'max_messages')::int, 1);
    v_max_receives integer := (p->>'max_receives')::int;
    v_visibility interval := make_interval(secs => (p->>'visibility_timeout_seconds')::float8);
    v_dead bigint[];
    v_locked boolean := false;
    v_register boolean := false;
    v_messages jsonb;
    v_now timestamptz;
    v_next timestamptz;
    v_keeper boolean;
    v_lock_timeout text;
begin
    -- At-least-once either way: a receive or an acknowledgement lost in a crash of the server means the message is
    -- delivered again (20261202030000_queue_acks_without_flush.sql).
    perform set_config('synchronous_commit', 'off', true);
    if p ? 'ack' then
        delete from public.bc_queue_messages
         where id = (p->'ack'->>'id')::bigint and queue = v_queue and receipt = (p->'ack'->>'receipt')::uuid;
    end if;
    loop
        v_now := clock_timestamp();
        -- Pick and receive (20261202060000_queue_calls_inline.sql).
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
        -- Nothing due: register, under the queue's lock, after one more look (an index probe; only when it sees a
        -- due message does the receive take again).
        perform pg_advisory_xact_lock(7273, hashtext(v_queue));
        -- A take under the lock gives up rather than waits for a row (see the top of this file).
        v_lock_timeout := current_setting('lock_timeout');
        perform set_config('lock_timeout', '1ms', true);
        v_locked := true;
        exit when not exists (
            select from public.bc_queue_messages m where m.queue = v_queue and m.visible_at <= clock_timestamp()
        );
    end loop;
    if v_lock_timeout is not null then
        perform set_config('lock_timeout', v_lock_timeout, true);
    end if;

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
        -- The messages just taken are invisible now: any due row is another message (or one another receive is
        -- taking right now; then the consumer's next receive may find nothing, as an idle one's may).
        if v_idle_after and not exists (
            select from public.bc_queue_messages m where m.queue = v_queue and m.visible_at <= clock_timestamp()
        ) then
            perform pg_advisory_xact_lock(7273, hashtext(v_queue));
            v_locked := true;
            v_now := clock_timestamp();
            if not exists (
                select from public.bc_queue_messages m where m.queue = v_queue and m.visible_at <= v_now
            ) then
                -- Nothing more: the consumer waits after this message, registered now (busy until it receives).
                v_register := true;
            end if;
        end if;
        if not v_register then
            -- More is due (or the consumer does not wait): no longer a waiter; a keeper hands its role on. Its row is
            -- changed under the queue's lock, taken before the row is touched (see the top of this file).
            if not v_locked then
                perform pg_advisory_xact_lock_shared(7273, hashtext(v_queue));
            end if;
            delete from public.bc_queue_waiters w
             where w.queue = v_queue and w.receiver = v_receiver
            returning w.wake_at is not null into v_keeper;
            if v_keeper then
                perform babychain_private.bc_queue_cover(v_queue, (
                    select min(m.visible_at)
                      from public.bc_queue_messages m
                     where m.queue = v_queue and m.visible_at > clock_timestamp() and m.receiver is null
                ));
            end if;
            return jsonb_build_object('messages', v_messages, 'next_visible_in_seconds', null, 'more', true);
        end if;
    end if;

    -- Registered as a waiter (idle: nothing was taken; busy: the last due message was). Due rows still in the queue
    -- are locked by receives under way: they are taken. The keeper covers the future: delayed messages and retries
    -- (20261201065000_queue_wake_one.sql).
    select m.visible_at into v_next
      from public.bc_queue_messages m
     where m.queue = v_queue and m.visible_at > v_now and m.receiver is null
     order by m.visible_at
     limit 1;
    v_keeper := v_next is not null and not exists (
        select from public.bc_queue_waiters w
         where w.queue = v_queue and w.receiver <> v_receiver and w.wake_at <= v_next
    );
    insert into public.bc_queue_waiters as w (queue, receiver, since, wake_at, notified, busy)
    values (v_queue, v_receiver, v_now,
            case when v_keeper
                 then least(v_next, v_now + make_interval(secs => (p->>'idle_wait_seconds')::float8)) end,
            false, jsonb_array_length(v_messages) > 0)
    on conflict (queue, receiver) do update
       set since = excluded.since, wake_at = excluded.wake_at, notified = false, busy = excluded.busy;
    return jsonb_build_object(
        'messages', v_messages,
        'next_visible_in_seconds', case when v_keeper then extract(epoch from v_next - clock_timestamp()) end,
        'more', false
    );
end
$$;
