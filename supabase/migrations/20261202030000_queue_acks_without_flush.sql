-- The local queue's acknowledgements commit without waiting for the WAL flush, as its receives already do.
--
-- Which transactions may skip the flush (synchronous_commit off for that transaction only, `set_config(..., true)`):
-- only those whose loss in a crash of the server changes nothing a caller was told and breaks no guarantee.
--   * bc_queue_receive (since 20261201065000_queue_wake_one.sql; it also acknowledges the consumer's previous
--     message), bc_queue_delete (an acknowledgement alone) and bc_queue_change_visibility (a failed message's
--     early retry): a receive, acknowledgement or visibility change lost in a crash only makes the message
--     visible again, at once (the consumers that held it are gone: bc_queue_release_orphans) or after its
--     visibility timeout. That is at-least-once delivery, which the step and callback handlers already take (as on
--     SQS): every step message carries its step's `seq`, so a repeat is stale and changes nothing, and a callback
--     message is claimed by its lease.
--   * Not bc_queue_send, bc_create_run(_queued) or any step, run or callback transition: a lost send would leave a
--     step without its message until the sweeper's next check, and a transition is acknowledged to its caller (the
--     API's 202, a claimed step submitted to a provider, a completion that started the next step) and must be there
--     after a crash.
-- The loss is bounded too: WAL is replayed in order, so a crash loses only the asynchronous commits after the last
-- flush (the walwriter's, every wal_writer_delay, or the next synchronous commit's, which flushes everything before
-- it). The setting must be set inside the function with is_local (the transaction's own value, read at its commit),
-- not as a function's SET clause (restored when the function returns, before the commit).
-- tests/integration/test_local_queue.py pins which functions commit without the flush; the fault suite crashes the
-- server after such a commit.

create or replace function public.bc_queue_delete(p jsonb) returns jsonb
language sql security definer set search_path = '' as $$
    select set_config('synchronous_commit', 'off', true);
    with gone as (
        delete from public.bc_queue_messages
         where id = (p->>'id')::bigint and queue = p->>'queue' and receipt = (p->>'receipt')::uuid
        returning 1
    )
    select to_jsonb(exists (select from gone))
$$;

create or replace function public.bc_queue_change_visibility(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_visible_at timestamptz;
begin
    perform set_config('synchronous_commit', 'off', true);
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
