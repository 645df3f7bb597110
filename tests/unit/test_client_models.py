"""The client's typed models follow the server's presenter: every key `present_run`/`present_step` can write is a
field of `Run`/`Step` (a key added there fails here until the model has it), and the values come through typed."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from babychain.client import Run, Step
from babychain.client.errors import parse_retry_after
from babychain.engine.presenter import present_run

T0, T1, T2 = "2026-05-23T10:00:00+00:00", "2026-05-23T10:00:01.5+00:00", "2026-05-23T10:00:04+00:00"


def step_row(index: int, key: str, status: str, **extra: Any) -> dict[str, Any]:
    row = {
        "id": f"00000000-0000-4000-8000-00000000000{index}",
        "run_id": "00000000-0000-4000-8000-00000000000a",
        "step_index": index,
        "step_key": key,
        "step_kind": "video" if key == "image_to_video" else "image",
        "model_identifier": "bfl/flux-2-flex",
        "depends_on": [] if index == 0 else ["text_to_image"],
        "status": status,
        "params": {},
        "request_params": None,
        "input_files": None,
        "output_files": None,
        "provider": None,
        "provider_job_id": None,
        "provider_metadata": {},
        "attempt": 0,
        "seq": 1,
        "next_check_at": None,
        "error_code": None,
        "error_message": None,
        "started_at": None,
        "completed_at": None,
        "created_at": T0,
        "updated_at": T0,
    }
    return {**row, **extra}


def everything_run() -> dict[str, Any]:
    """A run row with every optional part the presenter shows: outputs, errors, progress, callback, estimate."""
    steps = [
        step_row(
            0,
            "text_to_image",
            "succeeded",
            output_files=["https://files.example/a.jpg"],
            input_files=["https://files.example/src.png"],
            provider="babysea",
            provider_metadata={
                "provider_used": "fal",
                "cost": {"amount": 0.03, "currency": "USD"},
                "provider_cancel": "accepted",
                "last_frame_url": "https://files.example/last.png",
                "attempts": [{"attempt": 1, "provider": "babysea", "job_id": "j1", "at": T0}],
            },
            attempt=1,
            started_at=T0,
            completed_at=T1,
        ),
        step_row(
            1,
            "image_to_video",
            "running",
            provider_metadata={"progress": 0.4},
            error_code="provider_timeout",
            error_message="retrying",
            attempt=2,
            started_at=T1,
        ),
        step_row(2, "image_to_image", "failed", error_code="moderation_blocked", error_message="no"),
    ]
    return {
        "id": "00000000-0000-4000-8000-00000000000a",
        "owner_id": "o",
        "chain_slug": "chain3",
        "chain_version": "2026-05-23",
        "mode": "babysea",
        "status": "failed",
        "input": {"chain_models": {}},
        "metadata": {"order": 7},
        "webhook_url": "https://hooks.example/b",
        "current_step_key": "image_to_image",
        "output": {"output_files": ["https://files.example/v.mp4"], "final_step_key": "image_to_video"},
        "error_code": "chain_step_failed",
        "error_message": "a step failed",
        "callback_event_id": "evt_00000000-0000-4000-8000-00000000000a",
        "callback_status": "pending",
        "callback_attempts": 2,
        "callback_next_at": T2,
        "created_at": T0,
        "updated_at": T2,
        "completed_at": T2,
        "estimate": {"total": 0.1, "currency": "USD", "steps": []},
        "steps": steps,
    }


def fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} - {"raw"}


def test_every_key_the_presenter_writes_is_a_model_field() -> None:
    presented = present_run(everything_run())  # type: ignore[arg-type]
    assert set(presented) - {"object"} <= fields(Run), set(presented) - fields(Run)
    step_keys = set().union(*(s.keys() for s in presented["steps"]))
    assert step_keys - {"object"} <= fields(Step), step_keys - fields(Step)


def test_the_values_come_through_typed() -> None:
    run = Run.from_dict(present_run(everything_run()))  # type: ignore[arg-type]
    assert run.status == "failed" and run.is_terminal and run.mode == "babysea" and run.metadata == {"order": 7}
    assert run.created_at == datetime(2026, 5, 23, 10, 0, tzinfo=UTC) and run.completed_at is not None
    assert run.error is not None and run.error.code == "chain_step_failed"
    assert run.output_files == ["https://files.example/v.mp4"] and run.output and run.output.final_step_key
    assert run.callback is not None and run.callback.attempts == 2 and run.callback.status == "pending"
    assert run.callback.event_id == f"evt_{run.id}" and run.webhook_url == "https://hooks.example/b"
    assert run.estimate == {"total": 0.1, "currency": "USD", "steps": []}
    done, running, failed = run.steps
    assert done.generation_output_file == ["https://files.example/a.jpg"] and done.provider_used == "fal"
    assert done.generation_input_file == ["https://files.example/src.png"] and done.provider == "babysea"
    assert done.cost == {"amount": 0.03, "currency": "USD"} and done.provider_cancel == "accepted"
    assert done.last_frame_url == "https://files.example/last.png" and done.attempts[0]["job_id"] == "j1"
    assert (done.completed_at - done.started_at).total_seconds() == 1.5  # type: ignore[operator]
    assert running.progress == 0.4 and running.error is None
    assert running.last_error is not None and running.last_error.code == "provider_timeout"
    assert failed.error is not None and failed.error.code == "moderation_blocked" and failed.progress is None
    assert run.step("image_to_video") is running


def test_retry_after_as_seconds_or_a_date() -> None:
    assert parse_retry_after("17") == 17.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: now
