-- Real providers: the run's cost estimate, per-attempt records on steps, and notes on finished steps.

alter table chain_runs add column estimate jsonb;

-- Same as before, plus the estimate.
create or replace function bc_create_run(p jsonb) returns jsonb
language plpgsql as $$
declare
    v_id uuid := (p->>'id')::uuid;
    v_existing uuid;
begin
    if p->>'idempotency_key' is not null then
        select id into v_existing from chain_runs
         where owner_id = p->>'owner_id' and idempotency_key = p->>'idempotency_key';
        if v_existing is not null then
            return jsonb_build_object('run', bc_run_json(v_existing), 'created', false);
        end if;
    end if;
    begin
        insert into chain_runs (id, owner_id, chain_slug, chain_version, mode, input, metadata, webhook_url,
                                idempotency_key, request_hash, current_step_key, deadline_at, callback_event_id,
                                callback_status, estimate)
        values (v_id, p->>'owner_id', p->>'chain_slug', p->>'chain_version', p->>'mode', p->'input',
                coalesce(nullif(p->'metadata', 'null'), '{}'), p->>'webhook_url', p->>'idempotency_key',
                p->>'request_hash', 'processing',
                now() + make_interval(secs => (p->>'run_timeout_seconds')::double precision),
                p->>'callback_event_id', case when p->>'webhook_url' is null then null else 'waiting' end,
                nullif(p->'estimate', 'null'));
    exception when unique_violation then
        select id into v_existing from chain_runs
         where owner_id = p->>'owner_id' and idempotency_key = p->>'idempotency_key';
        return jsonb_build_object('run', bc_run_json(v_existing), 'created', false);
    end;
    insert into chain_steps (run_id, step_index, step_key, step_kind, model_identifier, depends_on, params,
                             next_check_at)
    select v_id, (s->>'step_index')::int, s->>'step_key', s->>'step_kind', s->>'model_identifier',
           coalesce((select array_agg(d) from jsonb_array_elements_text(s->'depends_on') d), '{}'),
           coalesce(s->'params', '{}'),
           case when (s->>'step_index')::int = 0 then now() else null end
      from jsonb_array_elements(p->'steps') s;
    return jsonb_build_object('run', bc_run_json(v_id), 'created', true);
end
$$;

-- A transient submit failure now also records the attempt on the step.
create or replace function bc_retry_step(p jsonb) returns jsonb
language sql as $$
    update chain_steps
       set status = 'queued',
           seq = seq + 1,
           provider_job_id = null,
           provider_metadata = provider_metadata || coalesce(nullif(p->'provider_metadata', 'null'), '{}'),
           error_code = p->>'error_code',
           error_message = p->>'error_message',
           next_check_at = now() + make_interval(secs => (p->>'delay_seconds')::double precision),
           updated_at = now()
     where id = (p->>'step_id')::uuid and status = 'running' and attempt = (p->>'attempt')::int
    returning to_jsonb(chain_steps.*)
$$;

-- Adds facts to a step whatever its status (e.g. "the provider could not cancel this running task").
create function bc_note_step(p jsonb) returns jsonb
language sql as $$
    update chain_steps
       set provider_metadata = provider_metadata || coalesce(nullif(p->'provider_metadata', 'null'), '{}'),
           updated_at = now()
     where id = (p->>'step_id')::uuid
    returning to_jsonb(chain_steps.*)
$$;

create function bc_get_step(p jsonb) returns jsonb
language sql stable as $$
    select to_jsonb(s) from chain_steps s where s.id = (p->>'step_id')::uuid
$$;
