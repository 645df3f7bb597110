-- Fewer statements per step transition, and step updates that can be HOT.
--
-- Statements: a step message is one `bc_take_step` (claim the queued step, or read the running one for a check)
-- instead of a full run read followed by a claim; a synchronous provider result is recorded and completed in one
-- `bc_complete_step`, which may also claim the next step so the executor submits it without another message. The
-- route and request params are recorded with the submission (the executor computes them after the claim).
--
-- HOT: an update can stay on its page without touching an index only if it changes no indexed column, partial-index
-- predicates included. Every step transition changes status, seq and next_check_at, and the submission sets the job
-- id, so chain_steps keeps only indexes on columns that never change after insert:
--   * the sweeper finds active steps through the active runs (chain_runs_active_deadline) and their steps'
--     (run_id, step_index) index: as cheap as before, in proportion to the work in flight, not to history;
--   * provider webhooks find a step by job id in chain_step_jobs, one insert per asynchronous submission;
--   * unique (run_id, step_key) duplicated unique (run_id, step_index): the catalog gives each step its own key.
-- A fillfactor leaves room on each page for the new row versions.

alter table public.chain_steps drop constraint chain_steps_run_id_step_key_key;
drop index public.chain_steps_due;
drop index public.chain_steps_provider_job;
alter table public.chain_steps set (fillfactor = 70);

-- A job id a provider gave a step's submission, for webhooks that name only the job. Written once per submission
-- that did not finish at once; goes with its step.
create table public.chain_step_jobs (
    provider         text not null,
    provider_job_id  text not null,
    step_id          uuid not null references public.chain_steps (id) on delete cascade,
    primary key (provider, provider_job_id)
);
create index chain_step_jobs_step on public.chain_step_jobs (step_id);  -- the cascade from a purged step

insert into public.chain_step_jobs (provider, provider_job_id, step_id)
select provider, provider_job_id, id from public.chain_steps where provider_job_id is not null
on conflict do nothing;

alter table public.chain_step_jobs enable row level security;
revoke all on table public.chain_step_jobs from anon, authenticated;
grant select, insert, update, delete on table public.chain_step_jobs to service_role;

-- The run fields a step message needs besides the step.
create function babychain_private.bc_step_run_json(p_run_id uuid) returns jsonb
language sql stable set search_path = '' as $$
    select jsonb_build_object('id', r.id, 'mode', r.mode, 'status', r.status, 'webhook_url', r.webhook_url)
      from public.chain_runs r where r.id = p_run_id
$$;

-- Claims a queued step (guards as bc_claim_step: the current seq, an active run, its producers done), or, when the
-- step is running with a submitted job and the message carries its current seq, returns it to be checked.
-- Returns {action: 'claimed' | 'check', step, run} or null when the message is stale.
create function public.bc_take_step(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_step public.chain_steps;
begin
    update public.chain_steps s
       set status = 'running',
           attempt = s.attempt + 1,
           seq = s.seq + 1,
           provider_job_id = null,
           next_check_at = now() + babychain_private.bc_seconds(p->>'submit_timeout_seconds'),
           started_at = coalesce(s.started_at, now()),
           error_code = null,
           error_message = null,
           updated_at = now()
     where s.id = (p->>'step_id')::uuid and s.run_id = (p->>'run_id')::uuid
       and s.status = 'queued'
       and s.seq = (p->>'seq')::int
       and exists (select from public.chain_runs r where r.id = s.run_id and r.status in ('queued', 'running'))
       and not exists (select from public.chain_steps d
                        where d.run_id = s.run_id and d.step_key = any (s.depends_on) and d.status <> 'succeeded')
    returning s.* into v_step;
    if v_step.id is not null then
        -- Skipped when nothing changes (the producer's completion already named this step): a row version saved.
        update public.chain_runs
           set status = 'running', current_step_key = v_step.step_key, updated_at = now()
         where id = v_step.run_id and status in ('queued', 'running')
           and (status <> 'running' or current_step_key is distinct from v_step.step_key);
        return jsonb_build_object('action', 'claimed', 'step', to_jsonb(v_step),
                                  'run', babychain_private.bc_step_run_json(v_step.run_id));
    end if;
    select s.* into v_step from public.chain_steps s
     where s.id = (p->>'step_id')::uuid and s.run_id = (p->>'run_id')::uuid
       and s.status = 'running' and s.seq = (p->>'seq')::int and s.provider_job_id is not null
       and exists (select from public.chain_runs r where r.id = s.run_id and r.status in ('queued', 'running'));
    if v_step.id is null then
        return null;
    end if;
    return jsonb_build_object('action', 'check', 'step', to_jsonb(v_step),
                              'run', babychain_private.bc_step_run_json(v_step.run_id));
end
$$;

-- Records the provider's job id for the claimed attempt (with the route and params it was submitted with) and
-- schedules the first check. Null when the attempt lost (canceled or timed out meanwhile).
create or replace function public.bc_record_submission(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_step public.chain_steps;
begin
    update public.chain_steps s
       set provider_job_id = p->>'provider_job_id',
           provider = coalesce(p->>'provider', s.provider),
           request_params = coalesce(nullif(p->'request_params', 'null'::jsonb), s.request_params),
           input_files = coalesce(nullif(p->'input_files', 'null'::jsonb), s.input_files),
           provider_metadata = babychain_private.bc_merge_metadata(s.provider_metadata, p->'provider_metadata'),
           seq = s.seq + 1,
           next_check_at = now() + babychain_private.bc_seconds(p->>'delay_seconds'),
           updated_at = now()
     where s.id = (p->>'step_id')::uuid and s.status = 'running' and s.attempt = (p->>'attempt')::int
    returning s.* into v_step;
    if v_step.id is null then
        return null;
    end if;
    insert into public.chain_step_jobs (provider, provider_job_id, step_id)
    values (v_step.provider, v_step.provider_job_id, v_step.id)
    on conflict (provider, provider_job_id) do update set step_id = excluded.step_id;
    return to_jsonb(v_step);
end
$$;

-- The step's outputs are stored durably: mark it succeeded, hand its outputs to the dependent step, or finish the
-- run when it was the last one. Optional in the same call:
--   * `provider`, `provider_job_id`, `request_params`, `input_files`: the submission, when the provider answered
--     with the result itself (nothing was recorded between the claim and now; the attempt guard still decides);
--   * `claim_next` {submit_timeout_seconds}: claim the dependent step too (as bc_take_step would) so the caller
--     submits it at once.
-- Returns {run_status, next_step, next_claimed} or null when the attempt no longer counts.
create or replace function public.bc_complete_step(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_step public.chain_steps;
    v_next public.chain_steps;
    v_claim boolean := p->'claim_next' is not null and p->'claim_next' <> 'null'::jsonb;
    v_remaining int;
begin
    update public.chain_steps s
       set status = 'succeeded',
           output_files = p->'output_files',
           provider = coalesce(p->>'provider', s.provider),
           provider_job_id = coalesce(p->>'provider_job_id', s.provider_job_id),
           request_params = coalesce(nullif(p->'request_params', 'null'::jsonb), s.request_params),
           input_files = coalesce(nullif(p->'input_files', 'null'::jsonb), s.input_files),
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

    select count(*) into v_remaining from public.chain_steps
     where run_id = v_step.run_id and status <> 'succeeded';
    if v_remaining = 0 then
        perform babychain_private.bc_finish_run(v_step.run_id, 'succeeded', null, null,
                                                jsonb_build_object('final_step_key', v_step.step_key,
                                                                   'output_files', p->'output_files'));
        return jsonb_build_object('run_status', 'succeeded', 'next_step', null, 'next_claimed', false);
    end if;

    -- The dependent step gets the outputs, and is claimed when asked and every producer of it is done: one update.
    update public.chain_steps n
       set input_files = p->'output_files',
           status = case when v_claim then 'running' else n.status end,
           attempt = case when v_claim then n.attempt + 1 else n.attempt end,
           seq = case when v_claim then n.seq + 1 else n.seq end,
           started_at = case when v_claim then coalesce(n.started_at, now()) else n.started_at end,
           next_check_at = case when v_claim
                                then now() + babychain_private.bc_seconds(p->'claim_next'->>'submit_timeout_seconds')
                                else now() end,
           updated_at = now()
     where n.run_id = v_step.run_id and n.status = 'queued' and v_step.step_key = any (n.depends_on)
       and (not v_claim or not exists (select from public.chain_steps d
                                        where d.run_id = n.run_id and d.step_key = any (n.depends_on)
                                          and d.status <> 'succeeded'))
    returning n.* into v_next;
    if v_next.id is null and v_claim then
        -- Another producer of it is still running: hand over the outputs only; its completion claims it.
        update public.chain_steps n
           set input_files = p->'output_files', next_check_at = now(), updated_at = now()
         where n.run_id = v_step.run_id and n.status = 'queued' and v_step.step_key = any (n.depends_on)
        returning n.* into v_next;
        v_claim := false;
    end if;
    if v_next.id is not null then
        update public.chain_runs set current_step_key = v_next.step_key, updated_at = now()
         where id = v_step.run_id;
    end if;
    return jsonb_build_object('run_status', 'running',
                              'next_step', case when v_next.id is null then null else to_jsonb(v_next) end,
                              'next_claimed', v_claim and v_next.id is not null);
end
$$;

create or replace function public.bc_find_step_by_job(p jsonb) returns jsonb
language sql stable security definer set search_path = '' as $$
    select to_jsonb(s) from public.chain_step_jobs j join public.chain_steps s on s.id = j.step_id
     where j.provider = p->>'provider' and j.provider_job_id = p->>'provider_job_id'
$$;

-- The sweeper as before, except that the active steps are found once, through the active runs (see the top of this
-- file): one pass over the work in flight, then each rule picks its candidates from that list and re-checks them on
-- the row it changes (an earlier rule may have changed it since the list was read).
create or replace function public.bc_sweep(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_grace interval := babychain_private.bc_seconds(p->>'grace_seconds');
    v_limit int := (p->>'limit')::int;
    v_active public.chain_steps[];
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

    -- The active steps of the active runs, read once.
    v_active := array(select s from public.chain_runs r join public.chain_steps s on s.run_id = r.id
                       where r.status in ('queued', 'running') and s.status in ('queued', 'running'));

    -- Running steps past their budget.
    select coalesce(jsonb_agg(jsonb_build_object(
               'id', x.id, 'provider', x.provider, 'model_identifier', x.model_identifier,
               'provider_job_id', x.provider_job_id, 'provider_metadata', x.provider_metadata)), '[]'::jsonb)
      into v_timed_out_steps from (
        select a.id, a.provider, a.model_identifier, a.provider_job_id, a.provider_metadata from unnest(v_active) a
         where a.status = 'running'
           and a.started_at < now() - babychain_private.bc_seconds(case a.step_kind
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
         where s.id in (select a.id from unnest(v_active) a
                         where a.status = 'running' and a.provider_job_id is null and a.next_check_at < now() - v_grace
                         limit v_limit)
           and s.status = 'running' and s.provider_job_id is null and s.next_check_at < now() - v_grace
        returning jsonb_build_object('run_id', s.run_id, 'step_id', s.id, 'seq', s.seq) as item)
    select coalesce(jsonb_agg(item), '[]'::jsonb) into v_requeued from lost;

    -- Due steps whose message is overdue: re-drive them with their current seq (read again: the rules above may
    -- have failed or given back some of them).
    select coalesce(jsonb_agg(jsonb_build_object('run_id', x.run_id, 'step_id', x.id, 'seq', x.seq)), '[]'::jsonb)
      into v_steps from (
        select s.run_id, s.id, s.seq from public.chain_steps s
         where s.id = any (array(select a.id from unnest(v_active) a where a.next_check_at < now() - v_grace))
           and s.status in ('queued', 'running') and s.next_check_at < now() - v_grace
           and exists (select from public.chain_runs r where r.id = s.run_id and r.status in ('queued', 'running'))
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

revoke execute on function public.bc_take_step(jsonb), public.bc_record_submission(jsonb),
    public.bc_complete_step(jsonb), public.bc_find_step_by_job(jsonb), public.bc_sweep(jsonb)
    from public, anon, authenticated;
grant execute on function public.bc_take_step(jsonb), public.bc_record_submission(jsonb),
    public.bc_complete_step(jsonb), public.bc_find_step_by_job(jsonb), public.bc_sweep(jsonb)
    to service_role;
revoke execute on function babychain_private.bc_step_run_json(uuid) from public, anon, authenticated, service_role;
