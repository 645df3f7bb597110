-- Wake one idle consumer per message, not all of them.
--
-- Before, every send notified the queue's channel and every idle consumer of the queue woke and ran a receive that
-- found nothing (about 70 of a chain3 run's 92 statements). Now an idle consumer registers in bc_queue_waiters, in
-- the receive that found nothing, and waits on its own channel (bc_queue_r<receiver>); a send notifies as many
-- registered consumers as it enqueued due messages (the most recently idle first, so the same few stay warm).
--
-- No lost wake-ups: registering and sending meet on an advisory lock per queue (7273, hashtext(queue)). A send takes
-- it shared after inserting and holds it until its commit; a consumer about to register takes it exclusively and
-- then looks for due messages again. Either the send committed first (the second look finds its message) or the
-- registration did (the send sees the waiter). Sends do not block each other.
--
-- Delayed messages (a delay, a retry after a failure): one idle consumer, the keeper, sleeps until the earliest
-- delayed message of the queue (its `wake_at`); the others wait to be notified. A send or change of visibility with
-- an earlier due time than every keeper's makes a waiter the keeper for that time (the notification's payload says
-- when); a keeper that takes a message while delayed ones remain passes the role on the same way.
--
-- Consumers still wake by themselves after `idle_wait_seconds` (a safety net, no longer what delivers messages).
-- A consumer that dies leaves its row behind: release_orphans removes rows whose consumer's liveness lock is gone
-- and notifies the queue's broadcast channel (bc_queue_<queue>), which every consumer also listens on.

create table public.bc_queue_waiters (
    queue    text not null,
    receiver integer not null,
    since    timestamptz not null,
    -- When it wakes by itself for the queue's next future message (the keeper); null: it waits to be notified.
    wake_at  timestamptz,
    -- A send chose it for a message: later sends pick another waiter until it has received again.
    notified boolean not null default false,
    primary key (queue, receiver),
    constraint bc_queue_waiters_queue_name check (queue ~ '^[a-z][a-z0-9_]{0,62}$'),
    constraint bc_queue_waiters_receiver_positive check (receiver > 0)
);

-- A few rows updated all the time: room on each page for HOT updates, and vacuumed often.
alter table public.bc_queue_waiters set (
    fillfactor = 50, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 200,
    autovacuum_vacuum_cost_delay = 0
);

alter table public.bc_queue_waiters enable row level security;
revoke all on table public.bc_queue_waiters from anon, authenticated;
grant select, insert, update, delete on table public.bc_queue_waiters to service_role;

-- Acknowledges p.ack and receives up to p.max_messages messages due at p_now (as bc_queue_receive did in one
-- statement; redrive to the dead letters included). p_now is a parameter, not clock_timestamp() in the query, so
-- the due index serves the comparison.
create function babychain_private.bc_queue_take(p jsonb, p_now timestamptz) returns jsonb
language sql set search_path = '' as $$
    with acked as (
        delete from public.bc_queue_messages
         where p ? 'ack'
           and id = (p->'ack'->>'id')::bigint and queue = p->>'queue' and receipt = (p->'ack'->>'receipt')::uuid
    ), due as (
        select id
          from public.bc_queue_messages
         where queue = p->>'queue' and visible_at <= p_now
         order by visible_at, id
         limit coalesce((p->>'max_messages')::int, 1)
           for update skip locked
    ), dead as (
        delete from public.bc_queue_messages m
         using due
         where m.id = due.id and m.receive_count >= (p->>'max_receives')::int
        returning m.id, m.queue, m.body, m.sent_at, m.receive_count
    ), buried as (
        insert into public.bc_queue_dead_letters (id, queue, body, sent_at, receive_count)
        select id, queue, body, sent_at, receive_count from dead
    ), received as (
        update public.bc_queue_messages m
           set visible_at = now() + babychain_private.bc_seconds(p->>'visibility_timeout_seconds'),
               receive_count = m.receive_count + 1,
               first_received_at = coalesce(m.first_received_at, now()),
               receipt = gen_random_uuid(),
               receiver = (p->>'receiver')::int
          from due
         where m.id = due.id and m.receive_count < (p->>'max_receives')::int
        returning m.id, m.body, m.receive_count, m.receipt, m.sent_at, m.first_received_at
    )
    select coalesce((select jsonb_agg(to_jsonb(r) order by r.id) from received r), '[]'::jsonb)
$$;

-- Notifies up to p_count registered waiters of a queue that no send has chosen yet; returns how many. Waiters that
-- wait to be notified come first (a keeper stays asleep for its due time), the most recently idle first.
create function babychain_private.bc_queue_wake(p_queue text, p_count integer) returns integer
language plpgsql set search_path = '' as $$
declare
    v_receiver integer;
    v_woken integer := 0;
begin
    if p_count <= 0 then
        return 0;
    end if;
    for v_receiver in
        with picked as (
            select w.receiver
              from public.bc_queue_waiters w
             where w.queue = p_queue and not w.notified
             order by w.wake_at is not null, w.since desc
             limit p_count
               for update skip locked
        )
        update public.bc_queue_waiters w
           set notified = true
          from picked
         where w.queue = p_queue and w.receiver = picked.receiver
        returning w.receiver
    loop
        perform pg_notify('bc_queue_r' || v_receiver, '');
        v_woken := v_woken + 1;
    end loop;
    return v_woken;
end
$$;

-- A message of the queue becomes due at p_due (a delayed send, a retry): unless some waiter already wakes by then,
-- one waiter becomes the keeper for it. It is told the time in the notification ('due <epoch seconds>') and sleeps
-- until then, without a receive now. Called with the queue's lock held (shared).
create function babychain_private.bc_queue_cover(p_queue text, p_due timestamptz) returns void
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
         order by w.since desc
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

-- A waiter leaves (it received, or its consumer stops): a keeper hands its role to another waiter (when delayed
-- messages remain). Returns whether it was registered.
create function babychain_private.bc_queue_unregister(p_queue text, p_receiver integer) returns boolean
language plpgsql set search_path = '' as $$
declare
    v_keeper boolean;
begin
    delete from public.bc_queue_waiters w
     where w.queue = p_queue and w.receiver = p_receiver
    returning w.wake_at is not null into v_keeper;
    if not found then
        return false;
    end if;
    if v_keeper then
        -- Under the queue's lock: a consumer registering meanwhile may have seen this keeper and not become one.
        perform pg_advisory_xact_lock(7273, hashtext(p_queue));
        perform babychain_private.bc_queue_cover(p_queue, (
            select min(m.visible_at)
              from public.bc_queue_messages m
             where m.queue = p_queue and m.visible_at > clock_timestamp() and m.receiver is null
        ));
    end if;
    return true;
end
$$;

-- {queue, messages: [{body, delay_seconds}]} -> number sent. Wakes one registered consumer per due message.
create or replace function public.bc_queue_send(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_count integer;
    v_due integer;
    v_first_delayed timestamptz;
begin
    with sent as (
        insert into public.bc_queue_messages (queue, body, visible_at)
        select p->>'queue', m->'body',
               -- SQS's delay bounds: 0 to 15 minutes.
               now() + make_interval(secs => least(greatest(coalesce((m->>'delay_seconds')::float8, 0), 0), 900))
          from jsonb_array_elements(p->'messages') as m
        returning visible_at
    )
    select count(*), count(*) filter (where visible_at <= now()), min(visible_at) filter (where visible_at > now())
      into v_count, v_due, v_first_delayed
      from sent;
    -- Held until commit: a consumer registering now waits for this send and then sees its messages.
    perform pg_advisory_xact_lock_shared(7273, hashtext(p->>'queue'));
    perform babychain_private.bc_queue_wake(p->>'queue', v_due);
    perform babychain_private.bc_queue_cover(p->>'queue', v_first_delayed);
    return to_jsonb(v_count);
end
$$;

-- {queue, max_messages, visibility_timeout_seconds, max_receives, receiver, ack?: {id, receipt}, idle_wait_seconds?}
--   -> {messages: [{id, body, receive_count, receipt, sent_at, first_received_at}], next_visible_in_seconds}
-- `ack` deletes the consumer's previous message (as bc_queue_delete) in the same call.
-- Without idle_wait_seconds (tests, PostgresQueue.take): next_visible_in_seconds is, when nothing was received, the
-- wait until the next message becomes visible (null when the queue is empty).
-- With idle_wait_seconds (a consumer with a ConsumerLease, which waits after an empty receive): when nothing is due
-- the consumer is registered as a waiter, and next_visible_in_seconds is set only for the keeper (the one consumer
-- that sleeps until the queue's next future message); the others wait for a notification (or idle_wait_seconds).
create or replace function public.bc_queue_receive(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_queue text := p->>'queue';
    v_receiver integer := (p->>'receiver')::int;
    v_messages jsonb;
    v_now timestamptz := clock_timestamp();
    v_next timestamptz;
    v_keeper boolean;
begin
    -- At-least-once either way: a receive or an acknowledgement lost in a crash of the server means the message is
    -- delivered again (the handlers are idempotent, as they are for SQS). So these commits need not wait for the
    -- WAL flush (about 1 ms on this kind of disk, on the path of every message); sends still do.
    perform set_config('synchronous_commit', 'off', true);
    v_messages := babychain_private.bc_queue_take(p, v_now);
    if not p ? 'idle_wait_seconds' or v_receiver is null then
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

    if jsonb_array_length(v_messages) = 0 then
        -- Nothing due: register, under the queue's lock, after one more look (see the top of this file).
        perform pg_advisory_xact_lock(7273, hashtext(v_queue));
        v_now := clock_timestamp();
        v_messages := babychain_private.bc_queue_take(p - 'ack', v_now);
    end if;
    if jsonb_array_length(v_messages) > 0 then
        perform babychain_private.bc_queue_unregister(v_queue, v_receiver);
        return jsonb_build_object('messages', v_messages, 'next_visible_in_seconds', null);
    end if;

    -- Due rows still in the queue are locked by receives under way: they are taken. The keeper covers the future:
    -- delayed messages and retries. Not the visibility timeouts of messages held by consumers: a consumer that dies
    -- gives its messages back through release_orphans, and a stuck one's minutes-long timeout is caught by the
    -- idle wake-ups.
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
                 then least(v_next, v_now + babychain_private.bc_seconds(p->>'idle_wait_seconds')) end,
            false)
    on conflict (queue, receiver) do update
       set since = excluded.since, wake_at = excluded.wake_at, notified = false;
    return jsonb_build_object(
        'messages', v_messages,
        'next_visible_in_seconds', case when v_keeper then extract(epoch from v_next - clock_timestamp()) end
    );
end
$$;

-- {queue, id, receipt, visibility_timeout_seconds} -> true when changed (ChangeMessageVisibility).
create or replace function public.bc_queue_change_visibility(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_visible_at timestamptz;
begin
    update public.bc_queue_messages
       set visible_at = now() + babychain_private.bc_seconds(p->>'visibility_timeout_seconds'),
           receiver = null
     where id = (p->>'id')::bigint and queue = p->>'queue' and receipt = (p->>'receipt')::uuid
    returning visible_at into v_visible_at;
    if not found then
        return to_jsonb(false);
    end if;
    perform pg_advisory_xact_lock_shared(7273, hashtext(p->>'queue'));
    if v_visible_at <= now() then
        perform babychain_private.bc_queue_wake(p->>'queue', 1);
    else
        perform babychain_private.bc_queue_cover(p->>'queue', v_visible_at);
    end if;
    return to_jsonb(true);
end
$$;

-- {queue, receiver} -> true when the consumer was registered. A consumer that stops unregisters (ConsumerLease.close).
create function public.bc_queue_leave(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_queue text := p->>'queue';
    v_notified boolean;
begin
    perform pg_advisory_xact_lock(7273, hashtext(v_queue));
    select w.notified into v_notified
      from public.bc_queue_waiters w
     where w.queue = v_queue and w.receiver = (p->>'receiver')::int;
    if not babychain_private.bc_queue_unregister(v_queue, (p->>'receiver')::int) then
        return to_jsonb(false);
    end if;
    if v_notified then
        -- A send chose it for a message it will not receive now.
        perform babychain_private.bc_queue_wake(v_queue, 1);
    end if;
    return to_jsonb(true);
end
$$;

-- {} -> number of messages made visible again because the consumer holding them is gone (its lock was released).
-- Also forgets the registrations of consumers that are gone, and then wakes every consumer of the queues concerned
-- (rare: a consumer died).
create or replace function public.bc_queue_release_orphans(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
-- `p` is unused: every RPC function takes one jsonb argument. Tells plpgsql_check (`supabase db lint`) so.
-- @plpgsql_check_options: extra_warnings = false
declare
    v_count integer;
    v_gone integer;
begin
    update public.bc_queue_messages m
       set visible_at = now(), receiver = null
     where m.receiver is not null
       and m.visible_at > now()
       and not exists (
           select from pg_locks l
            where l.locktype = 'advisory' and l.granted
              and l.database = (select oid from pg_database where datname = current_database())
              and l.classid = 7272 and l.objid = m.receiver::oid and l.objsubid = 2
       );
    get diagnostics v_count = row_count;
    delete from public.bc_queue_waiters w
     where not exists (
           select from pg_locks l
            where l.locktype = 'advisory' and l.granted
              and l.database = (select oid from pg_database where datname = current_database())
              and l.classid = 7272 and l.objid = w.receiver::oid and l.objsubid = 2
       );
    get diagnostics v_gone = row_count;
    if v_count > 0 or v_gone > 0 then
        perform pg_notify('bc_queue_' || q.queue, '') from (select distinct queue from public.bc_queue_messages) q;
    end if;
    return to_jsonb(v_count);
end
$$;

revoke execute on function
    babychain_private.bc_queue_take(jsonb, timestamptz), babychain_private.bc_queue_wake(text, integer),
    babychain_private.bc_queue_cover(text, timestamptz), babychain_private.bc_queue_unregister(text, integer)
from public, anon, authenticated, service_role;
revoke execute on function public.bc_queue_leave(jsonb) from public, anon, authenticated;
grant execute on function public.bc_queue_leave(jsonb) to service_role;
