"""The one HTTP layer under the provider adapters (BFL, BytePlus ModelArk, BabySea, the local provider).

It owns what every adapter needs done the same way: the requests, through `lean_http` (a total deadline per call and
a 10 s connect timeout; redirects never followed, so the key never travels to a host the provider names; pooled
keep-alive connections), transport errors, the non-2xx policy (status → step error code,
transient or not, `Retry-After`), secret scrubbing, and the check of a configured key and base URL (a bad one is a
`ConfigurationError` naming its variable). An adapter fills in only its wire mapping:

    RULE = HostRule("FOO_API_BASE_URL", hosts=frozenset({"api.foo.example"}))
    base_url = check_base_url(configured_url, RULE, allow_loopback).url
    http = ProviderHttp("Foo", secrets=[key], headers={"Authorization": f"Bearer {key}"}, read_error=read_foo_error)
    answer = http.json_object(http.send("POST", base_url + "/jobs", body={...}))

`read_foo_error` turns the provider's error body into an `ErrorBody` (its message, and a step error code where the
body knows better than the status); without one, the body's text is quoted. `secrets` are every secret the provider
holds (its key, and a webhook secret it signs with): a provider may echo any of them in an error, so each is scrubbed
from the quoted text, and the text is bounded only after that (a cut could leave part of a secret unrecognised).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import SplitResult, urlsplit

from babychain.errors import ConfigurationError, ProviderError
from babychain.json_encoding import one_shot_encoder
from babychain.security import lean_http
from babychain.security.deadline import total_deadline
from babychain.security.lean_http import Response
from babychain.security.safe_http import parse_retry_after
from babychain.security.urls import is_loopback_address

CONNECT_TIMEOUT_SECONDS = lean_http.CONNECT_TIMEOUT_SECONDS
ERROR_EXCERPT_CHARS = 500
# Provider answers are small JSON documents; a body past this is no answer of theirs, and is not read on.
RESPONSE_LIMIT = 8 * 1024 * 1024
NOT_FOUND = "provider_not_found"
# Statuses about our own request or account: a provider's "retryable" hint does not turn them into retries.
_FINAL_STATUSES = frozenset({401, 402, 403, 404})
# One encoder for every request body (`json.dumps` with options builds a new one per call).
_ENCODE_BODY = one_shot_encoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)

# ------------------------------------------------------------------------------------------------ errors


def status_error(
    status: int, message: str, retry_after: float | None = None, *, not_found_code: str = NOT_FOUND
) -> ProviderError:
    """What the status alone says: 429 and 5xx are retried (Retry-After honoured), everything else is final."""
    if status == 429:
        return ProviderError("provider_rate_limited", message, transient=True, retry_after=retry_after)
    if status >= 500:
        return ProviderError("provider_unavailable", message, transient=True, retry_after=retry_after)
    if 300 <= status < 400:
        return ProviderError("provider_unexpected_response", message, transient=False)
    if status in (401, 403):
        return ProviderError("provider_unauthorized", message, transient=False)
    if status == 402:
        return ProviderError("provider_quota_exceeded", message, transient=False)
    if status == 404:
        return ProviderError(not_found_code, message, transient=False)
    return ProviderError("provider_invalid_request", message, transient=False)


def transport_error(exc: lean_http.HTTPError, what: str) -> ProviderError:
    """A request that got no (complete) HTTP answer: worth retrying, unless the answer was too large to read."""
    name = type(exc).__name__
    if isinstance(exc, lean_http.ResponseTooLarge):
        return ProviderError(
            "provider_unexpected_response", f"{what} answered with a body too large to read.", transient=False
        )
    if isinstance(exc, lean_http.TimeoutException):
        return ProviderError("provider_timeout", f"{what} did not answer in time ({name}).", transient=True)
    return ProviderError("provider_network_error", f"{what} unreachable: {name}.", transient=True)


def scrub_secret(text: str, *secrets: str, limit: int = ERROR_EXCERPT_CHARS) -> str:
    """Provider text is quoted in step errors: never with a secret of ours in it, never unbounded (bounded after the
    scrub, so no secret is cut into a piece the scrub would miss)."""
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "[redacted]")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def answered(label: str, status: int, detail: str = "") -> str:
    """The usual opening of an error message: `<label> answered HTTP <status>[: <detail>].`"""
    return f"{label} answered HTTP {status}" + (f": {detail}" if detail else ".")


@dataclass(frozen=True)
class ErrorBody:
    """What an error answer says, as its adapter reads it; the layer scrubs, bounds and classifies it."""

    message: str
    code: str | None = None  # a step error code the body decides, over the status
    transient: bool | None = None  # the provider's own verdict on retrying, where it gives one
    retry_after: float | None = None  # seconds the body asks for; a Retry-After header wins


ErrorReader = Callable[[Response], ErrorBody]


def json_or_none(response: Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------------ client


class ProviderHttp:
    """One adapter's HTTP: every call goes through `send`, and every failure comes out as a ProviderError."""

    def __init__(
        self,
        label: str,
        *,
        secrets: Iterable[str] = (),
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        read_error: ErrorReader | None = None,
    ) -> None:
        self.label = label
        self._secrets = tuple(secrets)
        self._read_error = read_error or self._read_text
        self._timeout = timeout
        self._headers = dict(headers or {})

    def close(self) -> None:
        """Nothing of its own to release: connections live in the process's pool (`lean_http`)."""

    def scrub(self, text: str) -> str:
        return scrub_secret(text, *self._secrets)

    def send(
        self,
        method: str,
        url: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        not_found_code: str = NOT_FOUND,
    ) -> Response:
        """One request: a 2xx answer is returned; no answer, or any other status, is raised as a ProviderError.

        `body` (when not None) is sent as JSON. `timeout` (the client's when None) is the whole request's deadline,
        however the provider paces its answer.
        """
        seconds = self._timeout if timeout is None else timeout
        request_headers = _merged(self._headers, headers)
        content = None
        if body is not None:
            content = _ENCODE_BODY(body).encode()
            if not any(name.lower() == "content-type" for name in request_headers):
                request_headers["Content-Type"] = "application/json"
        try:
            with total_deadline(seconds):
                response = lean_http.fetch(
                    method,
                    url,
                    headers=request_headers,
                    body=content,
                    params=params,
                    timeout=seconds,
                    connect_timeout=min(CONNECT_TIMEOUT_SECONDS, seconds),
                    max_bytes=RESPONSE_LIMIT,
                )
        except lean_http.HTTPError as exc:
            raise transport_error(exc, f"{self.label} ({method} {urlsplit(url).path})") from None
        if not 200 <= response.status_code < 300:
            raise self.error(response, not_found_code=not_found_code)
        return response

    def error(self, response: Response, *, not_found_code: str = NOT_FOUND) -> ProviderError:
        """The non-2xx policy; adapters also call it for a 2xx whose body reports an error."""
        status = response.status_code
        if 300 <= status < 400:
            # One way for every provider: the key must not follow Location, and a redirect is no answer.
            return status_error(status, answered(self.label, status, "a redirect, which is not followed"))
        read = self._read_error(response)
        message = self.scrub(read.message)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if retry_after is None:
            retry_after = read.retry_after
        if read.code:
            transient = bool(read.transient)
            return ProviderError(
                read.code, message, transient=transient, retry_after=retry_after if transient else None
            )
        error = status_error(status, message, retry_after, not_found_code=not_found_code)
        if read.transient is None or read.transient == error.transient or status in _FINAL_STATUSES:
            return error
        if read.transient:
            return ProviderError(error.code, message, transient=True, retry_after=retry_after)
        return ProviderError("provider_failed", message, transient=False)  # a 5xx the provider calls final

    def json_object(self, response: Response) -> dict[str, Any]:
        """A 2xx answer's JSON object; anything else is an unexpected (and final) answer."""
        answer = json_or_none(response)
        if not isinstance(answer, dict):
            raise ProviderError(
                "provider_unexpected_response",
                f"{self.label} answered HTTP {response.status_code} without a JSON object.",
                transient=False,
            )
        return answer

    def _read_text(self, response: Response) -> ErrorBody:
        return ErrorBody(answered(self.label, response.status_code, response.text.strip()))


def _merged(defaults: Mapping[str, str], extra: Mapping[str, str] | None) -> dict[str, str]:
    """The adapter's headers with a request's own on top; names compare without case."""
    if not extra:
        return dict(defaults)
    overridden = {name.lower() for name in extra}
    merged = {name: value for name, value in defaults.items() if name.lower() not in overridden}
    merged.update(extra)
    return merged


# ------------------------------------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class HostRule:
    """Where an adapter may send its key: https on these hosts (or any subdomain of `domain`) on port 443."""

    variable: str  # the setting that holds the base URL, named in configuration errors
    hosts: frozenset[str] = frozenset()
    domain: str = ""  # e.g. "bfl.ai" for api.eu.bfl.ai and the cluster hosts

    def official(self, parts: SplitResult, host: str) -> bool:
        listed = host in self.hosts or (bool(self.domain) and host.endswith("." + self.domain))
        return parts.scheme == "https" and listed and parts.port in (None, 443)

    def error(self, problem: str) -> ConfigurationError:
        names = sorted(self.hosts) + ([f"*.{self.domain}"] if self.domain else [])
        return ConfigurationError(
            f"{self.variable} is not an allowed base URL ({problem}); expected https on {', '.join(names)}, "
            "or loopback where allowed."
        )


class BaseUrl(NamedTuple):
    origin: str  # scheme://host[:port], the host lowercased, port 443 dropped for https
    path: str  # without a trailing slash; "" for none

    @property
    def url(self) -> str:
        return self.origin + self.path


def is_loopback_stand_in(scheme: str, host: str, allow_loopback: bool) -> bool:
    """Tests and the local runner point adapters at loopback stand-ins; nothing else may bypass an allowlist."""
    return allow_loopback and scheme in ("http", "https") and (host == "localhost" or is_loopback_address(host))


def url_problem(url: str, rule: HostRule, allow_loopback: bool) -> str | None:
    """Why the key must not be sent to `url`, or None when it may."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return "not a valid URL"
    host = (parts.hostname or "").lower()
    if not host:
        return "no host"
    if parts.username is not None or parts.password is not None or parts.fragment:
        return "credentials or a fragment"
    if rule.official(parts, host) or is_loopback_stand_in(parts.scheme, host, allow_loopback):
        return None
    return f"{parts.scheme}://{parts.netloc.lower()}"  # no credentials by now


def allowed_url(url: str, rule: HostRule, allow_loopback: bool) -> bool:
    return url_problem(url, rule, allow_loopback) is None


def check_base_url(url: str, rule: HostRule, allow_loopback: bool) -> BaseUrl:
    """A configured base URL, normalised; a bad one is a ConfigurationError naming `rule.variable`."""
    url = url.strip()
    problem = url_problem(url, rule, allow_loopback)
    if problem is None and urlsplit(url).query:
        problem = "a query"
    if problem is not None:
        raise rule.error(problem)
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None and not (parts.scheme == "https" and parts.port == 443):
        netloc += f":{parts.port}"
    return BaseUrl(f"{parts.scheme}://{netloc}", parts.path.rstrip("/"))


def check_api_key(key: str, variable: str) -> str:
    """The key goes into a header verbatim: an empty one or one with whitespace is a configuration error."""
    if not key:
        raise ConfigurationError(f"{variable} is empty.")
    if any(c.isspace() for c in key):
        raise ConfigurationError(f"{variable} contains whitespace.")
    return key
