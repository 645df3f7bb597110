-- Flat cost at any history: a caller's run list answers from an index for every filter and cursor depth, whatever
-- plan the server caches for the function (SQL functions' plans are cached since PostgreSQL 18; after five calls a
-- generic plan, planned without the arguments' values, may be used).
--
-- Before: one index (owner_id, created_at desc, id desc) and optional predicates (`p->>'status' is null or ...`). A
-- filter that matches little walked the caller's whole history in that index, and under a generic plan the cursor
-- was a filter too (no index condition), so a page deep in the history read every newer entry first.
--
-- Now every predicate is one an index can take as a condition:
--   * the status filter: (owner_id, status, created_at desc, id desc);
--   * the chain filter, with or without a status: (owner_id, chain_slug, status, created_at desc, id desc);
--   * no filter: the first index again, one scan per status merged in created order (a run has one of five
--     statuses). The old (owner_id, created_at desc, id desc) index goes: two list indexes, not three. Each
--     index is written on every insert and on every update that is not HOT; updates that change status were not HOT
--     before either (status is in partial index predicates), so these indexes make no update lose HOT;
--   * the cursor is always present: (created_at, id) < (the cursor, or +infinity on the first page), a row
--     comparison in the indexes' order, so it is an index condition that starts the scan at the cursor instead of a
--     filter applied to every newer entry.
-- The query is a UNION ALL of ten arms, one per (index, status), each ordered and limited on its own so that the
-- planner merges them (Merge Append) and stops after `limit` rows: a page reads at most `limit` + 5 index entries.
-- Each arm carries its gate (the status filter is this status or absent; the chain filter is absent, or present) as
-- a condition on the arguments alone, which a custom plan folds away and a generic plan checks once (a One-Time
-- Filter) before the arm runs: only the arms that can match are scanned.

create index chain_runs_owner_status_created on public.chain_runs (owner_id, status, created_at desc, id desc);
create index chain_runs_owner_chain_status_created
    on public.chain_runs (owner_id, chain_slug, status, created_at desc, id desc);
drop index public.chain_runs_owner_created;

create or replace function public.bc_list_runs(p jsonb) returns jsonb
language sql stable security definer set search_path = '' as $$
    select coalesce(jsonb_agg(babychain_private.bc_run_json(page.id) order by page.created_at desc, page.id desc),
                    '[]'::jsonb)
      from (
        (select r.id, r.created_at from public.chain_runs r
          where p->>'chain_slug' is null and coalesce(p->>'status', 'queued') = 'queued'
            and r.owner_id = p->>'owner_id' and r.status = 'queued'
            and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                        coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          order by r.created_at desc, r.id desc limit (p->>'limit')::int)
        union all
        (select r.id, r.created_at from public.chain_runs r
          where p->>'chain_slug' is null and coalesce(p->>'status', 'running') = 'running'
            and r.owner_id = p->>'owner_id' and r.status = 'running'
            and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                        coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          order by r.created_at desc, r.id desc limit (p->>'limit')::int)
        union all
        (select r.id, r.created_at from public.chain_runs r
          where p->>'chain_slug' is null and coalesce(p->>'status', 'succeeded') = 'succeeded'
            and r.owner_id = p->>'owner_id' and r.status = 'succeeded'
            and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                        coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          order by r.created_at desc, r.id desc limit (p->>'limit')::int)
        union all
        (select r.id, r.created_at from public.chain_runs r
          where p->>'chain_slug' is null and coalesce(p->>'status', 'failed') = 'failed'
            and r.owner_id = p->>'owner_id' and r.status = 'failed'
            and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                        coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          order by r.created_at desc, r.id desc limit (p->>'limit')::int)
        union all
        (select r.id, r.created_at from public.chain_runs r
          where p->>'chain_slug' is null and coalesce(p->>'status', 'canceled') = 'canceled'
            and r.owner_id = p->>'owner_id' and r.status = 'canceled'
            and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                        coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          order by r.created_at desc, r.id desc limit (p->>'limit')::int)
        union all
        (select r.id, r.created_at from public.chain_runs r
          where p->>'chain_slug' is not null and coalesce(p->>'status', 'queued') = 'queued'
            and r.owner_id = p->>'owner_id' and r.chain_slug = p->>'chain_slug' and r.status = 'queued'
            and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                        coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          order by r.created_at desc, r.id desc limit (p->>'limit')::int)
        union all
        (select r.id, r.created_at from public.chain_runs r
          where p->>'chain_slug' is not null and coalesce(p->>'status', 'running') = 'running'
            and r.owner_id = p->>'owner_id' and r.chain_slug = p->>'chain_slug' and r.status = 'running'
            and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                        coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          order by r.created_at desc, r.id desc limit (p->>'limit')::int)
        union all
        (select r.id, r.created_at from public.chain_runs r
          where p->>'chain_slug' is not null and coalesce(p->>'status', 'succeeded') = 'succeeded'
            and r.owner_id = p->>'owner_id' and r.chain_slug = p->>'chain_slug' and r.status = 'succeeded'
            and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                        coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          order by r.created_at desc, r.id desc limit (p->>'limit')::int)
        union all
        (select r.id, r.created_at from public.chain_runs r
          where p->>'chain_slug' is not null and coalesce(p->>'status', 'failed') = 'failed'
            and r.owner_id = p->>'owner_id' and r.chain_slug = p->>'chain_slug' and r.status = 'failed'
            and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                        coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          order by r.created_at desc, r.id desc limit (p->>'limit')::int)
        union all
        (select r.id, r.created_at from public.chain_runs r
          where p->>'chain_slug' is not null and coalesce(p->>'status', 'canceled') = 'canceled'
            and r.owner_id = p->>'owner_id' and r.chain_slug = p->>'chain_slug' and r.status = 'canceled'
            and (r.created_at, r.id) < (coalesce((p->>'cursor_created_at')::timestamptz, 'infinity'),
                                        coalesce((p->>'cursor_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          order by r.created_at desc, r.id desc limit (p->>'limit')::int)
        order by created_at desc, id desc
        limit (p->>'limit')::int
      ) page
$$;

-- Provider webhook receipts do not grow forever. They only deduplicate a provider's retried deliveries (minutes to
-- hours), so they get their own window, `receipt_days`, and go even when runs are kept forever (`retention_days` 0).
-- {retention_days, limit, receipt_days} -> {run_ids, receipts, busy} as before; without receipt_days, receipts go at
-- the runs' cutoff as they did. Each part is skipped when its window is 0 or missing.
create or replace function public.bc_purge_expired_runs(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' set lock_timeout = '2s' as $$
declare
    v_days integer := coalesce((p->>'retention_days')::integer, 0);
    v_receipt_days integer := coalesce((p->>'receipt_days')::integer, (p->>'retention_days')::integer, 0);
    v_limit integer := greatest(coalesce((p->>'limit')::integer, 0), 0);
    v_run_ids jsonb := '[]'::jsonb;
    v_receipts integer := 0;
begin
    if (v_days <= 0 and v_receipt_days <= 0) or v_limit = 0 then
        return jsonb_build_object('run_ids', v_run_ids, 'receipts', v_receipts, 'busy', false);
    end if;
    begin
        if v_days > 0 then
            -- The batch is picked first and deleted by primary key (`= any(array(...))`, an index condition in any
            -- plan): joined to the picked rows instead, a generic plan (planned without the limit's value) expects a
            -- tenth of the table and hash-joins it through a sequential scan.
            with gone as (
                -- Steps and callback attempts go with their run (on delete cascade, through their run_id indexes).
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

        if v_receipt_days > 0 then
            -- By row address, for the same reason (the rows are locked, so their addresses hold until the delete).
            delete from public.provider_webhook_receipts w
             where w.ctid = any(array(
                select x.ctid
                  from public.provider_webhook_receipts x
                 where x.received_at < now() - make_interval(days => v_receipt_days)
                 order by x.received_at
                 limit v_limit
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
