-- Per-key rate limits: a key may carry its own requests-per-minute limit; null follows the deployment's default
-- (BABYCHAIN_RATE_LIMIT_PER_MINUTE). The limit is enforced on Upstash Redis by the API edge (babychain.ratelimit);
-- the database only stores it and hands it out with the key. `babychain keys create --rate-limit N` sets it,
-- `babychain keys set-rate-limit` changes it, `keys list` shows it, and a rotated key keeps it.

alter table public.api_keys
    add column rate_limit_per_minute integer
        constraint api_keys_rate_limit_positive check (rate_limit_per_minute is null or rate_limit_per_minute > 0);

-- The one shape every key function returns: never the key or its hash.
create function babychain_private.bc_api_key_json(k public.api_keys) returns jsonb
language sql immutable set search_path = '' as $$
    select jsonb_build_object('id', k.id, 'key_prefix', k.key_prefix, 'name', k.name, 'scopes', to_jsonb(k.scopes),
                              'rate_limit_per_minute', k.rate_limit_per_minute)
$$;

-- {key_prefix, key_hash, name, scopes?, expires_at?, rate_limit_per_minute?} -> the new key's row.
create or replace function public.bc_create_api_key(p jsonb) returns jsonb
language sql security definer set search_path = '' as $$
    insert into public.api_keys (key_prefix, key_hash, name, scopes, expires_at, rate_limit_per_minute)
    values (p->>'key_prefix', p->>'key_hash', p->>'name',
            coalesce(babychain_private.bc_text_array(nullif(p->'scopes', 'null'::jsonb)),
                     '{chains:run,chains:read,runs:cancel}'),
            (p->>'expires_at')::timestamptz,
            (p->>'rate_limit_per_minute')::integer)
    returning babychain_private.bc_api_key_json(api_keys)
$$;

-- {key_hash} -> the active, unexpired key's row with its rate limit (and last_used_at moves), or null.
create or replace function public.bc_authenticate_key(p jsonb) returns jsonb
language sql security definer set search_path = '' as $$
    update public.api_keys
       set last_used_at = now()
     where key_hash = p->>'key_hash' and is_active and (expires_at is null or expires_at > now())
    returning babychain_private.bc_api_key_json(api_keys)
$$;

-- {} -> every key, newest first: prefix, name, scopes, rate limit, state and dates; never a hash.
create or replace function public.bc_list_api_keys(p jsonb) returns jsonb
language sql stable security definer set search_path = '' as $$
    select coalesce(jsonb_agg(babychain_private.bc_api_key_json(k) || jsonb_build_object(
               'is_active', k.is_active, 'expires_at', k.expires_at, 'last_used_at', k.last_used_at,
               'created_at', k.created_at) order by k.created_at desc, k.id), '[]'::jsonb)
      from public.api_keys k
$$;

-- {key: id or prefix} -> the revoked key's row, or null when the reference names no single active key.
create or replace function public.bc_revoke_api_key(p jsonb) returns jsonb
language sql security definer set search_path = '' as $$
    update public.api_keys
       set is_active = false
     where id = babychain_private.bc_key_by_reference(p->>'key') and is_active
    returning babychain_private.bc_api_key_json(api_keys)
$$;

-- {key: id or prefix, key_prefix, key_hash} -> the new key's row: same name, scopes, expiry and rate limit; the old
-- key is revoked in the same transaction. Null when the reference names no single active key.
create or replace function public.bc_rotate_api_key(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_old public.api_keys;
    v_new jsonb;
begin
    update public.api_keys
       set is_active = false
     where id = babychain_private.bc_key_by_reference(p->>'key') and is_active
    returning * into v_old;
    if v_old.id is null then
        return null;
    end if;
    insert into public.api_keys (key_prefix, key_hash, name, scopes, expires_at, rate_limit_per_minute)
    values (p->>'key_prefix', p->>'key_hash', v_old.name, v_old.scopes, v_old.expires_at, v_old.rate_limit_per_minute)
    returning babychain_private.bc_api_key_json(api_keys) into v_new;
    return v_new;
end
$$;

-- {key: id or prefix, rate_limit_per_minute: positive integer or null (the default)} -> the key's row, or null
-- when the reference names no single active key. Takes effect on the key's next request.
create function public.bc_set_api_key_rate_limit(p jsonb) returns jsonb
language sql security definer set search_path = '' as $$
    update public.api_keys
       set rate_limit_per_minute = (p->>'rate_limit_per_minute')::integer
     where id = babychain_private.bc_key_by_reference(p->>'key') and is_active
    returning babychain_private.bc_api_key_json(api_keys)
$$;

revoke execute on function babychain_private.bc_api_key_json(public.api_keys)
    from public, anon, authenticated, service_role;
revoke execute on function public.bc_set_api_key_rate_limit(jsonb) from public, anon, authenticated;
grant execute on function public.bc_set_api_key_rate_limit(jsonb) to service_role;
