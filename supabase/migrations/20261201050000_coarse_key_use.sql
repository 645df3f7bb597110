-- Authenticating a key reads; it writes only when the key's last use is more than a minute old. A write on every
-- request made each API call an UPDATE (a new row version, WAL, and a row lock that same-key requests queued on);
-- last_used_at is for operators ("is this key still in use?"), where a minute is plenty.

create or replace function public.bc_authenticate_key(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_key public.api_keys;
begin
    select * into v_key from public.api_keys
     where key_hash = p->>'key_hash' and is_active and (expires_at is null or expires_at > now());
    if v_key.id is null then
        return null;
    end if;
    if v_key.last_used_at is null or v_key.last_used_at < now() - interval '1 minute' then
        -- skip locked: a concurrent request is recording the same use; one of them is enough.
        update public.api_keys k set last_used_at = now()
         where k.id = (select id from public.api_keys where id = v_key.id for update skip locked);
    end if;
    return babychain_private.bc_api_key_json(v_key);
end
$$;

revoke execute on function public.bc_authenticate_key(jsonb) from public, anon, authenticated;
grant execute on function public.bc_authenticate_key(jsonb) to service_role;
