-- Row Level Security: only the engine reaches the data.
--
-- Supabase exposes the public schema through PostgREST to the `anon` and `authenticated` roles (anyone holding the
-- project's publishable/anon key). Every table gets RLS with no policies at all, so those roles see no rows even
-- where a default grant lets them query a table; on top of that they lose their table grants. They never had the
-- right to execute a bc_* function (the first migration revokes it before creating any). The engine calls the RPC
-- functions as `service_role` (the Supabase adapter) or as the database owner (the psycopg adapter); either way the
-- functions run as their owner (`security definer`), and owners are not subject to RLS unless it is forced (it is
-- not).
--
-- The same file runs on Supabase and on plain Postgres, where the first migration created the three roles.

-- Tables ------------------------------------------------------------------------------------------------------------

alter table public.api_keys enable row level security;
alter table public.chain_runs enable row level security;
alter table public.chain_steps enable row level security;
alter table public.callback_deliveries enable row level security;
alter table public.provider_webhook_receipts enable row level security;

revoke all on table public.api_keys, public.chain_runs, public.chain_steps, public.callback_deliveries,
    public.provider_webhook_receipts
    from anon, authenticated;
grant usage on schema public to service_role;
-- The RPC functions need none of these (they run as the owner); service_role keeps them as on Supabase, where it is
-- the project's administrative key (dashboard, operators' scripts).
grant select, insert, update, delete on table public.api_keys, public.chain_runs, public.chain_steps,
    public.callback_deliveries, public.provider_webhook_receipts to service_role;
grant usage, select on sequence public.callback_deliveries_id_seq to service_role;

-- The local migrator's bookkeeping table (Supabase keeps its own in supabase_migrations).
do $$
begin
    if to_regclass('public.bc_schema_migrations') is not null then
        alter table public.bc_schema_migrations enable row level security;
        revoke all on table public.bc_schema_migrations from anon, authenticated;
    end if;
end
$$;

-- Functions ---------------------------------------------------------------------------------------------------------

-- Belt and braces over the first migration's default privileges (a database restored from a dump, or functions
-- created before them): no bc_* function is executable by PUBLIC, anon or authenticated, and no private helper by
-- anyone but its owner. service_role's execute right on the RPC surface is granted function by function where each
-- is created (tests/integration/test_sql_hygiene.py checks that public holds nothing else).
do $$
declare
    v_function regprocedure;
    v_schema name;
begin
    for v_function, v_schema in
        select p.oid::regprocedure, n.nspname
          from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
         where (n.nspname = 'public' and p.proname like 'bc\_%') or n.nspname = 'babychain_private'
    loop
        execute format('revoke execute on function %s from public, anon, authenticated', v_function);
        if v_schema = 'babychain_private' then
            execute format('revoke execute on function %s from service_role', v_function);
        end if;
    end loop;
end
$$;

-- Supabase's PostgREST reloads its schema cache on DDL; say so explicitly for self-hosted setups.
notify pgrst, 'reload schema';
