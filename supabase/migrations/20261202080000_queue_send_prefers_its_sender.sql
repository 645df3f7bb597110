-- A send made inside a consumer's own invocation hands its message to that consumer first (bench/RESULTS.md "Queue
-- commits and the by-message hop (branch pgqueue2)").
--
-- Since 20261202061000_queue_no_empty_receive.sql a consumer that takes the last due message is registered as a busy
-- waiter and, after its message, waits for a notification instead of receiving again; a send wakes idle waiters
-- before busy ones. So a next step sent by message from inside an invocation (a poll, a step whose submit does not
-- fit the invocation, BABYCHAIN_NEXT_STEP_IN_INVOCATION off) crossed to another, idle process: its notification, its
-- wake-up and its cold caches, where before the sending consumer took it in the receive right after its invocation
-- (by-message hop at concurrency 1: p50 3.6 -> 4.8 ms, p99 6.3 -> 10.8 ms).
--
-- Now a send may name its `sender` (local/queue.py passes the consumer whose invocation is sending, on the queue it
-- consumes). When that consumer is a registered waiter of the queue that no send has chosen yet (it took the last due
-- message), it is picked before every other waiter and counted as the wake-up of one due message, like any picked
-- waiter (`notified`), but it is told in the answer ({"sent": n, "sender": true}) rather than by a notification: it
-- receives as soon as its invocation returns, with no round trip through its listening connection (a notification
-- to itself would also be left pending for its next wait). Nothing else changes: the pick is under the same lock
-- and `for update skip locked`, so no wake-up is lost; a sender that is no waiter (more messages were due: it
-- receives again at once) or was chosen already by another send is not picked, and the send wakes others as
-- before; a sender that dies before receiving leaves a notified row, which bc_queue_release_orphans removes, waking
-- every consumer of the queue (as for any consumer that dies after a send chose it). Without `sender` (the API's
-- create, the sweeper, a send from outside a consumer) the pick and the answer (the count) are as before.
-- Only bc_queue_send changes: the create (bc_create_run_queued) is sent from the API, never from a consumer's
-- invocation, and bc_queue_wake (a visibility change, a consumer that leaves) and bc_queue_cover (the keeper) have
-- no sender. The extra sort key costs nothing measurable on the few waiter rows.
--
-- The commits, for the record (synchronous_commit, unchanged here; 20261202030000_queue_acks_without_flush.sql):
-- bc_queue_send stays flushed. A step message sent after a flushed transition is the only thing that moves the
-- next step before the sweeper's next look; a callback message likewise, and a delayed poll message is the step's
-- only clock until then. Losing one in a crash would not break a guarantee (the sweeper re-drives), but would turn a
-- step's latency into the sweeper's interval, so the send waits for its flush as the transition before it did.

create or replace function public.bc_queue_send(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_queue text := p->>'queue';
    v_sender integer := (p->>'sender')::int;
    v_count integer;
    v_due integer;
    v_first_delayed timestamptz;
    v_woken integer;
    v_sender_woken boolean;
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
        -- The sender first (when it waits and was not chosen yet), then idle waiters, then busy ones
        -- (20261202061000_queue_no_empty_receive.sql). `is distinct from`: false only for the sender's row.
        with picked as (
            select w.receiver
              from public.bc_queue_waiters w
             where w.queue = v_queue and not w.notified
             order by w.receiver is distinct from v_sender, w.busy, w.wake_at is not null,
                      case when w.busy then w.since end, w.since desc
             limit v_due
               for update skip locked
        ), woken as (
            update public.bc_queue_waiters w
               set notified = true
              from picked
             where w.queue = v_queue and w.receiver = picked.receiver
            returning w.receiver
        )
        -- The sender is told in the answer, not notified.
        select count(case when woken.receiver is distinct from v_sender
                          then pg_notify('bc_queue_r' || woken.receiver, '') end)::integer,
               coalesce(bool_or(woken.receiver = v_sender), false)
          into v_woken, v_sender_woken
          from woken;
    end if;
    if v_first_delayed is not null then
        perform babychain_private.bc_queue_cover(v_queue, v_first_delayed);
    end if;
    if v_sender is null then
        return to_jsonb(v_count);
    end if;
    return jsonb_build_object('sent', v_count, 'sender', coalesce(v_sender_woken, false));
end
$$;
