"""The API's routes as data: each parameter's type and constraints, the create body's envelope, each route's security
and documented answers, without pydantic.

Two readers: at run time `babychain.api.http.Api` checks a request against these with the small checks below (the
API handlers start without pydantic, which costs about 60 ms of every cold start); `babychain.api.openapi` turns the
same declarations into Powertools' typed parameters and the pydantic models of `babychain.api.schemas` to generate
the OpenAPI document. The checks give pydantic's own messages (tests/unit/test_route_checks.py compares them with
pydantic's on generated values), so a request gets the same 400 as when Powertools validated it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from babychain.chains.templates import TEMPLATES
from babychain.errors import ApiError
from babychain.security.urls import MAX_URL_LENGTH

SECURITY_SCHEME = "ApiKey"

RunStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
StepStatus = Literal["queued", "running", "succeeded", "failed", "canceled", "skipped"]
Mode = Literal["local", "byok", "babysea"]
# Slugs and their aliases, as the path and the chain_slug filter take them.
ChainSlug = Literal["chain1", "chain2", "chain3", "chain101", "chain202", "chain303"]

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9_.:-]{1,255}$"


def requires(scope: str) -> list[dict[str, list[str]]]:
    """A route's security requirement: a bearer API key with `scope`. The route's prologue enforces the scope it
    names, so the document and the check are one declaration."""
    return [{SECURITY_SCHEME: [scope]}]


PUBLIC: list[dict[str, list[str]]] = [{}]  # no key needed (an empty requirement object)


def required_scope(security: list[dict[str, list[str]]]) -> str | None:
    """The scope a security requirement names; None on a public route."""
    for requirement in security:
        for scope in requirement.get(SECURITY_SCHEME, []):
            return scope
    return None


# -------------------------------------------------------------------------------------------------------- answers

_INTEGER = {"type": "integer", "minimum": 0}
RATE_LIMIT_HEADERS: dict[str, Any] = {
    "RateLimit-Limit": {"description": "Requests allowed per window (when rate limiting is on).", "schema": _INTEGER},
    "RateLimit-Remaining": {"description": "Requests left in the window.", "schema": _INTEGER},
    "RateLimit-Reset": {"description": "Seconds until the window has room again.", "schema": _INTEGER},
}
_ERRORS: dict[int, str] = {
    400: "Invalid request: the error names the offending field where there is one.",
    401: "No API key, or not a valid one (`WWW-Authenticate: Bearer`).",
    403: "The key lacks the route's scope.",
    404: "No such resource (another caller's run looks exactly like a missing one).",
    409: "The Idempotency-Key was used with a different request.",
    413: "The body is larger than 256 KiB.",
    429: "Over the key's rate limit: retry after `Retry-After` seconds.",
    500: "Server misconfigured or an unexpected error (no details).",
    503: "The database is unreachable; retry soon.",
}
AUTHENTICATED_ERRORS = (401, 403, 429, 500, 503)


def _error(status: int, *, authenticated: bool) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": _ERRORS[status], "content": {"application/json": {"model": "Error"}}}
    headers = dict(RATE_LIMIT_HEADERS) if authenticated and status not in (401,) else {}
    if status == 429:
        headers["Retry-After"] = {"description": "Seconds to wait before retrying.", "schema": _INTEGER}
    if status == 401:
        headers["WWW-Authenticate"] = {"description": "`Bearer`.", "schema": {"type": "string"}}
    if headers:
        answer["headers"] = headers
    return answer


def answers(
    status: int,
    model: str,
    description: str,
    *errors: int,
    authenticated: bool = True,
    headers: dict[str, Any] | None = None,
    links: dict[str, Any] | None = None,
    example: Any = None,
) -> dict[int, Any]:
    """A route's documented answers: the success (the `babychain.api.schemas` model named `model`, with the
    rate-limit headers on authenticated routes) and every error status it can give, all in the one error shape. The
    models are named, not imported: the document's builder resolves them (`babychain.api.openapi`)."""
    success_headers = {**(RATE_LIMIT_HEADERS if authenticated else {}), **(headers or {})}
    content: dict[str, Any] = {"model": model}
    if example is not None:
        content["example"] = example
    success: dict[str, Any] = {"description": description, "content": {"application/json": content}}
    if success_headers:
        success["headers"] = success_headers
    if links:
        success["links"] = links
    documented = {status: success}
    for code in sorted({*errors, *(AUTHENTICATED_ERRORS if authenticated else (500, 503))}):
        documented[code] = _error(code, authenticated=authenticated)
    return documented


# -------------------------------------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Param:
    """Where a handler parameter comes from and what it must be (the metadata of its `Annotated` type)."""

    where: Literal["path", "query", "header"]
    description: str
    alias: str | None = None
    pattern: str | None = None
    ge: int | None = None
    le: int | None = None
    max_length: int | None = None
    # Documented, not checked: any other value is a 404 of the engine's (a resource that does not exist).
    documented_enum: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Body:
    """The JSON body, checked as the `babychain.api.schemas` model named `model` would (strict, no unknown fields);
    `fields` maps each field to (its type, whether it is required, its max_length)."""

    model: str
    fields: dict[str, tuple[Any, bool, int | None]]
    openapi_examples: dict[str, Any] = field(default_factory=dict)


RunId = Annotated[str, Param("path", "The run's id (a canonical UUID).", pattern=UUID_PATTERN)]
# Any other value is a 404 `chain_not_found` (a resource that does not exist), not a 400: hence enum, not a check.
Slug = Annotated[
    str,
    Param(
        "path",
        "The chain template: its slug or its alias.",
        documented_enum=tuple(n for t in TEMPLATES for n in (t.slug, t.alias)),
    ),
]
IdempotencyKey = Annotated[
    str | None,
    Param(
        "header",
        "Same key and same body: the original run again (`Idempotency-Replayed: true`); same key with another body: "
        "409. Scoped to your key.",
        alias="Idempotency-Key",
        pattern=IDEMPOTENCY_KEY_PATTERN,
    ),
]
Limit = Annotated[int, Param("query", "Runs per page.", ge=1, le=100)]
Cursor = Annotated[
    str | None, Param("query", "`next_cursor` of the previous page (signed for your key).", max_length=512)
]
StatusFilter = Annotated[RunStatus | None, Param("query", "Only runs in this status.")]
ChainFilter = Annotated[ChainSlug | None, Param("query", "Only runs of this chain (slug or alias).")]
PathText = Annotated[str, Param("path", "")]  # a path segment the handler reads as it is (the provider webhooks)


def create_body(openapi_examples: dict[str, Any]) -> Body:
    return Body(
        "CreateRunRequest",
        {"input": (dict, True, None), "webhook_url": (str, False, MAX_URL_LENGTH), "metadata": (dict, False, None)},
        openapi_examples,
    )


# -------------------------------------------------------------------------------------------------------- checks

# The fields whose errors have their own code (the rest are `invalid_request`).
FIELD_CODES = {
    "run_id": "invalid_run_id",
    "Idempotency-Key": "invalid_idempotency_key",
    "input": "invalid_chain_input",
    "webhook_url": "invalid_callback_url",
}


class Invalid(Exception):
    """One failed check: pydantic's message for it, the field (None: the body as a whole) and whether the field is
    unknown (such an error is reported first: it often explains a missing one, `inputs` for `input`)."""

    def __init__(self, message: str, field: str | None, *, extra: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra

    def as_api_error(self, *, body: bool = False) -> ApiError:
        if not self.field:  # the body as a whole (or a body field named "")
            return ApiError(400, "invalid_request", f"Request body: {self.message}." if body else f"{self.message}.")
        code = FIELD_CODES.get(self.field, "invalid_request")
        return ApiError(400, code, f"{self.field}: {self.message}.", field=self.field)


# What Rust's str::trim takes off (Unicode White_Space), as pydantic-core does before parsing an integer.
_WHITE_SPACE = "".join(map(chr, (*range(9, 14), 32, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029)))
_WHITE_SPACE += "\u202f\u205f\u3000"
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*(?:\.0+)?")


@functools.lru_cache(maxsize=64)
def _pattern(pattern: str) -> re.Pattern[str]:
    # pydantic's (Rust) `$` matches only at the very end; Python's also before a final newline.
    return re.compile(pattern.removesuffix("$") + r"\Z" if pattern.endswith("$") else pattern)


def _literal_message(values: tuple[Any, ...]) -> str:
    shown = [repr(v) for v in values]
    listed = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"
    return f"Input should be {listed}"


@functools.lru_cache(maxsize=64)  # a handler's few annotations, asked about on every request
def _split_optional(annotation: Any) -> tuple[Any, bool]:
    """`X | None` → (X, True); X → (X, False)."""
    if get_origin(annotation) in (Union, type(int | None)):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1 and len(get_args(annotation)) == 2:
            return members[0], True
    return annotation, False


def check_value(annotation: Any, spec: Param, value: Any, name: str) -> Any:
    """One parameter's value (a string, or a list when the query repeats the name) as the handler takes it; raises
    `Invalid` with the message pydantic gives for the same value."""
    kind, _ = _split_optional(annotation)
    if get_origin(kind) is Literal:
        allowed = get_args(kind)
        if value not in allowed:
            raise Invalid(_literal_message(allowed), name)
        return value
    if kind is int:
        if not isinstance(value, str):
            raise Invalid("Input should be a valid integer", name)
        text = value.strip(_WHITE_SPACE)
        if not _INTEGER_TEXT.fullmatch(text):
            raise Invalid("Input should be a valid integer, unable to parse string as an integer", name)
        number = int(text.split(".")[0])
        if spec.ge is not None and number < spec.ge:
            raise Invalid(f"Input should be greater than or equal to {spec.ge}", name)
        if spec.le is not None and number > spec.le:
            raise Invalid(f"Input should be less than or equal to {spec.le}", name)
        return number
    if not isinstance(value, str):
        raise Invalid("Input should be a valid string", name)
    if spec.max_length is not None and len(value) > spec.max_length:
        plural = "" if spec.max_length == 1 else "s"
        raise Invalid(f"String should have at most {spec.max_length} character{plural}", name)
    if spec.pattern is not None and not _pattern(spec.pattern).search(value):
        raise Invalid(f"String should match pattern '{spec.pattern}'", name)
    return value


def check_body(spec: Body, body: Any) -> list[Invalid]:
    """The body's envelope as the strict pydantic model would check it: every error, in pydantic's order."""
    if not isinstance(body, dict):
        if body is None:
            return [Invalid("Field required", None)]
        return [Invalid(f"Input should be a valid dictionary or instance of {spec.model}", None)]
    errors: list[Invalid] = []
    for name, (kind, required, max_length) in spec.fields.items():
        if name not in body:
            if required:
                errors.append(Invalid("Field required", name))
            continue
        value = body[name]
        if value is None and not required:
            continue
        if kind is dict and not isinstance(value, dict):
            errors.append(Invalid("Input should be a valid dictionary", name))
        elif kind is str and not isinstance(value, str):
            errors.append(Invalid("Input should be a valid string", name))
        elif max_length is not None and len(value) > max_length:
            errors.append(Invalid(f"String should have at most {max_length} characters", name))
    errors += [Invalid("Extra inputs are not permitted", name, extra=True) for name in body if name not in spec.fields]
    return errors


def parameter_spec(annotation: Any) -> Param | Body | None:
    """The `Param` or `Body` of an `Annotated` handler parameter; None for anything else."""
    if get_origin(annotation) is Annotated:
        for meta in annotation.__metadata__:
            if isinstance(meta, Param | Body):
                return meta
    return None
