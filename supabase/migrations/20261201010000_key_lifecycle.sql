-- API key lifecycle: keys are created with scopes and an optional expiry, listed (never shown), revoked and rotated.
-- `babychain keys create|list|revoke|rotate` calls these against any DATABASE_URL, Supabase included. A key is
-- named by its id or by its prefix (the first 12 characters, which `list` shows); a prefix that names more than one
-- key is refused rather than guessed.

-- {key_prefix, key_hash, name, scopes?, expires_at?} -> {id, key_prefix, name, scopes} (never the key or its hash).
create or replace function public.bc_create_api_key(p jsonb) returns jsonb
language sql security definer set search_path = '' as $$
    insert into public.api_keys (key_prefix, key_hash, name, scopes, expires_at)
    values (p->>'key_prefix', p->>'key_hash', p->>'name',
            coalesce(babychain_private.bc_text_array(nullif(p->'scopes', 'null'::jsonb)),
                     '{chains:run,chains:read,runs:cancel}'),
            (p->>'expires_at')::timestamptz)
    returning jsonb_build_object('id', id, 'key_prefix', key_prefix, 'name', name, 'scopes', to_jsonb(scopes))
$$;

-- The one key a reference (id or prefix) names, or null when it names none or several.
create function babychain_private.bc_key_by_reference(p_reference text) returns uuid
language sql stable set search_path = '' as $$
    select case when count(*) = 1 then min(id::text)::uuid end
      from public.api_keys
     where id::text = p_reference or key_prefix = p_reference
$$;

-- {} -> every key, newest first: prefix, name, scopes, state and dates; never a hash.
create function public.bc_list_api_keys(p jsonb) returns jsonb
language sql stable security definer set search_path = '' as $$
    select coalesce(jsonb_agg(jsonb_build_object(
               'id', id, 'key_prefix', key_prefix, 'name', name, 'scopes', to_jsonb(scopes),
               'is_active', is_active, 'expires_at', expires_at, 'last_used_at', last_used_at,
               'created_at', created_at) order by created_at desc, id), '[]'::jsonb)
      from public.api_keys
$$;

-- {key: id or prefix} -> the revoked key's row, or null when the reference names no single active key.
create function public.bc_revoke_api_key(p jsonb) returns jsonb
language sql security definer set search_path = '' as $$
    update public.api_keys
       set is_active = false
     where id = babychain_private.bc_key_by_reference(p->>'key') and is_active
    returning jsonb_build_object('id', id, 'key_prefix', key_prefix, 'name', name, 'scopes', to_jsonb(scopes))
$$;

-- {key: id or prefix, key_prefix, key_hash} -> the new key's row: same name, scopes and expiry; the old key is
-- revoked in the same transaction, so there is never a moment with both or neither. Null when the reference names
-- no single active key.
create function public.bc_rotate_api_key(p jsonb) returns jsonb
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
    insert into public.api_keys (key_prefix, key_hash, name, scopes, expires_at)
    values (p->>'key_prefix', p->>'key_hash', v_old.name, v_old.scopes, v_old.expires_at)
    returning jsonb_build_object('id', id, 'key_prefix', key_prefix, 'name', name, 'scopes', to_jsonb(scopes))
    into v_new;
    return v_new;
end
$$;

revoke execute on function babychain_private.bc_key_by_reference(text) from public, anon, authenticated, service_role;
revoke execute on function public.bc_list_api_keys(jsonb), public.bc_revoke_api_key(jsonb),
    public.bc_rotate_api_key(jsonb) from public, anon, authenticated;
grant execute on function public.bc_list_api_keys(jsonb), public.bc_revoke_api_key(jsonb),
    public.bc_rotate_api_key(jsonb) to service_role;
