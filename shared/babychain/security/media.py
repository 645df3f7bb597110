"""Media inputs: the one schema type of every field that carries a caller's image.

A media field holds an HTTPS URL without credentials, at most 2048 characters, nothing around it, whose host is
public (plain HTTP only to loopback, and only under the development setting `allow_loopback_http`), or, only in the
fields whose provider documents inline images, a `data:image/<type>;base64,` URI of a listed type whose bytes are
that type, within `MAX_DATA_URI_LENGTH`. Anything else fails validation on that field, so the API answers 400 naming
it. Every scheme but https, http and data is refused, and so are scheme-relative forms (`//host/…`).

The URL rules live in `security.urls` (one place). With a `UrlPolicy` that has a resolver in the validation context
(the create path passes one), the type runs `check_url`, which judges every DNS answer, as create always did; without
one it runs `check_url_form`, every rule that needs no DNS (an IP literal's address included).

    Image = Annotated[str, MediaInput(data_types=("image/png", "image/jpeg"))]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler, ValidationInfo
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from babychain.errors import UnsafeUrlError
from babychain.media_types import MediaRefused, parse_data_uri
from babychain.security.urls import MAX_URL_LENGTH, Resolver, check_url, check_url_form

# Inline images must also fit the edge's bound on any one string (check_json_bounds); larger ones go by URL.
MAX_DATA_URI_LENGTH = 8192
_POLICY = "babychain_url_policy"


@dataclass(frozen=True)
class UrlPolicy:
    """How media URLs are judged during validation: `resolver` None checks the form only (no DNS)."""

    resolver: Resolver | None = None
    allow_loopback_http: bool = False

    def context(self) -> dict[str, Any]:
        """The pydantic validation context that carries this policy to every media field."""
        return {_POLICY: self}


def check_media_input(value: str, *, data_types: tuple[str, ...] = (), policy: UrlPolicy | None = None) -> str:
    """`value` if it is an acceptable media input (see the module docstring); ValueError saying why otherwise."""
    policy = policy or UrlPolicy()
    if value != value.strip():
        raise ValueError("must not start or end with whitespace")
    if value.startswith("//"):
        raise ValueError("must start with https:// (scheme-relative URLs are not accepted)")
    scheme = value.split(":", 1)[0].lower() if ":" in value else ""
    if scheme == "data":
        _check_data_uri(value, data_types)
        return value
    if scheme not in ("http", "https"):
        alternative = f" or a data:image/({_subtypes(data_types)});base64 URI" if data_types else ""
        raise ValueError(f"must be an https:// URL{alternative}")
    try:
        if policy.resolver is None:
            check_url_form(value, allow_loopback_http=policy.allow_loopback_http)
        else:
            check_url(value, resolver=policy.resolver, allow_loopback_http=policy.allow_loopback_http)
    except UnsafeUrlError as exc:
        raise ValueError(exc.message.rstrip(".")) from None
    return value


def _check_data_uri(value: str, data_types: tuple[str, ...]) -> None:
    if not data_types:
        raise ValueError("data: URIs are not accepted here (this provider documents URLs only); give an https:// URL")
    if len(value) > MAX_DATA_URI_LENGTH:
        raise ValueError(f"a data: URI may be at most {MAX_DATA_URI_LENGTH} characters; give larger images by URL")
    try:
        media_type, _content = parse_data_uri(value)
    except MediaRefused as exc:
        raise ValueError(exc.message.rstrip(".")) from None
    if media_type not in data_types:
        raise ValueError(f"a data: URI here must be one of {', '.join(data_types)}, not {media_type}")


def _subtypes(data_types: tuple[str, ...]) -> str:
    return "|".join(t.removeprefix("image/") for t in data_types)


@dataclass(frozen=True)
class MediaInput:
    """Pydantic metadata that makes a `str` field a media input: `Annotated[str, MediaInput()]`.

    `data_types` lists the image types a provider documents as inline `data:` URIs for this field (none: URLs only).
    The JSON schema is a `format: uri` string with its `maxLength` (one branch per accepted form).
    """

    data_types: tuple[str, ...] = ()

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.with_info_after_validator_function(self._validate, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        url: dict[str, Any] = {
            "type": "string",
            "format": "uri",
            "maxLength": MAX_URL_LENGTH,
            "description": "HTTPS URL of the image, without credentials, on a public host.",
        }
        if not self.data_types:
            return url
        inline = {
            "type": "string",
            "format": "uri",
            "maxLength": MAX_DATA_URI_LENGTH,
            "pattern": f"^data:image/({_subtypes(self.data_types)});base64,",
            "description": "The image inline as a base64 data: URI.",
        }
        return {"anyOf": [url, inline]}

    def _validate(self, value: str, info: ValidationInfo) -> str:
        policy = (info.context or {}).get(_POLICY) if isinstance(info.context, dict) else None
        return check_media_input(value, data_types=self.data_types, policy=policy)
