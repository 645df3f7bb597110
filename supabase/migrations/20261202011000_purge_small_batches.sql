-- The retention purge under 2 ms per call: small batches, and no per-row trigger for the step job ids.
--
-- A batch of 500 runs took 22–46 ms at 1,000,000 runs, almost all of it foreign-key cascades, which run one
-- statement per deleted parent row: per run one delete of its steps and one of its callback attempts, and per step
-- one delete of its job ids (chain_step_jobs), three per run and the largest share (1,500 of the batch's 2,500
-- cascade statements; ~17 of its ~40 ms). The job ids now go the way the step timers do
-- (20261201100000_step_timers.sql): once per statement, by one index condition over the deleted steps that were ever
-- submitted. Runs keep their foreign keys to their steps and callback attempts: those guard the writes of live work.
--
-- A job-id row is written only by bc_record_submission, right after the update that finds its step (running, the
-- attempt current), so the foreign key checked nothing else; it went with its step, and still does.
--
-- The batch size is the caller's (the sweeper now asks for a few dozen runs per call and makes more calls: see
-- engine/sweeper.py for the arithmetic); receipts, which cascade to nothing, may have their own, larger limit.

alter table public.chain_step_jobs drop constraint if exists chain_step_jobs_step_id_fkey;

-- Runs as the writer of chain_steps (the RPC functions' owner), as every private helper does. A step that was never
-- claimed (attempt 0: queued, or skipped) never had a job id.
create function babychain_private.bc_drop_step_jobs() returns trigger
language plpgsql set search_path = '' as $$
begin
    -- `= any(array(...))`: an index condition on chain_step_jobs_step whatever the planner guesses of `gone`.
    delete from public.chain_step_jobs j where j.step_id = any(array(select g.id from gone g where g.attempt > 0));
    return null;
end
$$;
revoke execute on function babychain_private.bc_drop_step_jobs() from public, anon, authenticated, service_role;

-- A cascade from chain_runs deletes each run's steps in its own statement, but statement triggers on the cascaded
-- deletes fire once, at the end of the purge's statement, with every deleted step in `gone`.
create trigger chain_steps_jobs_delete after delete on public.chain_steps
    referencing old table as gone for each statement execute function babychain_private.bc_drop_step_jobs();

-- {retention_days, limit, receipt_days, receipt_limit} -> {run_ids, receipts, busy}: as in
-- 20261201083000_list_by_index.sql, with `receipt_limit` (default: `limit`) for the receipts.
create or replace function public.bc_purge_expired_runs(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' set lock_timeout = '2s' as $$
declare
    v_days integer := coalesce((p->>'retention_days')::integer, 0);
    v_receipt_days integer := coalesce((p->>'receipt_days')::integer, (p->>'retention_days')::integer, 0);
    v_limit integer := greatest(coalesce((p->>'limit')::integer, 0), 0);
    v_receipt_limit integer := greatest(coalesce((p->>'receipt_limit')::integer, (p->>'limit')::integer, 0), 0);
    v_run_ids jsonb := '[]'::jsonb;
    v_receipts integer := 0;
begin
    if (v_days <= 0 or v_limit = 0) and (v_receipt_days <= 0 or v_receipt_limit = 0) then
        return jsonb_build_object('run_ids', v_run_ids, 'receipts', v_receipts, 'busy', false);
    end if;
    begin
        if v_days > 0 and v_limit > 0 then
            -- The batch is picked first and deleted by primary key (`= any(array(...))`, an index condition in any
            -- plan): joined to the picked rows instead, a generic plan (planned without the limit's value) expects a
            -- tenth of the table and hash-joins it through a sequential scan.
            with gone as (
                -- Steps and callback attempts go with their run (on delete cascade, through their run_id indexes),
                -- job ids with their steps (chain_steps_jobs_delete).
                delete from public.chain_runs r
                 where r.id = any(array(
                    select d.id
                      from public.chain_runs d
                     where d.status in ('succeeded', 'failed', 'canceled')
                       and (d.callback_status is null or d.callback_status in ('delivered', 'failed'))
                       and d.completed_at < now() - make_interval(days => v_days)
                     order by d.completed_at
                     limit v_limit
                       for update skip locked))
                returning r.id
            )
            select coalesce(jsonb_agg(gone.id), '[]'::jsonb) into v_run_ids from gone;
        end if;

        if v_receipt_days > 0 and v_receipt_limit > 0 then
            -- By row address, for the same reason (the rows are locked, so their addresses hold until the delete).
            delete from public.provider_webhook_receipts w
             where w.ctid = any(array(
                select x.ctid
                  from public.provider_webhook_receipts x
                 where x.received_at < now() - make_interval(days => v_receipt_days)
                 order by x.received_at
                 limit v_receipt_limit
                   for update skip locked));
            get diagnostics v_receipts = row_count;
        end if;
    exception when lock_not_available then
        -- The whole batch is undone (the block is a subtransaction): nothing half-deleted, nothing waited for.
        return jsonb_build_object('run_ids', '[]'::jsonb, 'receipts', 0, 'busy', true);
    end;
    return jsonb_build_object('run_ids', v_run_ids, 'receipts', v_receipts, 'busy', false);
end
$$;
