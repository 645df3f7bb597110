"""The BYOK price table, kept beside the model catalog. BYOK steps bill the operator's own provider account; these
figures let create return an estimate before anything runs.

BFL: credits (1 credit = $0.01) per megapixel for FLUX.2 (providers.md §1.2, from BFL's vendor skill); flat per image
for klein, Kontext and FLUX1.1. BytePlus: per image for Seedream, per token for Seedance with tokens ≈
width x height x fps x seconds / 1024 (providers.md §2.4). The BytePlus rates below are list-price defaults that
were not checked against a published price page here: confirm them in your console before relying on totals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from babychain.chains.catalog import ModelSpec
from babychain.chains.families import GenerationRequest

USD_PER_BFL_CREDIT = 0.01
SEEDANCE_FPS = 24
SEEDANCE_RESOLUTIONS = {"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080)}


@dataclass(frozen=True)
class Price:
    basis: str  # "per_megapixel", "per_image", "per_million_tokens"
    first: float  # USD for the first megapixel / per image / per million tokens
    extra: float = 0.0  # USD per further megapixel
    source: str = ""


PRICES: dict[str, Price] = {
    "bfl/flux-2-pro": Price("per_megapixel", 0.03, 0.015, "BFL skill: 3c first MP + 1.5c per extra MP"),
    "bfl/flux-2-max": Price("per_megapixel", 0.07, 0.03, "BFL skill: 7c + 3c"),
    "bfl/flux-2-flex": Price("per_megapixel", 0.05, 0.05, "BFL skill: 5c + 5c"),
    "bfl/flux-2-klein-4b": Price("per_image", 0.014, source="BFL skill: 1.4c"),
    "bfl/flux-2-klein-9b": Price("per_image", 0.015, source="BFL skill: 1.5c"),
    "bfl/flux-kontext-pro": Price("per_image", 0.04, source="BFL list price"),
    "bfl/flux-kontext-max": Price("per_image", 0.08, source="BFL list price"),
    "bfl/flux-1.1-pro": Price("per_image", 0.04, source="BFL list price"),
    "bytedance/seedream-4": Price("per_image", 0.03, source="default, confirm in the BytePlus console"),
    "bytedance/seedream-4.5": Price("per_image", 0.04, source="default, confirm in the BytePlus console"),
    "bytedance/seedream-5-lite": Price("per_image", 0.035, source="default, confirm in the BytePlus console"),
    "bytedance/seedance-1-pro": Price("per_million_tokens", 2.5, source="default, confirm in the BytePlus console"),
    "bytedance/seedance-1-pro-fast": Price(
        "per_million_tokens", 1.0, source="default, confirm in the BytePlus console"
    ),
    "bytedance/seedance-1.5-pro": Price("per_million_tokens", 2.4, source="default, confirm in the BytePlus console"),
}


def price_step(model: ModelSpec, request: GenerationRequest) -> dict[str, Any]:
    price = PRICES.get(model.id)
    if price is None:
        return {"amount": None, "basis": "unpriced"}
    if price.basis == "per_megapixel":
        width, height = request.width or 1024, request.height or 1024
        # Input images are billed too: an edit counts one more megapixel per input (BFL bills input MP).
        megapixels = math.ceil(width * height / 1_000_000) + len(request.input_urls)
        amount = price.first + price.extra * max(0, megapixels - 1)
        details: dict[str, Any] = {"megapixels": megapixels}
    elif price.basis == "per_million_tokens":
        width, height = SEEDANCE_RESOLUTIONS["720p"]
        seconds = request.duration_seconds or 5.0
        tokens = width * height * SEEDANCE_FPS * seconds / 1024
        amount = price.first * tokens / 1_000_000
        details = {"tokens": round(tokens), "assumed_resolution": "720p", "seconds": seconds}
    else:
        amount = price.first
        details = {"images": 1}
    return {"amount": round(amount, 4), "basis": f"price_table:{price.basis}", "source": price.source, **details}
