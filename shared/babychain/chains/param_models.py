"""The parameter schema of each model family (pydantic models): what a step's params may hold, checked once when a
run is created (`Family.validate`).

Its own module so that what only reads a family (the step executor, the providers: where the upstream image goes and
what a request asks for, `babychain.chains.families`) does not import pydantic at cold start.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, ValidationInfo, field_validator

from babychain.chains.families import parse_size
from babychain.errors import invalid_input
from babychain.media_types import IMAGE_TYPES
from babychain.security.media import MediaInput, UrlPolicy

Prompt = Annotated[str, Field(min_length=1, max_length=8192)]
# Media inputs (security.media): HTTPS URLs, plus inline data: URIs of the types where the provider documents them.
# BFL: "a URL or base64"; Seedream: data:image/<fmt>;base64 of jpeg or png; Seedance: data:image/...;base64; BabySea
# and the engine's own source_image_url: public URLs only.
MediaUrl = Annotated[str, MediaInput()]
BflImage = Annotated[str, MediaInput(data_types=IMAGE_TYPES)]
SeedreamImage = Annotated[str, MediaInput(data_types=("image/png", "image/jpeg"))]
SeedanceImage = Annotated[str, MediaInput(data_types=IMAGE_TYPES)]
# Seeds where the provider documents no range: a non-negative 32-bit signed integer, which every documented range
# (Seedream's -1..2^31-1, Seedance's -1..2^32-1) holds, so a failover to another route keeps the same seed.
Seed = Annotated[int | None, Field(ge=0, le=2**31 - 1)]
FLUX2_MAX_PIXELS = 2048 * 2048
SEEDREAM_MIN_PIXELS = 1280 * 720
SEEDREAM_MAX_PIXELS = 4096 * 4096
RATIOS = ("16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "9:21", "3:2", "2:3", "adaptive", "keep_ratio")


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Flux2Params(_Params):
    """FLUX.2 pro / max / klein (`POST /v1/flux-2-*`)."""

    prompt: Prompt
    input_image: BflImage | None = None
    input_image_2: BflImage | None = None
    input_image_3: BflImage | None = None
    input_image_4: BflImage | None = None
    seed: Seed = None
    width: Annotated[int | None, Field(ge=64, le=4096, multiple_of=16)] = None
    height: Annotated[int | None, Field(ge=64, le=4096, multiple_of=16)] = None
    safety_tolerance: Annotated[int | None, Field(ge=0, le=5)] = None
    output_format: Literal["jpeg", "png", "webp"] | None = None
    prompt_upsampling: bool | None = None

    @field_validator("height")
    @classmethod
    def _at_most_4_megapixels(cls, height: int | None, info: ValidationInfo) -> int | None:
        width = info.data.get("width")
        if height is not None and width is not None and width * height > FLUX2_MAX_PIXELS:
            raise ValueError(f"width x height may be at most {FLUX2_MAX_PIXELS} pixels (4 MP, e.g. 2048x2048)")
        return height


class Flux2FlexParams(Flux2Params):
    guidance: Annotated[float | None, Field(ge=1.5, le=10)] = None
    steps: Annotated[int | None, Field(ge=1, le=50)] = None


class KontextParams(_Params):
    """FLUX.1 Kontext pro / max."""

    prompt: Prompt
    input_image: BflImage | None = None
    seed: Seed = None
    aspect_ratio: Annotated[str | None, Field(pattern=r"^[1-9]\d?:[1-9]\d?$")] = None
    output_format: Literal["jpeg", "png"] | None = None
    prompt_upsampling: bool | None = None
    safety_tolerance: Annotated[int | None, Field(ge=0, le=6)] = None

    @field_validator("aspect_ratio")
    @classmethod
    def _between_21_9_and_9_21(cls, ratio: str | None) -> str | None:
        if ratio is not None:
            w, h = (int(part) for part in ratio.split(":"))
            if not 9 / 21 <= w / h <= 21 / 9:
                raise ValueError("must be between 21:9 and 9:21")
        return ratio


class Flux1Params(_Params):
    """FLUX1.1 [pro]: text-to-image only, 256-1440 in steps of 32."""

    prompt: Prompt
    seed: Seed = None
    width: Annotated[int | None, Field(ge=256, le=1440, multiple_of=32)] = None
    height: Annotated[int | None, Field(ge=256, le=1440, multiple_of=32)] = None
    prompt_upsampling: bool | None = None
    safety_tolerance: Annotated[int | None, Field(ge=0, le=6)] = None
    output_format: Literal["jpeg", "png"] | None = None


class OptimizePromptOptions(_Params):
    mode: Literal["standard", "fast"]


class SeedreamParams(_Params):
    """BytePlus Seedream (`POST /api/v3/images/generations`)."""

    prompt: Prompt
    # One image or a list of them (Seedream 4.0 takes up to 10, later versions up to 14).
    image: (
        Annotated[
            Annotated[SeedreamImage, Tag("single")]
            | Annotated[list[SeedreamImage], Field(min_length=1, max_length=14), Tag("list")],
            Discriminator(lambda value: "list" if isinstance(value, list) else "single"),
        ]
        | None
    ) = None
    size: Annotated[str | None, Field(pattern=r"^(1K|2K|4K|\d{2,5}x\d{2,5})$")] = None
    seed: Annotated[int | None, Field(ge=-1, le=2147483647)] = None
    watermark: bool | None = None
    response_format: Literal["url"] | None = None
    sequential_image_generation: Literal["disabled"] | None = None
    optimize_prompt_options: OptimizePromptOptions | None = None

    @field_validator("size")
    @classmethod
    def _documented_size(cls, size: str | None) -> str | None:
        w, h = parse_size(size)
        if w is not None and h is not None:
            if not SEEDREAM_MIN_PIXELS <= w * h <= SEEDREAM_MAX_PIXELS:
                raise ValueError("width x height must be between 1280x720 and 4096x4096 pixels in total")
            if not 1 / 16 <= w / h <= 16:
                raise ValueError("the aspect ratio must be between 1:16 and 16:1")
        return size


class ImageUrl(_Params):
    url: SeedanceImage


class TextItem(_Params):
    type: Literal["text"]
    text: Annotated[str, Field(min_length=1, max_length=4000)]


class ImageItem(_Params):
    type: Literal["image_url"]
    image_url: ImageUrl
    role: Literal["first_frame", "last_frame", "reference_image"] | None = None


class SeedanceParams(_Params):
    """BytePlus Seedance video task (`POST /api/v3/contents/generations/tasks`)."""

    content: Annotated[
        list[Annotated[TextItem | ImageItem, Field(discriminator="type")]], Field(min_length=1, max_length=8)
    ]
    ratio: Literal[RATIOS] | None = None  # type: ignore[valid-type]
    # 2-12 s; -1 lets Seedance 1.5 pro choose (which documents 4-12 for itself, but the contract's own example asks
    # it for 3 s, so the family keeps the common range).
    duration: Annotated[int | None, Field(ge=-1, le=12)] = None
    resolution: Literal["480p", "720p", "1080p"] | None = None
    seed: Annotated[int | None, Field(ge=-1, le=4294967295)] = None
    watermark: bool | None = None
    camera_fixed: bool | None = None
    generate_audio: bool | None = None
    return_last_frame: bool | None = None

    @field_validator("duration")
    @classmethod
    def _documented_duration(cls, duration: int | None) -> int | None:
        if duration in (0, 1):
            raise ValueError("must be -1 (the model decides) or 2 to 12 seconds")
        return duration

    @field_validator("content")
    @classmethod
    def _needs_prompt(cls, items: list[TextItem | ImageItem]) -> list[TextItem | ImageItem]:
        if not any(isinstance(item, TextItem) for item in items):
            raise ValueError('content needs a text item with the prompt: {"type": "text", "text": "..."}')
        return items


class BabySeaImageParams(_Params):
    """BabySea's unified fields for image models."""

    generation_prompt: Prompt
    generation_ratio: Annotated[str | None, Field(pattern=r"^([1-9]\d{0,4}:[1-9]\d{0,4}|match_input_image)$")] = None
    generation_output_format: Literal["png", "jpg", "jpeg", "webp"] | None = None
    generation_output_number: Annotated[int | None, Field(ge=1, le=4)] = None
    generation_input_file: Annotated[list[MediaUrl] | None, Field(min_length=1, max_length=14)] = None
    generation_seed: Seed = None
    generation_provider_order: Annotated[str | None, Field(max_length=200)] = None


class BabySeaVideoParams(_Params):
    generation_prompt: Prompt
    generation_duration: Annotated[int, Field(ge=1, le=15)]
    generation_ratio: Annotated[str | None, Field(pattern=r"^([1-9]\d{0,4}:[1-9]\d{0,4}|adaptive)$")] = None
    generation_resolution: Literal["480p", "720p", "1080p"] | None = None
    generation_generate_audio: bool | None = None
    generation_input_file: Annotated[list[MediaUrl] | None, Field(min_length=1, max_length=14)] = None
    generation_seed: Seed = None
    generation_provider_order: Annotated[str | None, Field(max_length=200)] = None


SCHEMAS: dict[str, type[_Params]] = {
    "flux2": Flux2Params,
    "flux2_flex": Flux2FlexParams,
    "flux_kontext": KontextParams,
    "flux1": Flux1Params,
    "seedream": SeedreamParams,
    "seedance": SeedanceParams,
    "babysea_image": BabySeaImageParams,
    "babysea_video": BabySeaVideoParams,
}


def validate(family: str, params: dict[str, Any], field: str, urls: UrlPolicy) -> dict[str, Any]:
    """`params` as `family`'s schema reads them; any violation is a 400 naming the field."""
    try:
        model = SCHEMAS[family].model_validate(params, context=urls.context())
    except ValidationError as exc:
        raise invalid_input(_describe(exc), _field_path(field, exc)) from exc
    return model.model_dump(exclude_none=True)


def _json_loc(loc: tuple[int | str, ...]) -> list[int | str]:
    """Pydantic's error location as a JSON path: without the tags it adds for the union member it tried."""
    parts: list[int | str] = []
    for i, part in enumerate(loc):
        before = loc[i - 1] if i > 0 else None
        if isinstance(before, str) and part in _FIELD_UNION_TAGS.get(before, ()):
            continue
        if isinstance(before, int) and part in _ITEM_UNION_TAGS and i + 1 < len(loc):
            continue
        parts.append(part)
    return parts


def _field_path(prefix: str, exc: ValidationError) -> str:
    path = prefix
    for part in _json_loc(exc.errors()[0]["loc"]):
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


# Seedance content items are tagged by their `type`; Seedream's `image` by whether it is one URL or a list.
_ITEM_UNION_TAGS = ("text", "image_url")
_FIELD_UNION_TAGS = {"image": ("single", "list")}


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = next((p for p in reversed(_json_loc(error["loc"])) if isinstance(p, str)), "params")
    if error["type"] == "missing":
        return f"{where} is required."
    if error["type"] == "extra_forbidden":
        return f"{where} is not a parameter of this model."
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}."
