"""Store rows → the public `chain_run` resource (the seed's field names, plus error, output, progress, callback)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from babychain.store.rows import ListedRunRow, ListedStepRow

ACTIVE = ("queued", "running")
Share = Callable[[str], str]


def _same(url: str) -> str:
    return url


def present_step(step: ListedStepRow, share: Share = _same) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": step["id"],
        "object": "chain_step",
        "step_index": step["step_index"],
        "step_key": step["step_key"],
        "step_kind": step["step_kind"],
        "model_identifier": step["model_identifier"],
        "status": step["status"],
        "depends_on": step["depends_on"],
        "attempt": step["attempt"],
        "created_at": step["created_at"],
        "updated_at": step["updated_at"],
        "started_at": step["started_at"],
        "completed_at": step["completed_at"],
    }
    if inputs := step.get("input_files"):
        out["generation_input_file"] = [share(u) for u in inputs]
    if outputs := step.get("output_files"):
        out["generation_output_file"] = [share(u) for u in outputs]
    if step.get("provider"):
        out["provider"] = step["provider"]
    metadata = step.get("provider_metadata") or {}
    # Only facts a caller can use; provider internals (polling URLs, request ids) stay on the row.
    for key in ("provider_used", "cost", "provider_cancel", "last_frame_url", "attempts"):
        if metadata.get(key) is not None:
            out[key] = metadata[key]
    progress = metadata.get("progress")
    if step["status"] == "running" and progress is not None:
        out["progress"] = progress
    if step.get("error_code"):
        key = "last_error" if step["status"] in ACTIVE else "error"
        out[key] = {"code": step["error_code"], "message": step["error_message"]}
    return out


def present_run(run: ListedRunRow, share: Share = _same) -> dict[str, Any]:
    """`share` turns stored artifact references into URLs the caller can fetch (e.g. presigned S3 URLs)."""
    out: dict[str, Any] = {
        "id": run["id"],
        "object": "chain_run",
        "chain_slug": run["chain_slug"],
        "chain_version": run["chain_version"],
        "mode": run["mode"],
        "status": run["status"],
        "input": run["input"],
        "created_at": run["created_at"],
        "updated_at": run["updated_at"],
        "completed_at": run["completed_at"],
        "current_step_key": run["current_step_key"] or "processing",
        "steps": [present_step(s, share) for s in run.get("steps", [])],
    }
    if run.get("metadata"):
        out["metadata"] = run["metadata"]
    if run.get("error_code"):
        out["error"] = {"code": run["error_code"], "message": run["error_message"]}
    if output := run.get("output"):
        out["output"] = {**output, "output_files": [share(u) for u in output.get("output_files", [])]}
    if run.get("estimate"):
        out["estimate"] = run["estimate"]
    if run.get("webhook_url"):
        out["webhook_url"] = run["webhook_url"]
        out["callback"] = {
            "event_id": run["callback_event_id"],
            "status": run["callback_status"],
            "attempts": run["callback_attempts"],
            "next_attempt_at": run["callback_next_at"],
        }
    return out
