-- A list page carries only what the list shows, as arrays of values (issue 10: every query under 2 ms at 1,000,000
-- runs, as a whole call).
--
-- A page of 21 runs was ~72 KB of json objects: the server took ~1.2 ms to build it (of which ~0.1 ms finding the
-- page), and the client ~0.5 ms to parse it, to present a resource that never shows a run's owner, idempotency key,
-- request hash, deadline or callback lease, nor a step's run id, params, submitted request, job id, seq or next
-- check (the params are the caller's prompts, twice per step once submitted: with real inputs most of the bytes).
-- Of what is left, json_build_object costs ~0.4 µs per key per row (it writes each key out again): for 63 steps,
-- json_build_object took 0.70 ms and json_build_array of the same values 0.25 ms (50,000 runs).
--
-- So bc_list_runs returns {"run_fields": [...], "step_fields": [...], "runs": [[value, ...], ...]}: each run and
-- each step an array of the fields engine/presenter.py and the list's cursor read, in the order the names say, a
-- run's last value its steps. The store turns it back into rows (store/base.py: list_runs; store/rows.py:
-- ListedRunRow, ListedStepRow): the same values as a run read alone (bc_get_run), which keeps every column, and the
-- API's answer is byte for byte the same (tests/integration/test_run_json.py).
--
-- The page is still found by bc_list_runs (20261202010000_list_page_as_json.sql), which calls this helper; its
-- return type (json) is unchanged.
create or replace function babychain_private.bc_runs_as_json(p_ids uuid[]) returns json
language sql stable set search_path = '' as $$
    select json_build_object(
        'run_fields', json_build_array(
            'id', 'chain_slug', 'chain_version', 'mode', 'status', 'input', 'metadata', 'webhook_url',
            'current_step_key', 'output', 'error_code', 'error_message', 'callback_event_id', 'callback_status',
            'callback_attempts', 'callback_next_at', 'created_at', 'updated_at', 'completed_at', 'estimate', 'steps'),
        'step_fields', json_build_array(
            'id', 'step_index', 'step_key', 'step_kind', 'model_identifier', 'depends_on', 'status', 'input_files',
            'output_files', 'provider', 'provider_metadata', 'attempt', 'error_code', 'error_message', 'started_at',
            'completed_at', 'created_at', 'updated_at'),
        'runs', coalesce(json_agg(json_build_array(
            r.id, r.chain_slug, r.chain_version, r.mode, r.status, r.input, r.metadata, r.webhook_url,
            r.current_step_key, r.output, r.error_code, r.error_message, r.callback_event_id, r.callback_status,
            r.callback_attempts, r.callback_next_at, r.created_at, r.updated_at, r.completed_at, r.estimate,
            coalesce((
                select json_agg(json_build_array(
                    s.id, s.step_index, s.step_key, s.step_kind, s.model_identifier, s.depends_on, s.status,
                    s.input_files, s.output_files, s.provider, s.provider_metadata, s.attempt, s.error_code,
                    s.error_message, s.started_at, s.completed_at, s.created_at, s.updated_at) order by s.step_index)
                  from public.chain_steps s where s.run_id = r.id),
                '[]'::json))
            order by u.n), '[]'::json))
      from unnest(p_ids) with ordinality u(id, n) join public.chain_runs r on r.id = u.id
$$;
