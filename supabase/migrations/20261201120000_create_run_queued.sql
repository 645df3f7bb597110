-- Creating a run and queueing its first step in one statement, for the one-machine shape, whose step queue is a table
-- in the run's own database (20261201000000_local_queues.sql): the API's create was two calls, bc_create_run then
-- bc_queue_send. On AWS the queue is SQS and the create stays bc_create_run.
--
-- {run: <bc_create_run's argument>, queue, message: <the step message's fields other than its ids>}
--   -> bc_create_run's answer. Only a new run sends: a replay (same Idempotency-Key) sends nothing, as before.
create or replace function public.bc_create_run_queued(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_created jsonb := public.bc_create_run(p->'run');
    v_first jsonb;
begin
    if (v_created->>'created')::boolean then
        v_first := v_created->'run'->'steps'->0;
        perform public.bc_queue_send(jsonb_build_object(
            'queue', p->>'queue',
            'messages', jsonb_build_array(jsonb_build_object(
                'body', p->'message' || jsonb_build_object(
                    'run_id', v_created->'run'->'id', 'step_id', v_first->'id', 'seq', v_first->'seq'),
                'delay_seconds', 0))));
    end if;
    return v_created;
end
$$;

revoke execute on function public.bc_create_run_queued(jsonb) from public, anon, authenticated;
grant execute on function public.bc_create_run_queued(jsonb) to service_role;
