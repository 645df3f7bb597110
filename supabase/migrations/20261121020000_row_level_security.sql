-- Row Level Security: only the service role reaches the data.
--
-- Supabase exposes the public schema through PostgREST to the `anon` and `authenticated` roles (anyone holding the
-- project's publishable/anon key). Every table gets RLS with no policies at all, so those roles see no rows even
-- where a default grant lets them query a table; on top of that they lose their table grants and the right to
-- execute the bc_* functions. The engine calls the functions as `service_role` (the Supabase adapter, which
-- bypasses RLS) or as the database owner (the psycopg adapter; owners are not subject to RLS unless it is forced,
-- and it is not).
--
-- The same file runs on Supabase and on plain Postgres (the embedded server used locally and in tests), where the
-- three Supabase roles do not exist: they are created there, without login, so the grants below mean the same.

do $$
begin
    if not exists (select from pg_roles where rolname = 'anon') then
        create role anon nologin noinherit;
    end if;
    if not exists (select from pg_roles where rolname = 'authenticated') then
        create role authenticated nologin noinherit;
    end if;
    if not exists (select from pg_roles where rolname = 'service_role') then
        -- Like Supabase's own service_role it bypasses RLS, when we may grant that (only a superuser may).
        if (select rolsuper from pg_roles where rolname = current_user) then
            create role service_role nologin noinherit bypassrls;
        else
            create role service_role nologin noinherit;
        end if;
    end if;
end
$$;

-- Tables ------------------------------------------------------------------------------------------------------------

alter table api_keys enable row level security;
alter table chain_runs enable row level security;
alter table chain_steps enable row level security;
alter table callback_deliveries enable row level security;
alter table provider_webhook_receipts enable row level security;

revoke all on table api_keys, chain_runs, chain_steps, callback_deliveries, provider_webhook_receipts
    from anon, authenticated;
grant usage on schema public to service_role;
-- The functions run with the caller's rights, so the service role needs the tables (Supabase grants these by default).
grant select, insert, update, delete on table api_keys, chain_runs, chain_steps, callback_deliveries,
    provider_webhook_receipts to service_role;
grant usage, select on sequence callback_deliveries_id_seq to service_role;

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

-- Every bc_* function (the RPC surface and the internal helpers): no execute for PUBLIC, anon or authenticated.
do $$
declare
    v_function regprocedure;
begin
    for v_function in
        select p.oid::regprocedure
          from pg_proc p join pg_namespace n on n.oid = p.pronamespace
         where n.nspname = 'public' and p.proname like 'bc\_%'
    loop
        execute format('revoke execute on function %s from public, anon, authenticated', v_function);
        execute format('grant execute on function %s to service_role', v_function);
    end loop;
end
$$;

-- Functions that later migrations create start out the same way. (`create or replace` keeps a function's grants.)
-- PUBLIC's execute right is a global default, so it is revoked globally; Supabase's grants to anon and
-- authenticated are per schema.
alter default privileges revoke execute on functions from public;
alter default privileges in schema public revoke execute on functions from anon, authenticated;
alter default privileges in schema public grant execute on functions to service_role;

-- Supabase's PostgREST reloads its schema cache on DDL; say so explicitly for self-hosted setups.
notify pgrst, 'reload schema';
