-- One lock order for everything that changes a run and its steps: steps first (in step order), then the run.
--
-- A step transition (bc_take_step, bc_complete_step, bc_fail_step) updates its step row, then the run row. Ending a
-- run the other way round (bc_cancel_run and the sweeper's run deadline went through bc_finish_run: run row, then
-- the active steps) could meet a claim half-way: the cancel held the run and waited for the step, the claim held the
-- step and waited for the run, and Postgres broke the deadlock by failing one of them (40P01). The API then answered
-- a cancel with 503, or a step message failed and waited for its redelivery. Now ending a run locks the run's active
-- steps first, in step order, so it waits for a transition in flight instead (a completion locks its step, then the
-- dependent step, which is later in step order). A run that succeeds is ended by its last completion, which already
-- holds its steps, and has no active step left: that path takes no extra lock.

create or replace function babychain_private.bc_finish_run(p_run_id uuid, p_status text, p_code text, p_message text,
                                                           p_output jsonb)
returns boolean
language plpgsql set search_path = '' as $$
declare
    v_found boolean;
begin
    if p_status <> 'succeeded' then
        perform from public.chain_steps
         where run_id = p_run_id and status in ('queued', 'running')
         order by step_index
           for update;
    end if;
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
    if p_status <> 'succeeded' then
        update public.chain_steps
           set status = case when status = 'running' then 'canceled' else 'skipped' end,
               completed_at = case when status = 'running' then now() else completed_at end,
               next_check_at = null,
               seq = seq + 1,
               updated_at = now()
         where run_id = p_run_id and status in ('queued', 'running');
    end if;
    return true;
end
$$;
revoke execute on function babychain_private.bc_finish_run(uuid, text, text, text, jsonb)
    from public, anon, authenticated, service_role;

-- The steps a cancel reports as running are read from the rows it has locked: a claim that commits while the cancel
-- waits is seen (its step is reported, so the caller cancels the provider job), not missed.
create or replace function public.bc_cancel_run(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_run_id uuid := (p->>'run_id')::uuid;
    v_running jsonb;
    v_canceled boolean;
begin
    select coalesce(jsonb_agg(to_jsonb(s) order by s.step_index) filter (where s.status = 'running'), '[]'::jsonb)
      into v_running
      from (select * from public.chain_steps
             where run_id = v_run_id and status in ('queued', 'running')
             order by step_index
               for update) s;
    v_canceled := babychain_private.bc_finish_run(v_run_id, 'canceled', 'client_canceled', 'Chain run was canceled.',
                                                  null);
    return jsonb_build_object('run', babychain_private.bc_run_json(v_run_id), 'canceled', v_canceled,
                              'steps', case when v_canceled then v_running else '[]'::jsonb end);
end
$$;
