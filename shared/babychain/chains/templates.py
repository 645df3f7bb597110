"""The chain templates. Slugs, aliases, step keys and the version string are part of the public contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from babychain.chains.kinds import IMAGE_TO_IMAGE, IMAGE_TO_VIDEO, TEXT_TO_IMAGE
from babychain.security.urls import MAX_URL_LENGTH

CHAIN_VERSION = "2026-05-23"

STEP_KINDS = {TEXT_TO_IMAGE: "image", IMAGE_TO_IMAGE: "image", IMAGE_TO_VIDEO: "video"}


@dataclass(frozen=True)
class ChainTemplate:
    slug: str
    alias: str
    title: str
    step_keys: tuple[str, ...]

    @property
    def version(self) -> str:
        return CHAIN_VERSION

    def depends_on(self, index: int) -> list[str]:
        return [self.step_keys[index - 1]] if index > 0 else []

    def summary(self, mode: str) -> dict[str, Any]:
        # The catalog and its pydantic schemas are imported here, by the one route that lists templates: finding a
        # template (listing runs by chain) must not load them at cold start.
        from babychain.chains.catalog import models_for

        return {
            "object": "chain_template",
            "slug": self.slug,
            "alias": self.alias,
            "version": self.version,
            "title": self.title,
            "steps": [
                {
                    "key": key,
                    "kind": STEP_KINDS[key],
                    "depends_on": self.depends_on(i),
                    "model_field": f"input.chain_models.{key}_model",
                    "params_field": f"input.{key}_params",
                    "allowed_models": [m.id for m in models_for(key, mode)],
                    "params_schemas": {m.id: m.family(mode).schema.model_json_schema() for m in models_for(key, mode)},
                }
                for i, key in enumerate(self.step_keys)
            ],
            "input_fields": [
                {
                    "name": "chain_models",
                    "type": "object",
                    "required": True,
                    "description": "The model for each step: " + ", ".join(f"{k}_model" for k in self.step_keys),
                },
                *[
                    {
                        "name": f"{k}_params",
                        "type": "object",
                        "required": True,
                        "description": f"Parameters of the {k} step, in the selected model's schema.",
                    }
                    for k in self.step_keys
                ],
                *(
                    [
                        {
                            "name": "source_image_url",
                            "type": "string",
                            "format": "uri",
                            "maxLength": MAX_URL_LENGTH,
                            "required": False,
                            "description": "Caller-supplied HTTPS image for the first step (or set it in the step params).",  # noqa: E501
                        }
                    ]
                    if self.step_keys[0] == IMAGE_TO_IMAGE
                    else []
                ),
            ],
        }


TEMPLATES: tuple[ChainTemplate, ...] = (
    ChainTemplate("chain1", "chain101", "Text to image, then image to video", (TEXT_TO_IMAGE, IMAGE_TO_VIDEO)),
    ChainTemplate("chain2", "chain202", "Image to image, then image to video", (IMAGE_TO_IMAGE, IMAGE_TO_VIDEO)),
    ChainTemplate(
        "chain3",
        "chain303",
        "Text to image, image to image, then image to video",
        (TEXT_TO_IMAGE, IMAGE_TO_IMAGE, IMAGE_TO_VIDEO),
    ),
)

_BY_SLUG = {t.slug: t for t in TEMPLATES} | {t.alias: t for t in TEMPLATES}


def find_template(slug: str) -> ChainTemplate | None:
    return _BY_SLUG.get(slug)
