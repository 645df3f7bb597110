-- The list page and the retention purge keep their generic plans whatever the session's plan_cache_mode says.
--
-- Both were written for generic plans: every filter and the cursor of bc_list_runs are index conditions in its
-- generic plan, which holds each kind of filter's query and runs only the one its CASE picks
-- (20261202010000_list_page_as_json.sql; tests/integration/test_sql_hygiene.py checks the plans), bc_runs_as_json
-- reads the page's runs and steps by primary key and (run_id, step_index), and the purge picks its batch by
-- `= any(array(...))` so that its generic plan is an index range too (20261201083000_list_by_index.sql). Under
-- custom plans each call planned them again, and the purge planned its per-run cascade statements again for every
-- run: server time per call (50,000 runs, medians, custom plans forced) list pages 1.4-4.5 ms instead of 0.9-1.25,
-- a purge batch of 16 2.9-6.1 ms instead of 1.1-1.4. With the server's own choice (auto) it already used generic
-- plans for the list after five calls; the purge gains there too (1.3-2.0 -> 1.0-1.35 ms).
alter function public.bc_list_runs(jsonb) set plan_cache_mode = force_generic_plan;
alter function babychain_private.bc_runs_as_json(uuid[]) set plan_cache_mode = force_generic_plan;
alter function public.bc_purge_expired_runs(jsonb) set plan_cache_mode = force_generic_plan;
