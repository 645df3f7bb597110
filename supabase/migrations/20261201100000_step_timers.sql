-- The sweeper by index, without indexing chain_steps' changing columns.
--
-- bc_sweep read every active step of every active run and then filtered by time: in proportion to the work in
-- flight even when nothing is overdue. chain_steps must not index status, next_check_at or started_at (they change on
-- every transition; indexing them would end its HOT updates), so their copies for the active steps live in a small
-- side table with its own indexes, kept by a trigger on chain_steps: a row while the step is queued or running, none
-- once it ends. No transition function writes it, so none can forget it. Each sweeper rule is then an index range
-- scan that returns only what is due; "nothing overdue" is a few index probes.

create table babychain_private.chain_step_timers (
    step_id        uuid primary key,  -- a chain_steps id; no foreign key (see bc_drop_step_timers)
    run_id         uuid not null,
    status         text not null,
    step_kind      text not null,
    next_check_at  timestamptz,
    started_at     timestamptz,
    has_job        boolean not null
);
-- Due steps (re-driven) and lost claims (running with no job id: given back).
create index chain_step_timers_due on babychain_private.chain_step_timers (next_check_at)
    where next_check_at is not null;
create index chain_step_timers_lost on babychain_private.chain_step_timers (next_check_at)
    where status = 'running' and not has_job;
-- Running steps past their budget, one index per kind (each kind has its own timeout).
create index chain_step_timers_image_running on babychain_private.chain_step_timers (started_at)
    where status = 'running' and step_kind = 'image';
create index chain_step_timers_video_running on babychain_private.chain_step_timers (started_at)
    where status = 'running' and step_kind = 'video';

-- Private like the rest of the schema; RLS on in case a grant ever opens it.
alter table babychain_private.chain_step_timers enable row level security;
revoke all on table babychain_private.chain_step_timers from public, anon, authenticated, service_role;

-- Runs as the writer of chain_steps (the RPC functions' owner), as every private helper does.
create function babychain_private.bc_sync_step_timer() returns trigger
language plpgsql set search_path = '' as $$
begin
    if new.status in ('queued', 'running') then
        insert into babychain_private.chain_step_timers as t
               (step_id, run_id, status, step_kind, next_check_at, started_at, has_job)
        values (new.id, new.run_id, new.status, new.step_kind, new.next_check_at, new.started_at,
                new.provider_job_id is not null)
        on conflict (step_id) do update
           set status = excluded.status, next_check_at = excluded.next_check_at,
               started_at = excluded.started_at, has_job = excluded.has_job;
    elsif tg_op = 'UPDATE' then
        delete from babychain_private.chain_step_timers where step_id = new.id;
    end if;
    return null;
end
$$;
revoke execute on function babychain_private.bc_sync_step_timer() from public, anon, authenticated, service_role;

-- A deleted step takes its timer along. Not a foreign key: its cascade would probe this table once per deleted step,
-- and the retention purge deletes thousands of finished steps, none of which has a timer. Once per statement, only
-- for the active steps among those deleted (none, in a purge).
create function babychain_private.bc_drop_step_timers() returns trigger
language plpgsql set search_path = '' as $$
begin
    delete from babychain_private.chain_step_timers t
     using gone g where t.step_id = g.id and g.status in ('queued', 'running');
    return null;
end
$$;
revoke execute on function babychain_private.bc_drop_step_timers() from public, anon, authenticated, service_role;

create trigger chain_steps_timer_delete after delete on public.chain_steps
    referencing old table as gone for each statement execute function babychain_private.bc_drop_step_timers();
create trigger chain_steps_timer_insert after insert on public.chain_steps
    for each row execute function babychain_private.bc_sync_step_timer();
-- Only when a copied column changes: updates that touch none of them (notes, metadata) write nothing here.
create trigger chain_steps_timer_update after update on public.chain_steps
    for each row when (old.status is distinct from new.status
                       or old.next_check_at is distinct from new.next_check_at
                       or old.started_at is distinct from new.started_at
                       or (old.provider_job_id is null) <> (new.provider_job_id is null))
    execute function babychain_private.bc_sync_step_timer();

-- The active steps now. The trigger exists first, and its creation locks chain_steps against writes until this
-- migration commits, so no transition slips between the two. Found through the active runs, by index (a run that
-- ends ends its active steps, bc_finish_run), so the lock lasts as long as reading the work in flight, not history.
insert into babychain_private.chain_step_timers (step_id, run_id, status, step_kind, next_check_at, started_at, has_job)
select s.id, s.run_id, s.status, s.step_kind, s.next_check_at, s.started_at, s.provider_job_id is not null
  from public.chain_runs r join public.chain_steps s on s.run_id = r.id
 where r.status in ('queued', 'running') and s.status in ('queued', 'running')
on conflict (step_id) do nothing;

-- The sweeper's rules as before (20261201060000_step_transitions.sql); each finds its candidates by a range scan of
-- the timers and re-checks them on the row it changes (an earlier rule may have changed it since).
create or replace function public.bc_sweep(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_grace interval := babychain_private.bc_seconds(p->>'grace_seconds');
    v_limit int := (p->>'limit')::int;
    v_image_budget interval := babychain_private.bc_seconds(p->>'image_step_timeout_seconds');
    v_video_budget interval := babychain_private.bc_seconds(p->>'video_step_timeout_seconds');
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

    -- Running steps past their budget (of an active run, as before).
    select coalesce(jsonb_agg(jsonb_build_object(
               'id', s.id, 'provider', s.provider, 'model_identifier', s.model_identifier,
               'provider_job_id', s.provider_job_id, 'provider_metadata', s.provider_metadata)), '[]'::jsonb)
      into v_timed_out_steps from (
        select c.step_id from (
            (select t.step_id, t.run_id from babychain_private.chain_step_timers t
              where t.status = 'running' and t.step_kind = 'image' and t.started_at < now() - v_image_budget
              order by t.started_at limit v_limit)
            union all
            (select t.step_id, t.run_id from babychain_private.chain_step_timers t
              where t.status = 'running' and t.step_kind = 'video' and t.started_at < now() - v_video_budget
              order by t.started_at limit v_limit)) c
         where exists (select from public.chain_runs r where r.id = c.run_id and r.status in ('queued', 'running'))
         limit v_limit) x
      join public.chain_steps s on s.id = x.step_id and s.status = 'running';
    for v_row in select (value->>'id')::uuid as id from jsonb_array_elements(v_timed_out_steps) loop
        perform public.bc_fail_step(jsonb_build_object(
            'step_id', v_row.id, 'error_code', 'step_running_timed_out',
            'error_message', 'The generation did not reach a terminal state before the step deadline.'));
    end loop;

    -- A claimed step whose submitter died before recording a job id: give the attempt back.
    with lost as (
        update public.chain_steps s set status = 'queued', seq = seq + 1, next_check_at = now(), updated_at = now()
         where s.id in (select t.step_id from babychain_private.chain_step_timers t
                         where t.status = 'running' and not t.has_job and t.next_check_at < now() - v_grace
                           and exists (select from public.chain_runs r
                                        where r.id = t.run_id and r.status in ('queued', 'running'))
                         order by t.next_check_at limit v_limit)
           and s.status = 'running' and s.provider_job_id is null and s.next_check_at < now() - v_grace
        returning jsonb_build_object('run_id', s.run_id, 'step_id', s.id, 'seq', s.seq) as item)
    select coalesce(jsonb_agg(item), '[]'::jsonb) into v_requeued from lost;

    -- Due steps whose message is overdue: re-drive them with their current seq (read from the step: the rules above
    -- may have failed or given back some of them).
    select coalesce(jsonb_agg(jsonb_build_object('run_id', x.run_id, 'step_id', x.id, 'seq', x.seq)), '[]'::jsonb)
      into v_steps from (
        select s.run_id, s.id, s.seq
          from babychain_private.chain_step_timers t join public.chain_steps s on s.id = t.step_id
         where t.next_check_at < now() - v_grace
           and s.status in ('queued', 'running') and s.next_check_at < now() - v_grace
           and exists (select from public.chain_runs r where r.id = s.run_id and r.status in ('queued', 'running'))
         order by t.next_check_at limit v_limit) x;

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

revoke execute on function public.bc_sweep(jsonb) from public, anon, authenticated;
grant execute on function public.bc_sweep(jsonb) to service_role;
