-- bc_claim_step is no longer called: a step message claims its step with bc_take_step, and a completion claims the
-- next one (20261201060000_step_transitions.sql).
drop function if exists public.bc_claim_step(jsonb);
