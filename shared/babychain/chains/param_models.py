"""The parameter schema of each model family (pydantic models): what a step's params may hold, checked once when a
run is created (`Family.validate`).

Its own module so that what only reads a family (the step executor, the providers: where the upstream image goes and
what a request asks for, `babychain.chains.families`) does not import pydantic at cold start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, NoReturn, Union, get_args, get_origin

from annotated_types import Ge, Le, MaxLen, MinLen, MultipleOf
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo

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
        return _FAST[family](params)
    except _Defer:
        pass  # pydantic decides (and words the error)
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


# ----------------------------------------------------------------------------------------------- the direct check

# The common request (plain strings, integers, booleans, literals, Seedance's text items) is checked directly against
# the rules read from the models below, and dumped as `model_dump(exclude_none=True)` would dump it, without pydantic's
# round trip (a model built, then dumped: most of a create's validation time). Whatever the direct check is not sure
# of — a media input (its URL policy and DNS), a pattern, a float, any rule it does not know, any violation — it
# leaves to pydantic, which then accepts or words the error exactly as before. So it never refuses anything itself:
# tests/unit/test_param_fast_path.py compares it with pydantic over generated params.


class _Defer(Exception):
    """The direct check cannot vouch for these params: pydantic decides."""


def _defer(*_: Any) -> NoReturn:
    raise _Defer


_Check = Callable[[Any], Any]  # a value → its dump; raises _Defer when unsure


def _bounds(metadata: list[Any]) -> tuple[int | None, int | None, int | None, int | None, int | None] | None:
    """(ge, le, multiple_of, min_length, max_length) of a field's constraints; None if it has any other."""
    ge = le = multiple_of = min_length = max_length = None
    for rule in metadata:
        if type(rule) is Ge and type(rule.ge) is int:
            ge = rule.ge
        elif type(rule) is Le and type(rule.le) is int:
            le = rule.le
        elif type(rule) is MultipleOf and type(rule.multiple_of) is int:
            multiple_of = rule.multiple_of
        elif type(rule) is MinLen:
            min_length = rule.min_length
        elif type(rule) is MaxLen:
            max_length = rule.max_length
        else:
            return None
    return ge, le, multiple_of, min_length, max_length


def _value_check(kind: Any, metadata: list[Any]) -> _Check:
    """The check of one (non-None) value of type `kind` under `metadata`; `_defer` for what it does not know."""
    bounds = _bounds(metadata)
    if bounds is None:
        return _defer
    if kind is str or kind is int:
        return _bounded_check(kind, *bounds)
    if metadata:
        return _defer
    if kind is bool:

        def check_bool(value: Any) -> Any:
            if type(value) is not bool:
                raise _Defer
            return value

        return check_bool
    if get_origin(kind) is Literal and all(type(v) is str for v in get_args(kind)):
        allowed = frozenset(get_args(kind))

        def check_literal(value: Any) -> Any:
            if type(value) is not str or value not in allowed:
                raise _Defer
            return value

        return check_literal
    if isinstance(kind, type) and issubclass(kind, _Params):
        return _model_check(kind)
    return _defer


def _bounded_check(
    kind: type, ge: int | None, le: int | None, multiple_of: int | None, min_length: int | None, max_length: int | None
) -> _Check:
    """A string within its lengths (in characters, as pydantic counts), or an integer within its bounds and step."""
    if kind is str:
        if ge is not None or le is not None or multiple_of is not None:
            return _defer
        low = min_length or 0

        def check_str(value: Any) -> Any:
            if type(value) is not str or len(value) < low or (max_length is not None and len(value) > max_length):
                raise _Defer
            return value

        return check_str
    if min_length is not None or max_length is not None:
        return _defer

    def check_int(value: Any) -> Any:
        if (
            type(value) is not int  # strict: not a bool, not a float
            or (ge is not None and value < ge)
            or (le is not None and value > le)
            or (multiple_of is not None and value % multiple_of)
        ):
            raise _Defer
        return value

    return check_int


def _list_check(kind: Any, metadata: list[Any]) -> _Check:
    """`list[Annotated[A | B, Field(discriminator=...)]]` of models within MinLen/MaxLen (Seedance's content)."""
    bounds = _bounds(metadata)
    (item,) = get_args(kind)
    if bounds is None or bounds[:3] != (None, None, None) or get_origin(item) is not Annotated:
        return _defer
    member_union, *item_meta = get_args(item)
    if len(item_meta) != 1 or not isinstance(item_meta[0], FieldInfo) or type(item_meta[0].discriminator) is not str:
        return _defer
    tag: str = item_meta[0].discriminator
    members: dict[str, _Check] = {}
    for member in get_args(member_union):
        if not (isinstance(member, type) and issubclass(member, _Params)):
            return _defer
        literal = member.model_fields[tag].annotation
        if get_origin(literal) is not Literal:
            return _defer
        for value in get_args(literal):
            members[value] = _model_check(member)
    low, high = bounds[3] or 0, bounds[4]

    def check_list(value: Any) -> Any:
        if type(value) is not list or len(value) < low or (high is not None and len(value) > high):
            raise _Defer
        out = []
        for element in value:
            if type(element) is not dict or type(which := element.get(tag)) is not str:
                raise _Defer
            out.append(members.get(which, _defer)(element))
        return out

    return check_list


def _field_check(info: FieldInfo) -> tuple[_Check, bool]:
    """A field's value check, and whether None is allowed (an optional field: None is dropped from the dump)."""
    kind = info.annotation
    optional = False
    if get_origin(kind) in (Union, type(int | None)) and type(None) in get_args(kind):
        members = [a for a in get_args(kind) if a is not type(None)]
        if len(members) != 1:
            return _defer, True
        kind, optional = members[0], True
    if get_origin(kind) is list:
        return _list_check(kind, info.metadata), optional
    if get_origin(kind) is Annotated:  # media inputs and tagged unions: pydantic's
        return _defer, optional
    return _value_check(kind, info.metadata), optional


# The models' own validators, as the direct check reads them: each a check of the dump so far that raises _Defer when
# the validator could refuse. A validator of a field the direct check never vouches for needs none (the field's
# presence defers already); a model with any other validator is pydantic's alone.
def _flux2_pixels(out: dict[str, Any]) -> None:
    width, height = out.get("width"), out.get("height")
    if width is not None and height is not None and width * height > FLUX2_MAX_PIXELS:
        raise _Defer


def _seedance_duration(out: dict[str, Any]) -> None:
    if out.get("duration") in (0, 1):
        raise _Defer


def _seedance_prompt(out: dict[str, Any]) -> None:
    if not any(item["type"] == "text" for item in out["content"]):
        raise _Defer


_VALIDATORS: dict[str, Callable[[dict[str, Any]], None] | None] = {
    "_at_most_4_megapixels": _flux2_pixels,
    "_documented_duration": _seedance_duration,
    "_needs_prompt": _seedance_prompt,
    "_between_21_9_and_9_21": None,  # aspect_ratio has a pattern: never vouched for
    "_documented_size": None,  # size has a pattern: never vouched for
}
_MODEL_CHECKS: dict[type[_Params], _Check] = {}


def _mirrored_validators(model: type[_Params]) -> list[Callable[[dict[str, Any]], None]] | None:
    """The mirrors of a model's validators; None when the model has one the direct check does not know, or settings
    other than strict with no extra fields and no aliases."""
    config = model.model_config
    decorators = model.__pydantic_decorators__
    if (
        config.get("extra") != "forbid"
        or config.get("strict") is not True
        or decorators.model_validators
        or decorators.validators
        or decorators.root_validators
        or any(f.alias or f.validation_alias for f in model.model_fields.values())
        or any(name not in _VALIDATORS for name in decorators.field_validators)
    ):
        return None
    return [m for name in decorators.field_validators if (m := _VALIDATORS[name]) is not None]


def _model_check(model: type[_Params]) -> _Check:
    """A model's params (a dict) → `model_dump(exclude_none=True)` of it, for what the direct check is sure of."""
    if model in _MODEL_CHECKS:
        return _MODEL_CHECKS[model]
    after = _mirrored_validators(model)
    if after is None:
        return _defer
    fields = []
    for name, info in model.model_fields.items():
        check, optional = _field_check(info)
        if info.is_required() == optional or (optional and info.default is not None):
            return _defer  # only `x: T` (required) and `x: T | None = None` are read here
        fields.append((name, check, optional))
    known = frozenset(model.model_fields)

    def check_model(value: Any) -> Any:
        if type(value) is not dict or not known.issuperset(value):
            raise _Defer
        out: dict[str, Any] = {}
        for name, check, optional in fields:
            given = value.get(name)
            if given is None:
                if not optional:
                    raise _Defer
                continue
            out[name] = check(given)
        for mirror in after:
            mirror(out)
        return out

    _MODEL_CHECKS[model] = check_model
    return check_model


_FAST: dict[str, _Check] = {family: _model_check(schema) for family, schema in SCHEMAS.items()}
