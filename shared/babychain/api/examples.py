"""The seed's request and response (the contract's example), and one request per other chain, for the document."""

from __future__ import annotations

from typing import Any

SEED_REQUEST: dict[str, Any] = {
    "input": {
        "chain_models": {
            "text_to_image_model": "bfl/flux-2-flex",
            "image_to_video_model": "bytedance/seedance-1.5-pro",
        },
        "text_to_image_params": {
            "prompt": "a blue sky over a wheat field",
            "width": 1024,
            "height": 1024,
            "prompt_upsampling": False,
            "seed": 593,
            "safety_tolerance": 5,
            "output_format": "jpeg",
        },
        "image_to_video_params": {
            "content": [{"type": "text", "text": "clouds drift"}],
            "ratio": "1:1",
            "duration": 3,
            "watermark": False,
        },
    },
    "webhook_url": "https://your-webhook.example.com",
}

CHAIN2_REQUEST: dict[str, Any] = {
    "input": {
        "chain_models": {
            "image_to_image_model": "bfl/flux-kontext-pro",
            "image_to_video_model": "bytedance/seedance-1.5-pro",
        },
        "source_image_url": "https://images.example.com/field.jpg",
        "image_to_image_params": {"prompt": "the same field at sunset", "seed": 7, "output_format": "png"},
        "image_to_video_params": {
            "content": [{"type": "text", "text": "the sun sets"}],
            "ratio": "16:9",
            "duration": 3,
        },
    },
    "webhook_url": "https://your-webhook.example.com",
    "metadata": {"order": "A-1001"},
}

CHAIN3_REQUEST: dict[str, Any] = {
    "input": {
        "chain_models": {
            "text_to_image_model": "bytedance/seedream-4.5",
            "image_to_image_model": "bfl/flux-kontext-pro",
            "image_to_video_model": "bytedance/seedance-1-pro-fast",
        },
        "text_to_image_params": {"prompt": "a lighthouse on a cliff", "size": "2K", "seed": 11},
        "image_to_image_params": {"prompt": "the lighthouse in a storm", "output_format": "jpeg"},
        "image_to_video_params": {"content": [{"type": "text", "text": "waves crash"}], "ratio": "16:9", "duration": 5},
    },
}

_RUN_ID = "7c0e6a52-3f43-4a0c-9a59-2b0f4f0d1c11"
_CREATED = "2026-05-23T09:30:00.120000+00:00"


def _step(index: int, key: str, kind: str, model: str, depends_on: list[str], step_id: str) -> dict[str, Any]:
    return {
        "id": step_id,
        "object": "chain_step",
        "step_index": index,
        "step_key": key,
        "step_kind": kind,
        "model_identifier": model,
        "status": "queued",
        "depends_on": depends_on,
        "attempt": 0,
        "created_at": _CREATED,
        "updated_at": _CREATED,
        "started_at": None,
        "completed_at": None,
    }


# What POST /api/v1/chains/chain1/runs answers for the seed request on a BYOK deployment.
SEED_RESPONSE: dict[str, Any] = {
    "id": _RUN_ID,
    "object": "chain_run",
    "chain_slug": "chain1",
    "chain_version": "2026-05-23",
    "mode": "byok",
    "status": "queued",
    "input": SEED_REQUEST["input"],
    "created_at": _CREATED,
    "updated_at": _CREATED,
    "completed_at": None,
    "current_step_key": "processing",
    "steps": [
        _step(0, "text_to_image", "image", "bfl/flux-2-flex", [], "0b6f0f55-8f1e-4e47-a3f5-5a8f4d6c2e01"),
        _step(
            1,
            "image_to_video",
            "video",
            "bytedance/seedance-1.5-pro",
            ["text_to_image"],
            "0b6f0f55-8f1e-4e47-a3f5-5a8f4d6c2e02",
        ),
    ],
    "estimate": {
        "currency": "USD",
        "total": 0.2555,
        "steps": [
            {
                "step_key": "text_to_image",
                "model_identifier": "bfl/flux-2-flex",
                "amount": 0.1,
                "basis": "price_table:per_megapixel",
                "source": "BFL skill: 5c + 5c",
                "megapixels": 2,
            },
            {
                "step_key": "image_to_video",
                "model_identifier": "bytedance/seedance-1.5-pro",
                "amount": 0.1555,
                "basis": "price_table:per_million_tokens",
                "source": "default, confirm in the BytePlus console",
                "tokens": 64800,
                "assumed_resolution": "720p",
                "seconds": 3.0,
            },
        ],
    },
    "webhook_url": "https://your-webhook.example.com",
    "callback": {"event_id": f"evt_{_RUN_ID}", "status": "waiting", "attempts": 0, "next_attempt_at": None},
}

REQUEST_EXAMPLES: dict[str, dict[str, Any]] = {
    "seed": {"summary": "chain1 (the seed's request)", "value": SEED_REQUEST},
    "chain2": {"summary": "chain2, from your image", "value": CHAIN2_REQUEST},
    "chain3": {"summary": "chain3, no callback", "value": CHAIN3_REQUEST},
}
