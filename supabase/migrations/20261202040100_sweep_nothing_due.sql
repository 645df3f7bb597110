-- bc_sweep answers "nothing due" from one statement planned once per session (issue 10: every query under 2 ms at
-- 1,000,000 runs, under any plan_cache_mode). The rules are those of 20261201100000_step_timers.sql, unchanged;
-- only the check before them is new.
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
    v_deadline timestamptz;
    v_image_started timestamptz;
    v_video_started timestamptz;
    v_next_check timestamptz;
    v_callback_next timestamptz;
    v_callback_claimed timestamptz;
begin
    -- What the sweeper almost always finds: nothing due. The earliest time each rule below compares, each from the
    -- rule's own index (first-entry probes), in one statement with no parameters: plpgsql plans it once per session
    -- under any plan_cache_mode, while the rules' statements, which have parameters, are planned again on every call
    -- under custom plans (~1 ms of planning for ~0.2 ms of work at any history). A rule can find a row only when its
    -- earliest time is past its threshold (the lost-claim rule's steps are among the due ones), so when none is,
    -- the answer is the empty one the rules would give.
    select (select min(deadline_at) from public.chain_runs where status in ('queued', 'running')),
           (select min(started_at) from babychain_private.chain_step_timers
             where status = 'running' and step_kind = 'image'),
           (select min(started_at) from babychain_private.chain_step_timers
             where status = 'running' and step_kind = 'video'),
           (select min(next_check_at) from babychain_private.chain_step_timers where next_check_at is not null),
           (select min(callback_next_at) from public.chain_runs where callback_status = 'pending'),
           (select min(callback_claimed_at) from public.chain_runs where callback_status = 'delivering')
      into v_deadline, v_image_started, v_video_started, v_next_check, v_callback_next, v_callback_claimed;
    if coalesce(v_deadline >= now(), true)
       and coalesce(v_image_started >= now() - v_image_budget, true)
       and coalesce(v_video_started >= now() - v_video_budget, true)
       and coalesce(v_next_check >= now() - v_grace, true)
       and coalesce(v_callback_next > now(), true)
       and coalesce(v_callback_claimed >= now() - babychain_private.bc_seconds(p->>'callback_stale_seconds'), true)
    then
        return jsonb_build_object('timed_out_runs', '[]'::jsonb, 'timed_out_steps', '[]'::jsonb,
                                  'requeued_steps', '[]'::jsonb, 'due_steps', '[]'::jsonb,
                                  'due_callbacks', '[]'::jsonb);
    end if;

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
