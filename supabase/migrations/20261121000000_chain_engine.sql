-- BabyChain engine schema: runs, steps, callback attempts, API keys, provider webhook receipts.
--
-- Every state change is a SQL function taking one jsonb argument and returning jsonb, so the direct Postgres
-- adapter (psycopg, `select bc_x(%s)`) and the Supabase adapter (PostgREST RPC) run the same SQL. Each
-- transition is guarded (`update ... where status = expected ... returning`): a transition that lost a race changes
-- nothing and returns null.
--
-- Two schemas:
--   * public: the tables and the RPC surface, exactly the bc_* functions the store adapters call
--     (shared/babychain/store/base.py and local/queue.py). PostgREST exposes this schema.
--   * babychain_private: internal helpers (bc_run_json, bc_finish_run, ...). PostgREST does not expose it, and no
--     role but the owner may use it or execute what is in it.
-- The RPC functions are `security definer`: they run as their owner (the migration role) and so reach the helpers
-- and the tables without the service role needing any right on either. Every function, RPC or helper, pins
-- `search_path = ''` and names every table and function of ours with its schema (built-ins come from pg_catalog,
-- which is searched first anyway), so no caller-controlled search_path can swap an object under it: what makes
-- `security definer` safe.

-- Roles and privileges first --------------------------------------------------------------------------------------

-- Supabase's client roles. Supabase has them; on plain Postgres (the embedded server used locally and in tests) they
-- are created here, without login, so that the grants below mean the same everywhere. `anon` and `authenticated` are
-- whoever holds the project's publishable (anon) key; `service_role` is the engine's role behind the service role key.
do $$
begin
    if not exists (select from pg_catalog.pg_roles where rolname = 'anon') then
        create role anon nologin noinherit;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'authenticated') then
        create role authenticated nologin noinherit;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'service_role') then
        -- Like Supabase's own service_role it bypasses RLS, when we may grant that (only a superuser may).
        if (select rolsuper from pg_catalog.pg_roles where rolname = current_user) then
            create role service_role nologin noinherit bypassrls;
        else
            create role service_role nologin noinherit;
        end if;
    end if;
end
$$;

-- No function created from here on is executable by PUBLIC, anon or authenticated. PUBLIC's execute right is a
-- global default, so it is revoked globally; Supabase's grants to anon and authenticated are per schema. Done before
-- the first `create function`, in the same transaction, so that no `security definer` function is ever callable by a
-- client role, not even for a moment. service_role gets execute on the RPC surface function by function (at the end
-- of each migration), never on a helper.
alter default privileges revoke execute on functions from public;
alter default privileges in schema public revoke execute on functions from anon, authenticated;

create schema babychain_private;
-- (A new schema grants nothing to PUBLIC; said explicitly for readers and for hosts with other defaults.)
revoke all on schema babychain_private from public, anon, authenticated, service_role;

-- Tables ----------------------------------------------------------------------------------------------------------

create table public.api_keys (
    id           uuid primary key default gen_random_uuid(),
    key_prefix   text not null,
    key_hash     text not null unique,        -- sha256 hex of the whole key; the key itself is never stored
    name         text not null,
    scopes       text[] not null default '{chains:run,chains:read,runs:cancel}',
    is_active    boolean not null default true,
    expires_at   timestamptz,
    last_used_at timestamptz,
    created_at   timestamptz not null default now()
);

create table public.chain_runs (
    id                   uuid primary key,
    owner_id             text not null,       -- 'key:<api_keys.id>' or 'env:<key fingerprint>'
    chain_slug           text not null,
    chain_version        text not null,
    mode                 text not null check (mode in ('local', 'byok', 'babysea')),
    status               text not null default 'queued'
                         check (status in ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    input                jsonb not null,
    metadata             jsonb not null default '{}',
    webhook_url          text,
    idempotency_key      text,
    request_hash         text not null,
    current_step_key     text,
    output               jsonb,
    error_code           text,
    error_message        text,
    deadline_at          timestamptz not null,
    callback_event_id    text not null,
    callback_status      text check (callback_status in ('waiting', 'pending', 'delivering', 'delivered', 'failed')),
    callback_attempts    integer not null default 0,
    callback_next_at     timestamptz,
    callback_claimed_at  timestamptz,
    created_at           timestamptz not null default now(),
    updated_at           timestamptz not null default now(),
    completed_at         timestamptz,
    estimate             jsonb,               -- cost estimate at create time (currency, total, per step)

    -- What bc_finish_run guarantees, checked by the database so that no later function can break it.
    constraint chain_runs_completed_iff_terminal
        check ((completed_at is not null) = (status in ('succeeded', 'failed', 'canceled'))),
    constraint chain_runs_output_iff_succeeded check ((output is not null) = (status = 'succeeded')),
    -- One callback per run with a webhook_url, none without; it waits while the run is active.
    constraint chain_runs_callback_iff_webhook check ((callback_status is not null) = (webhook_url is not null)),
    constraint chain_runs_callback_waits_while_active
        check (callback_status is null or (callback_status = 'waiting') = (status in ('queued', 'running'))),
    -- The sweeper finds due and stuck callbacks by these timestamps.
    constraint chain_runs_pending_callback_is_scheduled
        check (callback_status is distinct from 'pending' or callback_next_at is not null),
    constraint chain_runs_delivering_callback_is_claimed
        check (callback_status is distinct from 'delivering' or callback_claimed_at is not null),
    constraint chain_runs_callback_attempts_not_negative check (callback_attempts >= 0)
);

-- A caller's runs newest first (list endpoint, keyset pagination).
create index chain_runs_owner_created on public.chain_runs (owner_id, created_at desc, id desc);
-- Idempotency lookups, scoped per caller.
create unique index chain_runs_idempotency on public.chain_runs (owner_id, idempotency_key)
    where idempotency_key is not null;
-- Active runs past their deadline (sweeper).
create index chain_runs_active_deadline on public.chain_runs (deadline_at) where status in ('queued', 'running');
-- Callbacks that are due or whose sender died mid-delivery (sweeper).
create index chain_runs_callback_due on public.chain_runs (callback_next_at) where callback_status = 'pending';
create index chain_runs_callback_claimed on public.chain_runs (callback_claimed_at)
    where callback_status = 'delivering';

create table public.chain_steps (
    id                uuid primary key default gen_random_uuid(),
    run_id            uuid not null references public.chain_runs (id) on delete cascade,
    step_index        integer not null,
    step_key          text not null,
    step_kind         text not null check (step_kind in ('image', 'video')),
    model_identifier  text not null,
    depends_on        text[] not null default '{}',
    status            text not null default 'queued'
                      check (status in ('queued', 'running', 'succeeded', 'failed', 'canceled', 'skipped')),
    params            jsonb not null default '{}',   -- caller params as validated
    request_params    jsonb,                         -- what was submitted (params + injected input)
    input_files       jsonb,                         -- durable URLs handed in by the producer step
    output_files      jsonb,                         -- durable URLs of this step's outputs
    provider          text,
    provider_job_id   text,
    provider_metadata jsonb not null default '{}',
    attempt           integer not null default 0,    -- submissions started; one provider submit per attempt
    seq               integer not null default 0,    -- message token: a queue message acts only if it carries the current seq
    next_check_at     timestamptz,                   -- when the step is next due (poll or retry); the sweeper's safety net
    error_code        text,
    error_message     text,
    started_at        timestamptz,
    completed_at      timestamptz,
    created_at        timestamptz not null default now(),
    updated_at        timestamptz not null default now(),
    unique (run_id, step_index),
    unique (run_id, step_key),

    constraint chain_steps_counters_not_negative check (step_index >= 0 and attempt >= 0 and seq >= 0),
    -- A step ran to an end (succeeded, failed, or canceled while running) exactly when it has completed_at; a
    -- skipped step never ran.
    constraint chain_steps_completed_iff_ended
        check ((completed_at is not null) = (status in ('succeeded', 'failed', 'canceled'))),
    -- Running means claimed: bc_claim_step starts an attempt and stamps started_at.
    constraint chain_steps_running_was_claimed
        check (status <> 'running' or (attempt > 0 and started_at is not null)),
    -- Only active steps are due (the sweeper's chain_steps_due index covers exactly those).
    constraint chain_steps_due_only_while_active
        check (next_check_at is null or status in ('queued', 'running')),
    constraint chain_steps_outputs_iff_succeeded check ((output_files is not null) = (status = 'succeeded')),
    -- Provider webhooks find a step by (provider, provider_job_id).
    constraint chain_steps_job_has_provider check (provider_job_id is null or provider is not null)
);

-- Work that is due or overdue (sweeper): queued or running steps by their next check.
create index chain_steps_due on public.chain_steps (next_check_at) where status in ('queued', 'running');
-- Provider webhooks find their step by job id.
create index chain_steps_provider_job on public.chain_steps (provider, provider_job_id)
    where provider_job_id is not null;

create table public.callback_deliveries (
    id              bigint generated always as identity primary key,
    run_id          uuid not null references public.chain_runs (id) on delete cascade,
    event_id        text not null,
    attempt         integer not null,
    outcome         text not null check (outcome in ('delivered', 'failed')),
    status_code     integer,
    error           text,
    response_excerpt text,
    duration_ms     integer,
    created_at      timestamptz not null default now(),
    constraint callback_deliveries_attempt_positive check (attempt > 0)
);
create index callback_deliveries_run on public.callback_deliveries (run_id, attempt);

create table public.provider_webhook_receipts (
    provider    text not null,
    receipt_id  text not null,
    received_at timestamptz not null default now(),
    primary key (provider, receipt_id)
);

-- Private helpers ---------------------------------------------------------------------------------------------------
-- Called only from the RPC functions below (which run as the owner). `set search_path = ''` here too: the linter
-- asks it of every function, and a helper must not depend on its caller's path.

-- A number of seconds from a jsonb argument (`p->>'delay_seconds'`) as an interval; null stays null.
create function babychain_private.bc_seconds(p_seconds text) returns interval
language sql immutable set search_path = '' as $$
    select make_interval(secs => p_seconds::double precision)
$$;

-- Merges the facts a call brings into a step's provider_metadata; a missing or JSON-null patch changes nothing.
create function babychain_private.bc_merge_metadata(p_metadata jsonb, p_patch jsonb) returns jsonb
language sql immutable set search_path = '' as $$
    select p_metadata || coalesce(nullif(p_patch, 'null'::jsonb), '{}'::jsonb)
$$;

-- A JSON array of strings as text[]; null for SQL null or an empty array (callers supply their default).
create function babychain_private.bc_text_array(p_items jsonb) returns text[]
language sql immutable set search_path = '' as $$
    select array_agg(x) from jsonb_array_elements_text(p_items) x
$$;

-- A run with its steps, as every run-returning function answers it.
create function babychain_private.bc_run_json(p_run_id uuid) returns jsonb
language sql stable set search_path = '' as $$
    select to_jsonb(r) || jsonb_build_object('steps', coalesce((
        select jsonb_agg(to_jsonb(s) order by s.step_index) from public.chain_steps s where s.run_id = r.id),
        '[]'::jsonb))
      from public.chain_runs r where r.id = p_run_id
$$;

-- Marks a run terminal: closes its unfinished steps and schedules the one final callback.
create function babychain_private.bc_finish_run(p_run_id uuid, p_status text, p_code text, p_message text,
                                                p_output jsonb)
returns boolean
language plpgsql set search_path = '' as $$
declare
    v_found boolean;
begin
    update public.chain_runs
       set status = p_status,
           error_code = p_code,
           error_message = p_message,
           output = p_output,
           current_step_key = case p_status when 'succeeded' then 'completed' else p_status end,
           completed_at = now(),
           updated_at = now(),
           callback_status = case when webhook_url is null then null else 'pending' end,
           callback_next_at = case when webhook_url is null then null else now() end
     where id = p_run_id and status in ('queued', 'running')
    returning true into v_found;
    if not coalesce(v_found, false) then
        return false;
    end if;
    update public.chain_steps
       set status = case when status = 'running' then 'canceled' else 'skipped' end,
           completed_at = case when status = 'running' then now() else completed_at end,
           next_check_at = null,
           seq = seq + 1,
           updated_at = now()
     where run_id = p_run_id and status in ('queued', 'running');
    return true;
end
$$;

-- API keys ----------------------------------------------------------------------------------------------------------

create function public.bc_create_api_key(p jsonb) returns jsonb
language sql security definer set search_path = '' as $$
    insert into public.api_keys (key_prefix, key_hash, name, scopes)
    values (p->>'key_prefix', p->>'key_hash', p->>'name',
            coalesce(babychain_private.bc_text_array(nullif(p->'scopes', 'null'::jsonb)),
                     '{chains:run,chains:read,runs:cancel}'))
    returning jsonb_build_object('id', id, 'key_prefix', key_prefix, 'name', name, 'scopes', to_jsonb(scopes))
$$;

create function public.bc_authenticate_key(p jsonb) returns jsonb
language sql security definer set search_path = '' as $$
    update public.api_keys
       set last_used_at = now()
     where key_hash = p->>'key_hash' and is_active and (expires_at is null or expires_at > now())
    returning jsonb_build_object('id', id, 'key_prefix', key_prefix, 'name', name, 'scopes', to_jsonb(scopes))
$$;

-- Runs --------------------------------------------------------------------------------------------------------------

-- Creates a run with its steps, or returns the caller's earlier run for the same Idempotency-Key.
-- Returns {run, created: bool}; the caller compares request_hash to detect a conflicting replay.
create function public.bc_create_run(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_id uuid := (p->>'id')::uuid;
    v_existing uuid;
begin
    if p->>'idempotency_key' is not null then
        select id into v_existing from public.chain_runs
         where owner_id = p->>'owner_id' and idempotency_key = p->>'idempotency_key';
        if v_existing is not null then
            return jsonb_build_object('run', babychain_private.bc_run_json(v_existing), 'created', false);
        end if;
    end if;
    begin
        insert into public.chain_runs (id, owner_id, chain_slug, chain_version, mode, input, metadata, webhook_url,
                                       idempotency_key, request_hash, current_step_key, deadline_at,
                                       callback_event_id, callback_status, estimate)
        values (v_id, p->>'owner_id', p->>'chain_slug', p->>'chain_version', p->>'mode', p->'input',
                coalesce(nullif(p->'metadata', 'null'::jsonb), '{}'::jsonb), p->>'webhook_url',
                p->>'idempotency_key', p->>'request_hash', 'processing',
                now() + babychain_private.bc_seconds(p->>'run_timeout_seconds'),
                p->>'callback_event_id', case when p->>'webhook_url' is null then null else 'waiting' end,
                nullif(p->'estimate', 'null'::jsonb));
    exception when unique_violation then
        -- A concurrent request with the same key won the race: hand back its run.
        select id into v_existing from public.chain_runs
         where owner_id = p->>'owner_id' and idempotency_key = p->>'idempotency_key';
        return jsonb_build_object('run', babychain_private.bc_run_json(v_existing), 'created', false);
    end;
    insert into public.chain_steps (run_id, step_index, step_key, step_kind, model_identifier, depends_on, params,
                                    next_check_at)
    select v_id, (s->>'step_index')::int, s->>'step_key', s->>'step_kind', s->>'model_identifier',
           coalesce(babychain_private.bc_text_array(s->'depends_on'), '{}'),
           coalesce(s->'params', '{}'::jsonb),
           -- The first step is due now; later steps become due when their producer succeeds.
           case when (s->>'step_index')::int = 0 then now() else null end
      from jsonb_array_elements(p->'steps') s;
    return jsonb_build_object('run', babychain_private.bc_run_json(v_id), 'created', true);
end
$$;

create function public.bc_get_run(p jsonb) returns jsonb
language sql stable security definer set search_path = '' as $$
    select babychain_private.bc_run_json(r.id) from public.chain_runs r
     where r.id = (p->>'run_id')::uuid and (p->>'owner_id' is null or r.owner_id = p->>'owner_id')
$$;

-- A caller's runs, newest first. Cursor = the last row's (created_at, id).
create function public.bc_list_runs(p jsonb) returns jsonb
language sql stable security definer set search_path = '' as $$
    select coalesce(jsonb_agg(babychain_private.bc_run_json(page.id) order by page.created_at desc, page.id desc),
                    '[]'::jsonb)
      from (
        select r.id, r.created_at from public.chain_runs r
         where r.owner_id = p->>'owner_id'
           and (p->>'status' is null or r.status = p->>'status')
           and (p->>'chain_slug' is null or r.chain_slug = p->>'chain_slug')
           and (p->>'cursor_created_at' is null
                or (r.created_at, r.id) < ((p->>'cursor_created_at')::timestamptz, (p->>'cursor_id')::uuid))
         order by r.created_at desc, r.id desc
         limit (p->>'limit')::int
      ) page
$$;

-- Cancel wins over everything still in flight. Returns {run, canceled: bool, steps: [steps that were running]}.
create function public.bc_cancel_run(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_run_id uuid := (p->>'run_id')::uuid;
    v_running jsonb;
    v_canceled boolean;
begin
    select coalesce(jsonb_agg(to_jsonb(s)), '[]'::jsonb) into v_running
      from public.chain_steps s where s.run_id = v_run_id and s.status = 'running';
    v_canceled := babychain_private.bc_finish_run(v_run_id, 'canceled', 'client_canceled', 'Chain run was canceled.',
                                                  null);
    return jsonb_build_object('run', babychain_private.bc_run_json(v_run_id), 'canceled', v_canceled,
                              'steps', case when v_canceled then v_running else '[]'::jsonb end);
end
$$;

-- Steps -------------------------------------------------------------------------------------------------------------

-- Claims a queued step for one submission attempt. Acts only for the current seq, an active run and satisfied
-- dependencies. Returns the claimed step, or null when the message is stale or the run moved on.
create function public.bc_claim_step(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_step public.chain_steps;
begin
    update public.chain_steps s
       set status = 'running',
           attempt = s.attempt + 1,
           seq = s.seq + 1,
           request_params = p->'request_params',
           input_files = coalesce(nullif(p->'input_files', 'null'::jsonb), s.input_files),
           provider = p->>'provider',
           provider_job_id = null,
           next_check_at = now() + babychain_private.bc_seconds(p->>'submit_timeout_seconds'),
           started_at = coalesce(s.started_at, now()),
           error_code = null,
           error_message = null,
           updated_at = now()
     where s.id = (p->>'step_id')::uuid
       and s.status = 'queued'
       and s.seq = (p->>'seq')::int
       and exists (select from public.chain_runs r where r.id = s.run_id and r.status in ('queued', 'running'))
       and not exists (select from public.chain_steps d
                        where d.run_id = s.run_id and d.step_key = any (s.depends_on) and d.status <> 'succeeded')
    returning s.* into v_step;
    if v_step.id is null then
        return null;
    end if;
    update public.chain_runs
       set status = 'running', current_step_key = v_step.step_key, updated_at = now()
     where id = v_step.run_id and status in ('queued', 'running');
    return to_jsonb(v_step);
end
$$;

-- Records the provider's job id for the claimed attempt and schedules the first check. Null when the attempt lost
-- (the run was canceled or timed out meanwhile): the caller then cancels the provider job.
create function public.bc_record_submission(p jsonb) returns jsonb
language sql security definer set search_path = '' as $$
    update public.chain_steps s
       set provider_job_id = p->>'provider_job_id',
           provider_metadata = babychain_private.bc_merge_metadata(s.provider_metadata, p->'provider_metadata'),
           seq = s.seq + 1,
           next_check_at = now() + babychain_private.bc_seconds(p->>'delay_seconds'),
           updated_at = now()
     where s.id = (p->>'step_id')::uuid and s.status = 'running' and s.attempt = (p->>'attempt')::int
    returning to_jsonb(s.*)
$$;

-- The provider is still working: schedule the next check. Only the holder of the current seq may do this, so a
-- duplicate poll message cannot fork a second polling chain.
create function public.bc_defer_step(p jsonb) returns jsonb
language sql security definer set search_path = '' as $$
    update public.chain_steps s
       set seq = s.seq + 1,
           provider_metadata = babychain_private.bc_merge_metadata(s.provider_metadata, p->'provider_metadata'),
           next_check_at = now() + babychain_private.bc_seconds(p->>'delay_seconds'),
           updated_at = now()
     where s.id = (p->>'step_id')::uuid and s.status = 'running' and s.seq = (p->>'seq')::int
    returning to_jsonb(s.*)
$$;

-- A transient submit failure: give the attempt back and make the step due again after a backoff.
create function public.bc_retry_step(p jsonb) returns jsonb
language sql security definer set search_path = '' as $$
    update public.chain_steps s
       set status = 'queued',
           seq = s.seq + 1,
           provider_job_id = null,
           provider_metadata = babychain_private.bc_merge_metadata(s.provider_metadata, p->'provider_metadata'),
           error_code = p->>'error_code',
           error_message = p->>'error_message',
           next_check_at = now() + babychain_private.bc_seconds(p->>'delay_seconds'),
           updated_at = now()
     where s.id = (p->>'step_id')::uuid and s.status = 'running' and s.attempt = (p->>'attempt')::int
    returning to_jsonb(s.*)
$$;

-- The step's outputs are stored durably: mark it succeeded, hand its outputs to the dependent step, or finish the
-- run when it was the last one. Returns {run_status, next_step} or null when the attempt no longer counts.
create function public.bc_complete_step(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_step public.chain_steps;
    v_next public.chain_steps;
    v_remaining int;
begin
    update public.chain_steps s
       set status = 'succeeded',
           output_files = p->'output_files',
           provider_metadata = babychain_private.bc_merge_metadata(s.provider_metadata, p->'provider_metadata'),
           seq = s.seq + 1,
           next_check_at = null,
           error_code = null,
           error_message = null,
           completed_at = now(),
           updated_at = now()
     where s.id = (p->>'step_id')::uuid and s.status = 'running' and s.attempt = (p->>'attempt')::int
       and exists (select from public.chain_runs r where r.id = s.run_id and r.status = 'running')
    returning s.* into v_step;
    if v_step.id is null then
        return null;
    end if;

    update public.chain_steps n
       set input_files = p->'output_files', next_check_at = now(), updated_at = now()
     where n.run_id = v_step.run_id and n.status = 'queued' and v_step.step_key = any (n.depends_on)
    returning n.* into v_next;

    select count(*) into v_remaining from public.chain_steps
     where run_id = v_step.run_id and status <> 'succeeded';
    if v_remaining = 0 then
        perform babychain_private.bc_finish_run(v_step.run_id, 'succeeded', null, null,
                                                jsonb_build_object('final_step_key', v_step.step_key,
                                                                   'output_files', p->'output_files'));
        return jsonb_build_object('run_status', 'succeeded', 'next_step', null);
    end if;
    if v_next.id is not null then
        update public.chain_runs set current_step_key = v_next.step_key, updated_at = now()
         where id = v_step.run_id;
    end if;
    return jsonb_build_object('run_status', 'running',
                              'next_step', case when v_next.id is null then null else to_jsonb(v_next) end);
end
$$;

-- A step failed for good: the run fails, later steps are skipped, the callback is scheduled.
-- Guarded by seq (the message that decided) or attempt (the submitter that decided).
create function public.bc_fail_step(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_step public.chain_steps;
begin
    update public.chain_steps s
       set status = 'failed',
           error_code = p->>'error_code',
           error_message = p->>'error_message',
           provider_metadata = babychain_private.bc_merge_metadata(s.provider_metadata, p->'provider_metadata'),
           seq = s.seq + 1,
           next_check_at = null,
           completed_at = now(),
           updated_at = now()
     where s.id = (p->>'step_id')::uuid
       and s.status in ('queued', 'running')
       and (p->>'attempt' is null or s.attempt = (p->>'attempt')::int)
       and (p->>'seq' is null or s.seq = (p->>'seq')::int)
       and exists (select from public.chain_runs r where r.id = s.run_id and r.status in ('queued', 'running'))
    returning s.* into v_step;
    if v_step.id is null then
        return null;
    end if;
    perform babychain_private.bc_finish_run(v_step.run_id, 'failed', p->>'error_code', p->>'error_message', null);
    return jsonb_build_object('run_status', 'failed', 'step', to_jsonb(v_step));
end
$$;

-- Callbacks ---------------------------------------------------------------------------------------------------------

-- Claims the run's callback for one delivery attempt: due and pending, or stuck in 'delivering' because a sender
-- died. Returns {run, attempt} or null.
create function public.bc_claim_callback(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_run public.chain_runs;
begin
    update public.chain_runs
       set callback_status = 'delivering',
           callback_attempts = callback_attempts + 1,
           callback_claimed_at = now(),
           updated_at = now()
     where id = (p->>'run_id')::uuid
       and ((callback_status = 'pending' and callback_next_at <= now())
            or (callback_status = 'delivering'
                and callback_claimed_at < now() - babychain_private.bc_seconds(p->>'stale_seconds')))
    returning * into v_run;
    if v_run.id is null then
        return null;
    end if;
    return jsonb_build_object('run', babychain_private.bc_run_json(v_run.id), 'attempt', v_run.callback_attempts);
end
$$;

-- Records one delivery attempt and decides what comes next: delivered, retry at next_at, or failed for good.
create function public.bc_record_callback_attempt(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_status text;
    v_found boolean;
begin
    v_status := case
        when p->>'outcome' = 'delivered' then 'delivered'
        when p->>'retry_in_seconds' is null then 'failed'
        else 'pending' end;
    update public.chain_runs
       set callback_status = v_status,
           callback_claimed_at = null,
           callback_next_at = case when v_status = 'pending'
                                   then now() + babychain_private.bc_seconds(p->>'retry_in_seconds')
                                   else null end,
           updated_at = now()
     where id = (p->>'run_id')::uuid and callback_status = 'delivering'
       and callback_attempts = (p->>'attempt')::int
    returning true into v_found;
    insert into public.callback_deliveries (run_id, event_id, attempt, outcome, status_code, error,
                                            response_excerpt, duration_ms)
    values ((p->>'run_id')::uuid, p->>'event_id', (p->>'attempt')::int, p->>'outcome',
            (p->>'status_code')::int, p->>'error', p->>'response_excerpt', (p->>'duration_ms')::int);
    return jsonb_build_object('callback_status', case when coalesce(v_found, false) then v_status end);
end
$$;

create function public.bc_list_callback_deliveries(p jsonb) returns jsonb
language sql stable security definer set search_path = '' as $$
    select coalesce(jsonb_agg(to_jsonb(d) order by d.attempt), '[]'::jsonb)
      from public.callback_deliveries d where d.run_id = (p->>'run_id')::uuid
$$;

-- Sweeper -----------------------------------------------------------------------------------------------------------

-- The safety net, run on a schedule: fails runs past their deadline and steps past their running budget, and
-- returns the work whose message may have been lost so the caller can enqueue it again.
create function public.bc_sweep(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_grace interval := babychain_private.bc_seconds(p->>'grace_seconds');
    v_limit int := (p->>'limit')::int;
    v_timed_out_runs jsonb;
    v_timed_out_steps jsonb;
    v_requeued jsonb;
    v_steps jsonb;
    v_callbacks jsonb;
    v_row record;
begin
    -- Whole-run deadline.
    select coalesce(jsonb_agg(x.id), '[]'::jsonb) into v_timed_out_runs from (
        select id from public.chain_runs where status in ('queued', 'running') and deadline_at < now()
         order by deadline_at limit v_limit) x;
    for v_row in select value::uuid as id from jsonb_array_elements_text(v_timed_out_runs) loop
        update public.chain_steps set status = 'failed', error_code = 'run_timed_out',
               error_message = 'The run did not finish before its deadline.', completed_at = now(),
               updated_at = now(), seq = seq + 1, next_check_at = null
         where run_id = v_row.id and status = 'running';
        perform babychain_private.bc_finish_run(v_row.id, 'failed', 'run_timed_out',
                                                'The run did not finish before its deadline.', null);
    end loop;

    -- Running steps past their budget.
    select coalesce(jsonb_agg(jsonb_build_object(
               'id', x.id, 'provider', x.provider, 'model_identifier', x.model_identifier,
               'provider_job_id', x.provider_job_id, 'provider_metadata', x.provider_metadata)), '[]'::jsonb)
      into v_timed_out_steps from (
        select s.id, s.provider, s.model_identifier, s.provider_job_id, s.provider_metadata from public.chain_steps s
         where s.status = 'running'
           and s.started_at < now() - babychain_private.bc_seconds(case s.step_kind
                   when 'video' then p->>'video_step_timeout_seconds'
                   else p->>'image_step_timeout_seconds' end)
         limit v_limit) x;
    for v_row in select (value->>'id')::uuid as id from jsonb_array_elements(v_timed_out_steps) loop
        perform public.bc_fail_step(jsonb_build_object(
            'step_id', v_row.id, 'error_code', 'step_running_timed_out',
            'error_message', 'The generation did not reach a terminal state before the step deadline.'));
    end loop;

    -- A claimed step whose submitter died before recording a job id: give the attempt back.
    with lost as (
        update public.chain_steps s set status = 'queued', seq = seq + 1, next_check_at = now(), updated_at = now()
         where s.id in (select id from public.chain_steps
                         where status = 'running' and provider_job_id is null and next_check_at < now() - v_grace
                         limit v_limit)
        returning jsonb_build_object('run_id', s.run_id, 'step_id', s.id, 'seq', s.seq) as item)
    select coalesce(jsonb_agg(item), '[]'::jsonb) into v_requeued from lost;

    -- Due steps whose message is overdue: re-drive them with their current seq.
    select coalesce(jsonb_agg(jsonb_build_object('run_id', x.run_id, 'step_id', x.id, 'seq', x.seq)), '[]'::jsonb)
      into v_steps from (
        select s.run_id, s.id, s.seq from public.chain_steps s join public.chain_runs r on r.id = s.run_id
         where s.status in ('queued', 'running') and s.next_check_at < now() - v_grace
           and r.status in ('queued', 'running')
         order by s.next_check_at limit v_limit) x;

    -- Callbacks that are due (SQS delays stop at 15 minutes, so long waits land here) or stuck mid-delivery.
    select coalesce(jsonb_agg(x.id), '[]'::jsonb) into v_callbacks from (
        select id from public.chain_runs where callback_status = 'pending' and callback_next_at <= now()
        union
        select id from public.chain_runs where callback_status = 'delivering'
           and callback_claimed_at < now() - babychain_private.bc_seconds(p->>'callback_stale_seconds')
        limit v_limit) x;

    return jsonb_build_object('timed_out_runs', v_timed_out_runs, 'timed_out_steps', v_timed_out_steps,
                              'requeued_steps', v_requeued, 'due_steps', v_steps, 'due_callbacks', v_callbacks);
end
$$;

-- Provider webhooks -------------------------------------------------------------------------------------------------

-- Records a provider webhook delivery once; returns {first: bool}.
create function public.bc_record_webhook_receipt(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_inserted boolean;
begin
    insert into public.provider_webhook_receipts (provider, receipt_id) values (p->>'provider', p->>'receipt_id')
    on conflict do nothing
    returning true into v_inserted;
    return jsonb_build_object('first', coalesce(v_inserted, false));
end
$$;

-- Adds facts to a step whatever its status (e.g. "the provider could not cancel this running task").
create function public.bc_note_step(p jsonb) returns jsonb
language sql security definer set search_path = '' as $$
    update public.chain_steps s
       set provider_metadata = babychain_private.bc_merge_metadata(s.provider_metadata, p->'provider_metadata'),
           updated_at = now()
     where s.id = (p->>'step_id')::uuid
    returning to_jsonb(s.*)
$$;

create function public.bc_get_step(p jsonb) returns jsonb
language sql stable security definer set search_path = '' as $$
    select to_jsonb(s) from public.chain_steps s where s.id = (p->>'step_id')::uuid
$$;

create function public.bc_find_step_by_job(p jsonb) returns jsonb
language sql stable security definer set search_path = '' as $$
    select to_jsonb(s) from public.chain_steps s
     where s.provider = p->>'provider' and s.provider_job_id = p->>'provider_job_id'
     limit 1
$$;

create function public.bc_health(p jsonb) returns jsonb
language sql stable security definer set search_path = '' as $$
    select jsonb_build_object('database', 'ok')
$$;

-- The RPC surface -----------------------------------------------------------------------------------------------------

-- Only the engine's role may call it; anon and authenticated never could (see the default privileges above).
grant execute on function
    public.bc_create_api_key(jsonb), public.bc_authenticate_key(jsonb),
    public.bc_create_run(jsonb), public.bc_get_run(jsonb), public.bc_list_runs(jsonb), public.bc_cancel_run(jsonb),
    public.bc_claim_step(jsonb), public.bc_record_submission(jsonb), public.bc_defer_step(jsonb),
    public.bc_retry_step(jsonb), public.bc_complete_step(jsonb), public.bc_fail_step(jsonb),
    public.bc_claim_callback(jsonb), public.bc_record_callback_attempt(jsonb),
    public.bc_list_callback_deliveries(jsonb), public.bc_sweep(jsonb), public.bc_record_webhook_receipt(jsonb),
    public.bc_note_step(jsonb), public.bc_get_step(jsonb), public.bc_find_step_by_job(jsonb), public.bc_health(jsonb)
to service_role;

-- The helpers: their owner (who runs the RPC functions above) and nobody else. The schema is closed already; this
-- also holds if someone grants usage on it or exposes it to PostgREST by mistake.
revoke execute on all functions in schema babychain_private from public, anon, authenticated, service_role;
