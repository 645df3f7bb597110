"""Model families: each provider-native parameter schema, and where a producer's output goes in the next request.

A family knows three things about a request body: how to validate it (a pydantic model, in
`babychain.chains.param_models`, imported on first use), where the upstream image is injected (`inject_input`, the
handoff), and what it asks for in plain terms (`describe`, used by the local provider so a request written for BYOK
runs unchanged on one machine). Only creating a run validates: the step executor and the providers read families
without loading pydantic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from babychain.errors import invalid_input

if TYPE_CHECKING:  # the schemas are pydantic models: loaded by the first validation, not by every importer
    from babychain.chains.param_models import _Params
    from babychain.security.media import UrlPolicy


@dataclass(frozen=True)
class GenerationRequest:
    """What a request asks for, independent of the provider's field names."""

    prompt: str
    seed: int | None
    input_urls: list[str]
    width: int | None = None
    height: int | None = None
    output_format: str = "png"
    duration_seconds: float | None = None
    ratio: str | None = None


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    if size and "x" in size:
        w, h = size.split("x", 1)
        return int(w), int(h)
    return None, None


@dataclass(frozen=True)
class Family:
    name: str
    # The params field that carries the upstream image, named in errors when a caller sets it on a dependent step.
    input_field: str

    @property
    def schema(self) -> type[_Params]:
        """The family's pydantic model."""
        from babychain.chains.param_models import SCHEMAS

        return SCHEMAS[self.name]

    def validate(self, params: Any, field: str, *, urls: UrlPolicy) -> dict[str, Any]:
        """The params as the schema reads them; media fields are judged by `urls` (with DNS when it has a resolver).
        Any violation is a 400 naming the field."""
        if not isinstance(params, dict):
            raise invalid_input("Step params must be a JSON object.", field)
        from babychain.chains.param_models import validate

        return validate(self.name, params, field, urls)

    def input_urls(self, params: dict[str, Any]) -> list[str]:
        match self.name:
            case "seedance":
                return [
                    item["image_url"]["url"] for item in params.get("content", []) if item.get("type") == "image_url"
                ]
            case "seedream":
                image = params.get("image")
                return [image] if isinstance(image, str) else list(image or [])
            case "babysea_image" | "babysea_video":
                return list(params.get("generation_input_file") or [])
            case _:
                return [params[k] for k in sorted(params) if k.startswith("input_image") and params[k]]

    def inject_input(self, params: dict[str, Any], url: str) -> dict[str, Any]:
        """Returns a copy of `params` with the producer's durable output URL in this family's input field.

        A shallow copy: the input field is replaced (seedance's `content`, a new list), never changed in place, and
        every other value is shared with `params` (nothing changes either side: both only go to JSON)."""
        out = dict(params)
        match self.name:
            case "seedance":
                out["content"] = [
                    *out.get("content", []),
                    {"type": "image_url", "image_url": {"url": url}, "role": "first_frame"},
                ]
            case "seedream":
                out["image"] = url
            case "babysea_image" | "babysea_video":
                out["generation_input_file"] = [url]
            case _:
                out["input_image"] = url
        return out

    def describe(self, params: dict[str, Any]) -> GenerationRequest:
        urls = self.input_urls(params)
        match self.name:
            case "seedance":
                text = " ".join(i["text"] for i in params["content"] if i.get("type") == "text")
                duration = params.get("duration")
                return GenerationRequest(
                    prompt=text,
                    seed=params.get("seed"),
                    input_urls=urls,
                    output_format="mp4",
                    duration_seconds=float(duration) if duration and duration > 0 else 5.0,
                    ratio=params.get("ratio"),
                )
            case "seedream":
                w, h = parse_size(params.get("size"))
                return GenerationRequest(
                    prompt=params["prompt"],
                    seed=params.get("seed"),
                    input_urls=urls,
                    width=w,
                    height=h,
                    output_format="jpeg",
                )
            case "babysea_video":
                return GenerationRequest(
                    prompt=params["generation_prompt"],
                    seed=params.get("generation_seed"),
                    input_urls=urls,
                    output_format="mp4",
                    duration_seconds=float(params["generation_duration"]),
                    ratio=params.get("generation_ratio"),
                )
            case "babysea_image":
                return GenerationRequest(
                    prompt=params["generation_prompt"],
                    seed=params.get("generation_seed"),
                    input_urls=urls,
                    output_format=params.get("generation_output_format") or "png",
                )
            case _:
                return GenerationRequest(
                    prompt=params["prompt"],
                    seed=params.get("seed"),
                    input_urls=urls,
                    width=params.get("width"),
                    height=params.get("height"),
                    output_format=params.get("output_format") or "jpeg",
                )


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("flux2", "input_image"),
        Family("flux2_flex", "input_image"),
        Family("flux_kontext", "input_image"),
        Family("flux1", "input_image"),
        Family("seedream", "image"),
        Family("seedance", "content"),
        Family("babysea_image", "generation_input_file"),
        Family("babysea_video", "generation_input_file"),
    )
}


def babysea_params(request: GenerationRequest, step_kind: str) -> dict[str, Any]:
    """BabySea's unified fields for a request written in a provider-native schema (failover routes to BabySea)."""
    params: dict[str, Any] = {"generation_prompt": request.prompt}
    if request.input_urls:
        params["generation_input_file"] = list(request.input_urls)
    if request.seed is not None:
        params["generation_seed"] = request.seed
    if step_kind == "video":
        params["generation_duration"] = max(1, round(request.duration_seconds or 5))
        if request.ratio and request.ratio not in ("keep_ratio",):
            params["generation_ratio"] = request.ratio
    else:
        params["generation_output_format"] = (
            "jpg" if request.output_format in ("jpeg", "jpg") else request.output_format
        )
    return params
