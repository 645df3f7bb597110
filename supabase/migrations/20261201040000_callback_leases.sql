-- Callback attempts as leases: an attempt in flight is never claimed twice, an abandoned one is recorded and counts
-- toward the schedule, a 2xx is never thrown away, and one receiver origin holds at most a few senders at a time.

alter table public.callback_deliveries drop constraint callback_deliveries_outcome_check;
alter table public.callback_deliveries
    add constraint callback_deliveries_outcome_check check (outcome in ('delivered', 'failed', 'abandoned'));

-- Who holds the current attempt (a process identity), so a supervisor that saw it die can end its lease at once.
alter table public.chain_runs add column callback_claimed_by text;

-- scheme://host[:port] of a URL, lower-cased: the unit of the per-receiver limit.
create function babychain_private.bc_origin(p_url text) returns text
language sql immutable set search_path = '' as $$
    select lower(substring(p_url from '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*'))
$$;

-- Attempts in flight per receiver origin.
create index chain_runs_callback_origin on public.chain_runs (babychain_private.bc_origin(webhook_url))
    where callback_status = 'delivering';

-- Gives up an attempt whose sender died before it recorded anything: a row says so, and the callback is due again
-- at once, or failed when that was the schedule's last attempt. Returns the new callback status.
create function babychain_private.bc_abandon_callback_attempt(p_run public.chain_runs, p_max_attempts int)
returns text
language plpgsql set search_path = '' as $$
declare
    v_status text := case when p_run.callback_attempts >= p_max_attempts then 'failed' else 'pending' end;
begin
    insert into public.callback_deliveries (run_id, event_id, attempt, outcome, error, duration_ms)
    values (p_run.id, p_run.callback_event_id, p_run.callback_attempts, 'abandoned',
            'The sender stopped before it recorded this attempt (it crashed or ran out of time).',
            (extract(epoch from now() - p_run.callback_claimed_at) * 1000)::int);
    update public.chain_runs
       set callback_status = v_status,
           callback_next_at = case when v_status = 'pending' then now() end,
           callback_claimed_at = null,
           callback_claimed_by = null,
           updated_at = now()
     where id = p_run.id;
    return v_status;
end
$$;

-- Claims the run's callback for one attempt. Answers:
--   {run, attempt}                 claimed; deliver now
--   {busy: 'attempt', retry_in}    an attempt is in flight and its lease has not ended: try again then
--   {busy: 'origin'}               the receiver's origin has `origin_limit` attempts in flight: the callback is
--                                  due again in `defer_seconds` (so the sweeper leaves it alone until then)
--   null                           nothing to deliver (not due, already settled, or the schedule is spent)
-- A lease (`stale_seconds`) outlasts the longest an attempt can run, so an attempt still in flight can never be
-- claimed again; one past its lease was abandoned (its sender died): it gets a row, and it counts toward the
-- `max_attempts` of the schedule.
drop function public.bc_claim_callback(jsonb);
create function public.bc_claim_callback(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_run public.chain_runs;
    v_lease interval := babychain_private.bc_seconds(p->>'stale_seconds');
    v_origin_limit int := coalesce((p->>'origin_limit')::int, 0);
    v_origin text;
    v_in_flight int;
begin
    select * into v_run from public.chain_runs where id = (p->>'run_id')::uuid for update;
    if v_run.id is null then
        return null;
    end if;
    if v_run.callback_status = 'delivering' then
        if v_run.callback_claimed_at >= now() - v_lease then
            return jsonb_build_object('busy', 'attempt', 'retry_in',
                extract(epoch from v_run.callback_claimed_at + v_lease - now()));
        end if;
        if babychain_private.bc_abandon_callback_attempt(v_run, (p->>'max_attempts')::int) = 'failed' then
            return null;
        end if;
    elsif v_run.callback_status is distinct from 'pending' or v_run.callback_next_at > now() then
        return null;
    end if;
    if v_origin_limit > 0 then
        v_origin := babychain_private.bc_origin(v_run.webhook_url);
        -- Claims for one origin take turns, so two cannot both see room for one more.
        perform pg_advisory_xact_lock(7273, hashtext(v_origin));
        select count(*) into v_in_flight from public.chain_runs
         where callback_status = 'delivering' and id <> v_run.id
           and babychain_private.bc_origin(webhook_url) = v_origin and callback_claimed_at >= now() - v_lease;
        if v_in_flight >= v_origin_limit then
            update public.chain_runs
               set callback_next_at = now() + babychain_private.bc_seconds(p->>'defer_seconds'), updated_at = now()
             where id = v_run.id;
            return jsonb_build_object('busy', 'origin');
        end if;
    end if;
    update public.chain_runs
       set callback_status = 'delivering',
           callback_attempts = callback_attempts + 1,
           callback_claimed_at = now(),
           callback_claimed_by = p->>'holder',
           updated_at = now()
     where id = v_run.id
    returning * into v_run;
    return jsonb_build_object('run', babychain_private.bc_run_json(v_run.id), 'attempt', v_run.callback_attempts);
end
$$;

-- Records one delivery attempt and decides what comes next. A 2xx settles the callback even when it answers an
-- attempt that was superseded (the event reached the receiver: sending it again would be a duplicate); any other
-- result counts only for the attempt that holds the claim.
create or replace function public.bc_record_callback_attempt(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_status text;
    v_found boolean;
begin
    v_status := case
        when p->>'outcome' = 'delivered' then 'delivered'
        when p->>'retry_in_seconds' is null then 'failed'
        else 'pending' end;
    if v_status = 'delivered' then
        update public.chain_runs
           set callback_status = 'delivered', callback_claimed_at = null, callback_claimed_by = null,
               callback_next_at = null, updated_at = now()
         where id = (p->>'run_id')::uuid and callback_status in ('pending', 'delivering', 'failed')
        returning true into v_found;
    else
        update public.chain_runs
           set callback_status = v_status,
               callback_claimed_at = null,
               callback_claimed_by = null,
               callback_next_at = case when v_status = 'pending'
                                       then now() + babychain_private.bc_seconds(p->>'retry_in_seconds')
                                       else null end,
               updated_at = now()
         where id = (p->>'run_id')::uuid and callback_status = 'delivering'
           and callback_attempts = (p->>'attempt')::int
        returning true into v_found;
    end if;
    insert into public.callback_deliveries (run_id, event_id, attempt, outcome, status_code, error,
                                            response_excerpt, duration_ms)
    values ((p->>'run_id')::uuid, p->>'event_id', (p->>'attempt')::int, p->>'outcome',
            (p->>'status_code')::int, p->>'error', p->>'response_excerpt', (p->>'duration_ms')::int);
    return jsonb_build_object('callback_status', case when coalesce(v_found, false) then v_status end);
end
$$;

-- Abandons the attempts held by processes known to be dead, so they are recorded and delivered again at once
-- instead of when their lease runs out. A holder is `<host>/<pid>`; the caller (a supervisor on `host`) lists the
-- processes alive there. Returns the run ids now due.
create function public.bc_end_callback_leases(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_run public.chain_runs;
    v_live text[] := array(select jsonb_array_elements_text(p->'live_pids'));
    v_due jsonb := '[]'::jsonb;
begin
    for v_run in
        select * from public.chain_runs
         where callback_status = 'delivering'
           and split_part(callback_claimed_by, '/', 1) = p->>'host'
           and split_part(callback_claimed_by, '/', 2) <> all(v_live)
           for update skip locked
    loop
        if babychain_private.bc_abandon_callback_attempt(v_run, (p->>'max_attempts')::int) = 'pending' then
            v_due := v_due || to_jsonb(v_run.id);
        end if;
    end loop;
    return v_due;
end
$$;

revoke execute on function babychain_private.bc_origin(text),
    babychain_private.bc_abandon_callback_attempt(public.chain_runs, int)
    from public, anon, authenticated, service_role;
revoke execute on function public.bc_claim_callback(jsonb), public.bc_record_callback_attempt(jsonb),
    public.bc_end_callback_leases(jsonb) from public, anon, authenticated;
grant execute on function public.bc_claim_callback(jsonb), public.bc_record_callback_attempt(jsonb),
    public.bc_end_callback_leases(jsonb) to service_role;
