"""The run inspector: static pages (HTML, one script, one stylesheet) that read the public API from the browser.

The local edge serves them at `/runs` (recent runs) and `/runs/<run id>` (one run, live), with `/` sending browsers
to `/runs`. The pages hold no data and no key: the script calls the API with the key the user typed (kept in the
tab's sessionStorage), at this server or at the API base URL the user set, so the same files can inspect an AWS
deployment (docs/inspector.md). Everything the API returns is put on the page as text, never as markup.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

ASSET_PREFIX = "/inspector/"
HOME = "/runs"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_ASSETS = ("inspector.js", "inspector.css", "favicon.svg")
_RUN_PAGE = re.compile(r"^/runs/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

# The pages load nothing but their own script and stylesheet; media and API calls may go to any HTTP(S) origin (the
# API base URL the user set, presigned S3 URLs). No inline script or style runs, whatever text reaches the page.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' http: https:; "
    "media-src 'self' http: https:; connect-src 'self' http: https:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def asset_for(path: str) -> str | None:
    """The file that answers `path`, or None when the path is not the inspector's."""
    if path in (HOME, HOME + "/"):
        return "runs.html"
    if _RUN_PAGE.match(path):
        return "run.html"
    if path.startswith(ASSET_PREFIX) and path.removeprefix(ASSET_PREFIX) in _ASSETS:
        return path.removeprefix(ASSET_PREFIX)
    return None


@cache
def read_asset(name: str) -> tuple[bytes, str]:
    """The file's bytes and content type (read once per process)."""
    data = resources.files(__package__).joinpath(name).read_bytes()
    return data, _TYPES[name[name.rfind(".") :]]


def headers_for(content_type: str) -> dict[str, str]:
    headers = {
        "content-type": content_type,
        # The files change only with the package; revalidating is cheap on loopback and never shows a stale script.
        "cache-control": "no-cache",
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "content-security-policy": CONTENT_SECURITY_POLICY,
        "x-frame-options": "DENY",
    }
    return headers
