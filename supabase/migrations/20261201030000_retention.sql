-- Retention: finished runs older than the retention window are deleted, with everything of theirs.
--
-- `BABYCHAIN_RETENTION_DAYS` (default 30; 0 keeps everything) sets the window; the sweeper calls
-- `bc_purge_expired_runs` once per batch, a few batches per tick, and deletes the local artifact files of the runs it
-- returns (on AWS the bucket's lifecycle rule expires the objects after the same number of days).
--
-- What goes, per batch:
--   * runs that are terminal (succeeded, failed, canceled), finished before the cutoff, and whose callback is settled
--     (delivered, failed, or none at all): a run whose callback is still waiting, pending or being delivered stays,
--     whatever its age;
--   * with each run, its steps and its callback attempts (both reference the run `on delete cascade`) and its
--     idempotency key (a column of the run: once the run is gone the key may be used again);
--   * provider webhook receipts received before the cutoff. They only deduplicate a provider's deliveries (which
--     providers retry for minutes to hours) and carry no run id, so they go by age alone.
--
-- Never a long lock, never a wait on live work:
--   * a batch is one short statement over at most `limit` runs, found through a partial index in completion order
--     (no scan that grows with history), and each batch commits on its own;
--   * candidate runs are locked `for update skip locked`: a run some other transaction holds (a callback attempt
--     being recorded takes a key-share lock on it, for instance) is left for a later sweep instead of waited for;
--   * the function runs with a short `lock_timeout`: were a child row (a step, an attempt) held by someone else, the
--     batch gives up after that long and reports itself busy rather than queueing behind, or in front of, live work.
--
-- Like every RPC function (see the first migration): `security definer`, `search_path = ''`, schema-qualified
-- names, execute for service_role only.

-- The purge's way in: exactly the runs it may delete once they are old enough, oldest first. A row enters the index
-- when its run ends (without a webhook) or when its callback settles; runs that are still active or still owe a
-- callback are not in it at all, so the purge never walks over them.
create index chain_runs_purgeable on public.chain_runs (completed_at)
    where status in ('succeeded', 'failed', 'canceled')
      and (callback_status is null or callback_status in ('delivered', 'failed'));

-- Receipts by age (their primary key is (provider, receipt_id)).
create index provider_webhook_receipts_received on public.provider_webhook_receipts (received_at);

-- {retention_days, limit} -> {run_ids: [the runs deleted], receipts: number deleted, busy: bool}
-- retention_days <= 0 (or missing) deletes nothing. `busy`: a row this batch needed was held by another transaction
-- for longer than the lock timeout; nothing was deleted and the next sweep tries again.
create function public.bc_purge_expired_runs(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' set lock_timeout = '2s' as $$
declare
    v_days integer := coalesce((p->>'retention_days')::integer, 0);
    v_limit integer := greatest(coalesce((p->>'limit')::integer, 0), 0);
    v_cutoff timestamptz;
    v_run_ids jsonb := '[]'::jsonb;
    v_receipts integer := 0;
begin
    if v_days <= 0 or v_limit = 0 then
        return jsonb_build_object('run_ids', v_run_ids, 'receipts', v_receipts, 'busy', false);
    end if;
    v_cutoff := now() - make_interval(days => v_days);
    begin
        with doomed as (
            select r.id
              from public.chain_runs r
             where r.status in ('succeeded', 'failed', 'canceled')
               and (r.callback_status is null or r.callback_status in ('delivered', 'failed'))
               and r.completed_at < v_cutoff
             order by r.completed_at
             limit v_limit
               for update skip locked
        ), gone as (
            -- Steps and callback attempts go with their run (on delete cascade, through their run_id indexes).
            delete from public.chain_runs r using doomed where r.id = doomed.id
            returning r.id
        )
        select coalesce(jsonb_agg(gone.id), '[]'::jsonb) into v_run_ids from gone;

        with doomed as (
            select w.provider, w.receipt_id
              from public.provider_webhook_receipts w
             where w.received_at < v_cutoff
             order by w.received_at
             limit v_limit
               for update skip locked
        )
        delete from public.provider_webhook_receipts w
         using doomed
         where w.provider = doomed.provider and w.receipt_id = doomed.receipt_id;
        get diagnostics v_receipts = row_count;
    exception when lock_not_available then
        -- The whole batch is undone (the block is a subtransaction): nothing half-deleted, nothing waited for.
        return jsonb_build_object('run_ids', '[]'::jsonb, 'receipts', 0, 'busy', true);
    end;
    return jsonb_build_object('run_ids', v_run_ids, 'receipts', v_receipts, 'busy', false);
end
$$;

revoke execute on function public.bc_purge_expired_runs(jsonb) from public, anon, authenticated;
grant execute on function public.bc_purge_expired_runs(jsonb) to service_role;

notify pgrst, 'reload schema';
