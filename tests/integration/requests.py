"""Request bodies used across the integration tests (BYOK-shaped, as callers would write them): the seed's from the
OpenAPI examples, the others the demo's."""

from __future__ import annotations

import copy
from typing import Any

from babychain.api.examples import SEED_REQUEST
from babychain.local.cli import demo_request

# The seed's request, as the OpenAPI document shows it (one source), without its placeholder webhook_url.
SEED_CHAIN1: dict[str, Any] = {k: v for k, v in copy.deepcopy(SEED_REQUEST).items() if k != "webhook_url"}


def chain_request(chain: str, webhook_url: str | None, source_image_url: str | None = None) -> dict[str, Any]:
    body = demo_request(chain, webhook_url or "", source_image_url)
    if webhook_url is None:
        body.pop("webhook_url")
    return body
