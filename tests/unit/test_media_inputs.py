"""Media inputs are a schema type (security.media): every field that carries a caller's image, in every family.

The URL vectors reuse test_security_urls' resolver helpers: the type defers to `check_url` (with a resolver in the
validation context) or `check_url_form` (without), so the address rules are the ones tested there.
"""

from __future__ import annotations

import base64
from typing import Any

import jsonschema
import pytest
from pydantic import TypeAdapter, ValidationError

from babychain.chains.catalog import MODELS
from babychain.chains.families import FAMILIES
from babychain.chains.param_models import BflImage, MediaUrl, SeedanceImage, SeedreamImage
from babychain.chains.templates import TEMPLATES
from babychain.errors import ApiError
from babychain.security.media import MAX_DATA_URI_LENGTH, UrlPolicy, check_media_input
from tests.unit.test_media_types import GIF, HTML, JPEG, PNG, SVG, WEBP, data_uri, image_bytes
from tests.unit.test_security_urls import fixed, no_dns

RESOLVER = fixed(
    {
        "cdn.example": ["93.184.216.34"],
        "v6.example": ["2606:4700::1"],
        "inside.example": ["10.0.0.7"],
        "mixed.example": ["93.184.216.34", "169.254.169.254"],
        "mapped.example": ["::ffff:127.0.0.1"],
        "files.test": ["127.0.0.1"],
    }
)
ONLINE = UrlPolicy(RESOLVER)
DEV = UrlPolicy(RESOLVER, allow_loopback_http=True)


def refused(annotation: Any, value: Any, policy: UrlPolicy | None = ONLINE) -> str:
    with pytest.raises(ValidationError) as info:
        TypeAdapter(annotation).validate_python(value, context=policy.context() if policy else None)
    return str(info.value.errors()[0]["msg"])


def accepted(annotation: Any, value: str, policy: UrlPolicy | None = ONLINE) -> str:
    result: str = TypeAdapter(annotation).validate_python(value, context=policy.context() if policy else None)
    return result


# ------------------------------------------------------------------------------------------- the URL type

BAD_URLS = [
    ("file:///etc/passwd", "https://"),
    ("ftp://cdn.example/a.png", "https://"),
    ("gopher://cdn.example:70/_GET", "https://"),
    ("javascript:alert(1)", "https://"),
    ("//169.254.169.254/latest/meta-data/", "scheme-relative"),
    ("//cdn.example/a.png", "scheme-relative"),
    ("/a.png", "https://"),
    (" https://cdn.example/a.png", "whitespace"),
    ("https://cdn.example/a.png ", "whitespace"),
    ("https://cdn.example/a.png\n", "whitespace"),
    ("\thttps://cdn.example/a.png", "whitespace"),
    ("\u00a0https://cdn.example/a.png", "whitespace"),
    ("https://cdn.example/a b.png", "spaces"),
    ("https://cdn.example\\@evil.example/", "backslashes"),
    ("http://cdn.example/a.png", "HTTPS"),
    ("https://user:pw@cdn.example/a.png", "credentials"),
    ("https://user@cdn.example/a.png", "credentials"),
    ("https://cdn.example/" + "a" * 2048, "longer than 2048"),
    ("https://169.254.169.254/latest/meta-data/", "public address"),
    ("https://10.0.0.1/a.png", "public address"),
    ("https://127.0.0.1/a.png", "public address"),
    ("https://[::1]/a.png", "public address"),
    ("https://[::ffff:127.0.0.1]/a.png", "public address"),  # IPv4-mapped IPv6
    ("https://[::ffff:a9fe:a9fe]/a.png", "public address"),  # 169.254.169.254, mapped and in hex
    ("https://[fe80::1]/a.png", "public address"),
    ("https://[fd00::1]/a.png", "public address"),
    ("https://[64:ff9b::a9fe:a9fe]/a.png", "public address"),  # NAT64 around the metadata service
    ("https://2130706433/a.png", "dotted IPv4"),  # decimal 127.0.0.1
    ("https://0x7f.0.0.1/a.png", "dotted IPv4"),
    ("https://0177.0.0.1/a.png", "valid URL"),  # httpx refuses octal itself
    ("https://127.1/a.png", "dotted IPv4"),
    ("https://localhost/a.png", "not allowed"),
    ("https://metadata.google.internal/computeMetadata/v1/", "not allowed"),
    ("https://inside.example/a.png", "public address"),
    ("https://mixed.example/a.png", "public address"),  # every answer is judged
    ("https://mapped.example/a.png", "public address"),
    ("https://nowhere.example/a.png", "public address"),  # no answer at all
    ("", "https://"),
]


@pytest.mark.parametrize(("url", "why"), BAD_URLS)
@pytest.mark.parametrize("annotation", [MediaUrl, BflImage, SeedreamImage, SeedanceImage])
def test_the_media_type_refuses_every_vector(annotation: Any, url: str, why: str) -> None:
    assert why in refused(annotation, url)


@pytest.mark.parametrize(
    "url",
    [u for u, why in BAD_URLS if why not in ("public address",)]
    + [
        "https://169.254.169.254/",
        "https://[::ffff:127.0.0.1]/",
    ],
)
def test_without_a_resolver_the_form_alone_still_refuses_what_needs_no_dns(url: str) -> None:
    # No context: the type runs check_url_form. DNS-dependent vectors (names with bad answers) need the resolver.
    refused(MediaUrl, url, policy=None)
    refused(MediaUrl, url, policy=UrlPolicy(resolver=None))


def test_without_a_resolver_no_lookup_happens() -> None:
    assert accepted(MediaUrl, "https://cdn.example/a.png", UrlPolicy(resolver=None)) == "https://cdn.example/a.png"
    assert accepted(MediaUrl, "https://93.184.216.34/a.png", UrlPolicy(resolver=no_dns))


@pytest.mark.parametrize(
    "url",
    [
        "https://cdn.example/a.png",
        "https://cdn.example:8443/path/a.png?sig=abc&x=1",
        "HTTPS://CDN.example/a.png",
        "https://v6.example/a.png",
        "https://93.184.216.34/a.png",
        "https://[2606:4700::1]/a.png",
        "https://cdn.example/" + "a" * 2020,
    ],
)
def test_public_https_urls_pass_unchanged(url: str) -> None:
    for annotation in (MediaUrl, BflImage, SeedreamImage, SeedanceImage):
        assert accepted(annotation, url) == url


def test_loopback_http_only_under_the_development_setting() -> None:
    for url in ("http://127.0.0.1:8080/files/a.png", "http://files.test/a.png", "http://localhost:9/a.png"):
        assert "HTTPS" in refused(MediaUrl, url, ONLINE) or "not allowed" in refused(MediaUrl, url, ONLINE)
    assert accepted(MediaUrl, "http://127.0.0.1:8080/files/a.png", DEV)
    assert accepted(MediaUrl, "http://files.test/a.png", DEV)
    # The setting opens loopback, nothing else: public hosts still need HTTPS, private ranges stay closed.
    assert "HTTPS" in refused(MediaUrl, "http://cdn.example/a.png", DEV)
    assert "public address" in refused(MediaUrl, "https://inside.example/a.png", DEV)
    assert "public address" in refused(MediaUrl, "https://169.254.169.254/", DEV)


def test_non_strings_are_refused() -> None:
    for value in (5, None, ["https://cdn.example/a.png"], {"url": "https://cdn.example/a.png"}, b"https://x"):
        refused(MediaUrl, value)


# ------------------------------------------------------------------------------------------- data: URIs


def test_data_uris_only_where_the_provider_documents_them() -> None:
    png = data_uri("image/png", PNG)
    assert "data: URIs are not accepted here" in refused(MediaUrl, png)  # BabySea, source_image_url
    assert accepted(BflImage, png) == png  # BFL: "a URL or base64"
    assert accepted(SeedreamImage, png) == png  # Seedream: data:image/<fmt>;base64 of jpeg or png
    assert accepted(SeedanceImage, png) == png  # Seedance: data:image/png;base64,...


@pytest.mark.parametrize(
    ("annotation", "media_type", "content", "ok"),
    [
        (BflImage, "image/jpeg", JPEG, True),
        (BflImage, "image/webp", WEBP, True),
        (SeedreamImage, "image/jpeg", JPEG, True),
        (SeedreamImage, "image/webp", WEBP, False),  # Seedream documents jpeg and png only
        (SeedanceImage, "image/webp", WEBP, True),
        (BflImage, "image/gif", GIF, False),
        (BflImage, "image/svg+xml", SVG, False),
        (BflImage, "text/html", HTML, False),
    ],
)
def test_data_uri_types(annotation: Any, media_type: str, content: bytes, ok: bool) -> None:
    uri = data_uri(media_type, content)
    if ok:
        assert accepted(annotation, uri) == uri
    else:
        assert "must be one of" in refused(annotation, uri)


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        (data_uri("image/png", JPEG), "says image/png but its bytes are image/jpeg"),  # mislabelled
        (data_uri("image/png", SVG), "bytes are image/svg+xml"),
        (data_uri("image/png", HTML), "bytes are text/html"),
        (data_uri("image/png", b"\x00\x01garbage"), "not a known format"),
        ("data:image/png;base64,iVBORw0KGgo=!!", "form data:"),
        ("data:image/png;base64,iVBORw0KGgo", "base64 data is not valid"),  # unpadded
        ("data:image/png;charset=utf-8;base64," + base64.b64encode(PNG).decode(), "form data:"),
        ("data:image/png," + PNG.hex(), "form data:"),  # not base64
        ("data:;base64," + base64.b64encode(PNG).decode(), "form data:"),
        ("data:image/png;base64,", "form data:"),
        ("DATA:image/png;base64," + base64.b64encode(JPEG).decode(), "bytes are image/jpeg"),
    ],
)
def test_data_uris_must_be_well_formed_and_what_they_say(uri: str, why: str) -> None:
    assert why in refused(BflImage, uri)


def test_data_uris_have_a_size_cap() -> None:
    big = image_bytes("PNG", (300, 300))  # a flat image compresses; pad it past the cap with a real PNG chunk
    padded = big[:-12] + b"\x00" * MAX_DATA_URI_LENGTH + big[-12:]
    assert f"at most {MAX_DATA_URI_LENGTH} characters" in refused(BflImage, data_uri("image/png", padded))


def test_check_media_input_directly() -> None:
    assert check_media_input("https://cdn.example/a.png", policy=ONLINE) == "https://cdn.example/a.png"
    with pytest.raises(ValueError, match="https://"):
        check_media_input("ftp://cdn.example/a.png")


# ------------------------------------------------------------------------------------------- every family

# The media fields of each family, as JSON paths inside the step params.
MEDIA_FIELDS = {
    "flux2": ["input_image", "input_image_2", "input_image_3", "input_image_4"],
    "flux2_flex": ["input_image", "input_image_2", "input_image_3", "input_image_4"],
    "flux_kontext": ["input_image"],
    "flux1": [],
    "seedream": ["image", "image[0]"],
    "seedance": ["content[1].image_url.url"],
    "babysea_image": ["generation_input_file[0]"],
    "babysea_video": ["generation_input_file[0]"],
}
BASE = {
    "seedance": {"content": [{"type": "text", "text": "x"}]},
    "babysea_video": {"generation_prompt": "x", "generation_duration": 3},
    "babysea_image": {"generation_prompt": "x"},
}


def _params_with(family: str, path: str, value: str) -> dict[str, Any]:
    params: dict[str, Any] = dict(BASE.get(family, {"prompt": "x"}))
    if path == "content[1].image_url.url":
        params["content"] = [*params["content"], {"type": "image_url", "image_url": {"url": value}}]
    elif path.endswith("[0]"):
        params[path[:-3]] = [value]
    else:
        params[path] = value
    return params


@pytest.mark.parametrize(("family", "path"), [(f, p) for f, paths in MEDIA_FIELDS.items() for p in paths])
@pytest.mark.parametrize("url", ["file:///etc/passwd", "//169.254.169.254/x", "https://[::ffff:a9fe:a9fe]/"])
def test_every_media_field_of_every_family_is_typed(family: str, path: str, url: str) -> None:
    with pytest.raises(ApiError) as info:
        FAMILIES[family].validate(_params_with(family, path, url), "input.p", urls=ONLINE)
    assert (info.value.status, info.value.code, info.value.field) == (400, "invalid_chain_input", f"input.p.{path}")
    good = FAMILIES[family].validate(_params_with(family, path, "https://cdn.example/a.png"), "input.p", urls=ONLINE)
    assert FAMILIES[family].input_urls(good) == ["https://cdn.example/a.png"]


def _uri_nodes(schema: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(schema, dict):
        if schema.get("format") == "uri":
            found.append((path, schema))
        for key, value in schema.items():
            found += _uri_nodes(value, f"{path}/{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            found += _uri_nodes(value, f"{path}/{i}")
    return found


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generated_schemas_are_valid_and_show_media_as_bounded_uris(family: str) -> None:
    schema = FAMILIES[family].schema.model_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    nodes = _uri_nodes(schema)
    assert bool(nodes) == bool(MEDIA_FIELDS[family])
    for _, node in nodes:
        assert node["type"] == "string" and node["maxLength"] in (2048, MAX_DATA_URI_LENGTH)
    # The schema agrees with validation on a couple of instances.
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    for path in MEDIA_FIELDS[family]:
        assert validator.is_valid(_params_with(family, path, "https://cdn.example/a.png"))
        assert not validator.is_valid(_params_with(family, path, "https://cdn.example/" + "a" * 9000))


def test_listings_carry_the_typed_schemas() -> None:
    for template in TEMPLATES:
        for mode in ("byok", "babysea", "local"):
            for step in template.summary(mode)["steps"]:
                for schema in step["params_schemas"].values():
                    jsonschema.Draft202012Validator.check_schema(schema)
    for model in MODELS:
        for schema in model.summary()["schemas"].values():
            jsonschema.Draft202012Validator.check_schema(schema)
