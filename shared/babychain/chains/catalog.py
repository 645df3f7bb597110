"""The model catalog: one data module naming every model, what steps it can run, and its parameter family per mode.

To add a model, add one `ModelSpec` line. `modes` says where it runs: `byok` (the provider's own API with the
server's key), `babysea` (hosted), `local` (the built-in offline provider, which accepts the BYOK schema).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from babychain.chains.families import FAMILIES, Family
from babychain.chains.kinds import IMAGE_TO_IMAGE, IMAGE_TO_VIDEO, TEXT_TO_IMAGE


@dataclass(frozen=True)
class ModelSpec:
    id: str
    title: str
    provider: str  # the BYOK provider: "bfl" or "byteplus"
    provider_model: str  # the provider's own model id or endpoint
    step_kinds: tuple[str, ...]
    byok_family: str
    modes: tuple[str, ...] = ("babysea", "byok", "local")

    @property
    def output_kind(self) -> str:
        return "video" if IMAGE_TO_VIDEO in self.step_kinds else "image"

    def family(self, mode: str) -> Family:
        if mode == "babysea":
            return FAMILIES["babysea_video" if self.output_kind == "video" else "babysea_image"]
        return FAMILIES[self.byok_family]

    def summary(self) -> dict[str, Any]:
        return {
            "object": "model",
            "id": self.id,
            "title": self.title,
            "provider": self.provider,
            "provider_model": self.provider_model,
            "kind": self.output_kind,
            "step_kinds": list(self.step_kinds),
            "modes": list(self.modes),
            "schemas": {
                mode: self.family(mode).schema.model_json_schema() for mode in ("byok", "babysea") if mode in self.modes
            },
        }


_IMAGE_BOTH = (TEXT_TO_IMAGE, IMAGE_TO_IMAGE)

MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("bfl/flux-2-pro", "FLUX.2 [pro]", "bfl", "flux-2-pro", _IMAGE_BOTH, "flux2"),
    ModelSpec("bfl/flux-2-max", "FLUX.2 [max]", "bfl", "flux-2-max", _IMAGE_BOTH, "flux2"),
    ModelSpec("bfl/flux-2-flex", "FLUX.2 [flex]", "bfl", "flux-2-flex", _IMAGE_BOTH, "flux2_flex"),
    ModelSpec("bfl/flux-2-klein-4b", "FLUX.2 [klein] 4B", "bfl", "flux-2-klein-4b", _IMAGE_BOTH, "flux2"),
    ModelSpec("bfl/flux-2-klein-9b", "FLUX.2 [klein] 9B", "bfl", "flux-2-klein-9b", _IMAGE_BOTH, "flux2"),
    ModelSpec("bfl/flux-kontext-pro", "FLUX.1 Kontext [pro]", "bfl", "flux-kontext-pro", _IMAGE_BOTH, "flux_kontext"),
    ModelSpec("bfl/flux-kontext-max", "FLUX.1 Kontext [max]", "bfl", "flux-kontext-max", _IMAGE_BOTH, "flux_kontext"),
    ModelSpec("bfl/flux-1.1-pro", "FLUX1.1 [pro]", "bfl", "flux-pro-1.1", (TEXT_TO_IMAGE,), "flux1"),
    ModelSpec("bytedance/seedream-4", "Seedream 4.0", "byteplus", "seedream-4-0-250828", _IMAGE_BOTH, "seedream"),
    ModelSpec("bytedance/seedream-4.5", "Seedream 4.5", "byteplus", "seedream-4-5-251128", _IMAGE_BOTH, "seedream"),
    ModelSpec(
        "bytedance/seedream-5-lite",
        "Seedream 5.0 lite",
        "byteplus",
        "seedream-5-0-lite-260128",
        _IMAGE_BOTH,
        "seedream",
    ),
    ModelSpec(
        "bytedance/seedance-1-pro",
        "Seedance 1.0 pro",
        "byteplus",
        "seedance-1-0-pro-250528",
        (IMAGE_TO_VIDEO,),
        "seedance",
    ),
    ModelSpec(
        "bytedance/seedance-1-pro-fast",
        "Seedance 1.0 pro fast",
        "byteplus",
        "seedance-1-0-pro-fast-251015",
        (IMAGE_TO_VIDEO,),
        "seedance",
    ),
    ModelSpec(
        "bytedance/seedance-1.5-pro",
        "Seedance 1.5 pro",
        "byteplus",
        "seedance-1-5-pro-251215",
        (IMAGE_TO_VIDEO,),
        "seedance",
    ),
)

MODELS_BY_ID: dict[str, ModelSpec] = {m.id: m for m in MODELS}


def models_for(step_kind: str, mode: str) -> list[ModelSpec]:
    return [m for m in MODELS if step_kind in m.step_kinds and mode in m.modes]
