"""Request bodies used across the integration tests (BYOK-shaped, as callers would write them)."""

from __future__ import annotations

from typing import Any

from babychain.local.cli import demo_request

SEED_CHAIN1 = {
    "input": {
        "chain_models": {
            "text_to_image_model": "bfl/flux-2-flex",
            "image_to_video_model": "bytedance/seedance-1.5-pro",
        },
        "text_to_image_params": {
            "prompt": "a small blue sky over a wheat field",
            "width": 1024,
            "height": 1024,
            "prompt_upsampling": False,
            "seed": 593,
            "safety_tolerance": 5,
            "output_format": "jpeg",
        },
        "image_to_video_params": {
            "content": [{"type": "text", "text": "clouds drift across the sky"}],
            "ratio": "1:1",
            "duration": 3,
            "watermark": False,
        },
    },
}


def chain_request(chain: str, webhook_url: str | None, source_image_url: str | None = None) -> dict[str, Any]:
    body = demo_request(chain, webhook_url or "", source_image_url)
    if webhook_url is None:
        body.pop("webhook_url")
    return body
