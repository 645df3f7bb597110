-- The local queue: fewer statements and calls in a send and in a receive that finds nothing.
--
-- bc_queue_send called bc_queue_wake and bc_queue_cover for every send; each returns at once when it has nothing to do
-- (no message due now, no delayed one), but a call of a plpgsql function with a SET clause still costs its set-up
-- (about 50 µs here). A step message is due at once, so every send paid for the cover: now each is called only when
-- it has something to do.
--
-- A consumer with nothing to do registers as a waiter after one more look for due messages under the queue's lock
-- (20261201065000_queue_wake_one.sql: no wake-up is lost between a send and a registration). That look was a whole
-- second bc_queue_take: one statement with five parts (acknowledge, pick, bury, dead letters, receive), whose
-- executor set-up is most of an empty receive's cost, and an idle consumer makes one such receive per message it
-- handled. Now it is an index probe of the due messages; only when it sees one does the receive take again. The
-- outcome is the same: a message sent before the lock is taken then (or skipped while another receive holds it,
-- as before).

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
        -- Nothing due: register, under the queue's lock, after one more look (see 20261201065000_queue_wake_one.sql).
        -- The look is an index probe; only when it sees a due message (one sent meanwhile, or one another receive
        -- is taking) does the receive run again.
        perform pg_advisory_xact_lock(7273, hashtext(v_queue));
        v_now := clock_timestamp();
        if exists (select from public.bc_queue_messages m where m.queue = v_queue and m.visible_at <= v_now) then
            v_messages := babychain_private.bc_queue_take(p - 'ack', v_now);
        end if;
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
    -- Each helper only when it has something to do (both return at once otherwise, but a call still costs its
    -- set-up: a step message is due now and has no delayed sibling).
    if v_due > 0 then
        perform babychain_private.bc_queue_wake(p->>'queue', v_due);
    end if;
    if v_first_delayed is not null then
        perform babychain_private.bc_queue_cover(p->>'queue', v_first_delayed);
    end if;
    return to_jsonb(v_count);
end
$$;
