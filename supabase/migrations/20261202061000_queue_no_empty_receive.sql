-- No empty receive per message: a consumer that takes the last due message registers as a waiter in that receive.
--
-- Before, a consumer handled its message and then received again (acknowledging it), and when nothing else was due
-- that receive found nothing and registered it as a waiter (20261201065000_queue_wake_one.sql): two receives per
-- message whenever the queue was not backed up (a chain3 run at concurrency 1 to 4: 1.97 and 2.19 receives per run,
-- one of them empty; each a statement and a commit, ~0.5 ms of the backend's CPU).
--
-- Now a consumer that will wait after its message unless more are due says so (`idle_after`). A receive that takes
-- a message then looks whether another is due, as the empty receive did: an index probe, then under the queue's lock
-- a second probe (the lock orders it with every send, so no wake-up is lost, as for an empty receive). If one is
-- due it answers `more: true` and the consumer receives again after its message, acknowledging it in that receive
-- as before. If none is, the consumer is registered as a waiter in this same receive, marked `busy`, and answers
-- `more: false`: after its message it waits for a notification without receiving, and acknowledges the message in
-- the receive a notification (or its own short wait, local/queue.py) leads to.
--
-- A send wakes waiters that are idle first, then busy ones, the longest busy first (the likeliest to be done). A
-- busy waiter may be the keeper for a delayed message: it waits until then after its message. An empty receive
-- registers the consumer as idle, as before. Without `idle_after` a receive answers as before (no `more`).

alter table public.bc_queue_waiters add column busy boolean not null default false;

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
        -- The messages just taken are invisible now: any due row is another message (or one another receive is
        -- taking right now; then the consumer's next receive may find nothing, as an idle one's may).
        if v_idle_after and not exists (
            select from public.bc_queue_messages m where m.queue = v_queue and m.visible_at <= clock_timestamp()
        ) then
            perform pg_advisory_xact_lock(7273, hashtext(v_queue));
            v_now := clock_timestamp();
            if not exists (
                select from public.bc_queue_messages m where m.queue = v_queue and m.visible_at <= v_now
            ) then
                -- Nothing more: the consumer waits after this message, registered now (busy until it receives).
                v_register := true;
            end if;
        end if;
        if not v_register then
            -- More is due (or the consumer does not wait): no longer a waiter; a keeper hands its role on.
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

-- Which waiters a send wakes: idle ones first (those that wait to be notified before a keeper, which stays asleep
-- for its due time; the most recently idle first, so the same few stay warm), then busy ones, the longest busy first.
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
        with picked as (
            select w.receiver
              from public.bc_queue_waiters w
             where w.queue = v_queue and not w.notified
             order by w.busy, w.wake_at is not null, case when w.busy then w.since end, w.since desc
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

-- The same order for the other wake-ups (a visibility change, a consumer that leaves).
create or replace function babychain_private.bc_queue_wake(p_queue text, p_count integer) returns integer
language plpgsql set search_path = '' as $$
declare
    v_woken integer;
begin
    if p_count <= 0 then
        return 0;
    end if;
    with picked as (
        select w.receiver
          from public.bc_queue_waiters w
         where w.queue = p_queue and not w.notified
         order by w.busy, w.wake_at is not null, case when w.busy then w.since end, w.since desc
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

-- A keeper for a delayed message: an idle waiter rather than a busy one.
create or replace function babychain_private.bc_queue_cover(p_queue text, p_due timestamptz) returns void
language plpgsql set search_path = '' as $$
declare
    v_receiver integer;
begin
    if p_due is null or exists (
        select from public.bc_queue_waiters w where w.queue = p_queue and w.wake_at <= p_due
    ) then
        return;
    end if;
    with picked as (
        select w.receiver
          from public.bc_queue_waiters w
         where w.queue = p_queue and not w.notified
         order by w.busy, w.since desc
         limit 1
           for update skip locked
    )
    update public.bc_queue_waiters w
       set wake_at = p_due
      from picked
     where w.queue = p_queue and w.receiver = picked.receiver
    returning w.receiver into v_receiver;
    if v_receiver is not null then
        perform pg_notify('bc_queue_r' || v_receiver, 'due ' || extract(epoch from p_due));
    end if;
end
$$;
