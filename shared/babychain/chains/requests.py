"""Validation of a create-run request into a run plan: every error names the offending field."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from babychain.chains.catalog import MODELS_BY_ID, ModelSpec
from babychain.chains.kinds import IMAGE_TO_IMAGE, TEXT_TO_IMAGE
from babychain.chains.param_models import MediaUrl
from babychain.chains.templates import STEP_KINDS, ChainTemplate
from babychain.errors import UnsafeUrlError, invalid_input
from babychain.security.media import UrlPolicy
from babychain.security.params import check_json_bounds, check_no_credentials, check_step_params, has_suspect_key
from babychain.security.urls import Resolver, check_url

MAX_INPUT_BYTES = 64 * 1024
MAX_METADATA_BYTES = 16 * 1024
TOP_LEVEL_FIELDS = ("input", "webhook_url", "metadata")
_SOURCE_IMAGE_URL: TypeAdapter[str] = TypeAdapter(MediaUrl, config={"strict": True})


@dataclass(frozen=True)
class PlannedStep:
    step_index: int
    step_key: str
    step_kind: str
    model_identifier: str
    depends_on: list[str]
    params: dict[str, Any]

    def row(self) -> dict[str, Any]:
        return {
            "step_index": self.step_index,
            "step_key": self.step_key,
            "step_kind": self.step_kind,
            "model_identifier": self.model_identifier,
            "depends_on": self.depends_on,
            "params": self.params,
        }


@dataclass(frozen=True)
class RunPlan:
    input: dict[str, Any]
    metadata: dict[str, Any]
    webhook_url: str | None
    steps: list[PlannedStep]
    request_hash: str


# The canonical JSON of a request: sorted keys, no spaces, ASCII only (so its length in characters is its length in
# bytes, and sorting keys does not change it: the size checks read it too). One encoder, not one per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


def request_hash(slug: str, body: dict[str, Any]) -> str:
    """Fingerprint of what the caller asked for; key order does not matter. Stored with each run and compared on an
    Idempotency-Key replay, so its text must never change: sha256 of `{"body":<body>,"chain":<slug>}` canonical."""
    return _hash_of(slug, body, {})


def _hash_of(slug: str, body: dict[str, Any], encoded: dict[str, str]) -> str:
    """`request_hash`, with the body's members found in `encoded` (their canonical JSON) not encoded again: the text
    hashed is the one `_CANONICAL({"chain": slug, "body": body})` gives."""
    members = ",".join(
        f"{_CANONICAL(key)}:{encoded[key] if key in encoded else _CANONICAL(body[key])}" for key in sorted(body)
    )
    canonical = f'{{"body":{{{members}}},"chain":{_CANONICAL(slug)}}}'
    return hashlib.sha256(canonical.encode()).hexdigest()


def plan_run(
    template: ChainTemplate, body: Any, *, mode: str, resolver: Resolver, allow_loopback_http: bool
) -> RunPlan:
    raw_input, metadata, encoded, suspect = _input_and_metadata(body)
    # Media fields are typed in the model schemas; validating them under this policy applies the URL rules (DNS too).
    steps = _plan_steps(template, raw_input, mode, UrlPolicy(resolver, allow_loopback_http), suspect)
    webhook_url = body.get("webhook_url") or None
    if webhook_url is not None:
        if not isinstance(webhook_url, str):
            raise invalid_input("webhook_url must be a string.", "webhook_url", code="invalid_callback_url")
        _check_url(webhook_url, "webhook_url", resolver, allow_loopback_http, "invalid_callback_url")
    return RunPlan(
        input=raw_input,
        metadata=metadata,
        webhook_url=webhook_url,
        steps=steps,
        request_hash=_hash_of(template.slug, body, encoded),
    )


def _input_and_metadata(body: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, str], bool]:
    """The body's `input` and `metadata`, each a JSON object within its size and shape bounds, the canonical JSON
    of those the body holds (measured for the size limits; the request hash reuses it), and whether any key in
    `input` is credential-like or provider-controlled (if none is, no step's params need walking for one)."""
    if not isinstance(body, dict):
        raise invalid_input("Request body must be a JSON object.", code="invalid_request")
    for key in body:
        if key not in TOP_LEVEL_FIELDS:
            raise invalid_input(
                f"Unknown field {key!r}; expected {', '.join(TOP_LEVEL_FIELDS)}.", key, code="invalid_request"
            )
    raw_input = body.get("input")
    if not isinstance(raw_input, dict):
        raise invalid_input("input is required and must be a JSON object.", "input")
    encoded = {"input": _CANONICAL(raw_input)}
    if len(encoded["input"]) > MAX_INPUT_BYTES:
        raise invalid_input(f"input is larger than {MAX_INPUT_BYTES} bytes.", "input")
    keys: set[str] = set()
    check_json_bounds(raw_input, "input", keys=keys)
    given = body.get("metadata")
    metadata = given or {}
    if not isinstance(metadata, dict):
        raise invalid_input("metadata must be a JSON object.", "metadata", code="invalid_request")
    metadata_text = _CANONICAL(metadata)
    if len(metadata_text) > MAX_METADATA_BYTES:
        raise invalid_input(f"metadata is larger than {MAX_METADATA_BYTES} bytes.", "metadata", code="invalid_request")
    if given:  # the body's own object (not the {} that stands in for a null, empty or missing one)
        encoded["metadata"] = metadata_text
    check_json_bounds(metadata, "metadata")
    check_no_credentials(metadata, "metadata")
    return raw_input, metadata, encoded, has_suspect_key(keys)


def _check_url(url: str, field: str, resolver: Resolver, allow_loopback_http: bool, code: str) -> None:
    try:
        check_url(url, resolver=resolver, allow_loopback_http=allow_loopback_http, field=field)
    except UnsafeUrlError as exc:
        raise invalid_input(exc.message, field, code=code) from exc


def _plan_steps(
    template: ChainTemplate, raw_input: dict[str, Any], mode: str, urls: UrlPolicy, suspect: bool
) -> list[PlannedStep]:
    chain_models = _chain_models(template, raw_input)
    steps: list[PlannedStep] = []
    for index, step_key in enumerate(template.step_keys):
        model = _step_model(step_key, chain_models, mode)
        params = _step_params(raw_input, index, step_key, model, mode, urls, suspect)
        steps.append(PlannedStep(index, step_key, STEP_KINDS[step_key], model.id, template.depends_on(index), params))
    return steps


def _chain_models(template: ChainTemplate, raw_input: dict[str, Any]) -> dict[str, Any]:
    """`input.chain_models`, after checking that input names only this template's fields and steps."""
    allowed = {"chain_models", *(f"{k}_params" for k in template.step_keys)}
    if template.step_keys[0] == IMAGE_TO_IMAGE:
        allowed.add("source_image_url")
    for key in raw_input:
        if key not in allowed:
            raise invalid_input(
                f"Unknown input field {key!r} for {template.slug}; expected {', '.join(sorted(allowed))}.",
                f"input.{key}",
            )
    chain_models = raw_input.get("chain_models")
    if not isinstance(chain_models, dict):
        raise invalid_input("input.chain_models is required and must name a model for each step.", "input.chain_models")
    wanted = {f"{k}_model" for k in template.step_keys}
    for key in chain_models:
        if key not in wanted:
            raise invalid_input(
                f"{template.slug} has no step for {key!r}; expected {', '.join(sorted(wanted))}.",
                f"input.chain_models.{key}",
            )
    return chain_models


def _step_model(step_key: str, chain_models: dict[str, Any], mode: str) -> ModelSpec:
    model_field = f"input.chain_models.{step_key}_model"
    model_id = chain_models.get(f"{step_key}_model")
    if not isinstance(model_id, str) or not model_id:
        raise invalid_input(f"{model_field} is required.", model_field)
    model = MODELS_BY_ID.get(model_id)
    if model is None:
        raise invalid_input(
            f"Unknown model {model_id!r}. GET /api/v1/models lists the catalog.",
            model_field,
            code="unsupported_model_identifier",
        )
    if step_key not in model.step_kinds:
        raise invalid_input(
            f"{model_id} cannot run the {step_key} step; it supports {', '.join(model.step_kinds)}.", model_field
        )
    if mode not in model.modes:
        raise invalid_input(f"{model_id} is not available in {mode} mode.", model_field)
    return model


def _step_params(
    raw_input: dict[str, Any], index: int, step_key: str, model: ModelSpec, mode: str, urls: UrlPolicy, suspect: bool
) -> dict[str, Any]:
    """The step's params, validated by the model's schema; only a chain's first step may name its input image.
    `suspect`: some key in `input` is credential-like or provider-controlled (else the params hold none)."""
    params_field = f"input.{step_key}_params"
    params = raw_input.get(f"{step_key}_params")
    if params is None:
        raise invalid_input(f"{params_field} is required.", params_field)
    if suspect or not isinstance(params, dict):
        check_step_params(params, params_field)
    family = model.family(mode)
    params = family.validate(params, params_field, urls=urls)
    given_inputs = family.input_urls(params)
    if index > 0 and given_inputs:
        raise invalid_input(
            f"BabyChain supplies the {step_key} step's input from the previous step; remove {family.input_field}.",
            f"{params_field}.{family.input_field}",
        )
    if step_key == TEXT_TO_IMAGE and given_inputs:
        raise invalid_input(
            "text_to_image takes no input image; use chain2 to start from an image.",
            f"{params_field}.{family.input_field}",
        )
    if index == 0 and step_key == IMAGE_TO_IMAGE:
        source = _source_image(raw_input, urls)
        params = _with_source_image(source, params, given_inputs, params_field, family.input_field, model.id, mode)
    return params


def _source_image(raw_input: dict[str, Any], urls: UrlPolicy) -> str | None:
    """`input.source_image_url`, a media URL (HTTPS, public; no data: URIs: it is the engine's own field)."""
    source = raw_input.get("source_image_url")
    if source is None:
        return None
    try:
        return _SOURCE_IMAGE_URL.validate_python(source, context=urls.context())
    except ValidationError as exc:
        message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise invalid_input(f"source_image_url: {message}.", "input.source_image_url") from None


def _with_source_image(
    source: str | None,
    params: dict[str, Any],
    given: list[str],
    params_field: str,
    input_field: str,
    model_id: str,
    mode: str,
) -> dict[str, Any]:
    if source is not None and given:
        raise invalid_input(
            f"Give the source image once: either input.source_image_url or {params_field}.{input_field}.",
            "input.source_image_url",
        )
    if source is None and not given:
        raise invalid_input(
            f"image_to_image needs a source image: set input.source_image_url or "
            f"{params_field}.{input_field} to an HTTPS image URL.",
            f"{params_field}.{input_field}",
        )
    if source is None:
        return params
    return MODELS_BY_ID[model_id].family(mode).inject_input(params, source)
