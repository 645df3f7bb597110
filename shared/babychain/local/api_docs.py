"""The API reference page of the one-machine shape: Swagger UI at `/docs`, on `/api/v1/openapi.json`.

Every file the page loads is served from here: Swagger UI's own files are vendored from the npm package
`swagger-ui-dist` into `swagger_ui/` (`make swagger-ui` refreshes them), so the page works with nothing outside the
machine reachable and needs no npm to run.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

SWAGGER_UI_DIR = Path(__file__).with_name("swagger_ui")
PAGE_PATH = "/docs"
ASSETS_PREFIX = "/docs/assets/"
DOCUMENT_URL = "/api/v1/openapi.json"

PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>BabyChain API reference</title>
  <link rel="icon" type="image/png" href="{ASSETS_PREFIX}favicon-32x32.png">
  <link rel="stylesheet" href="{ASSETS_PREFIX}swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{ASSETS_PREFIX}swagger-ui-bundle.js"></script>
  <script src="{ASSETS_PREFIX}init.js"></script>
</body>
</html>
"""

# No validator badge (it would call out to a public validator), the key kept across reloads ("Authorize" once).
INIT_JS = f"""window.ui = SwaggerUIBundle({{
  url: "{DOCUMENT_URL}",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout"
}});
"""

_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}
# The vendored files a browser may ask for (the licenses stay readable beside them).
ASSETS = (
    "swagger-ui-bundle.js",
    "swagger-ui.css",
    "favicon-32x32.png",
    "LICENSE",
    "NOTICE",
    "swagger-ui-bundle.js.LICENSE.txt",
    "package.json",
)


@cache
def _asset(name: str) -> bytes:
    return (SWAGGER_UI_DIR / name).read_bytes()


def docs_answer(path: str) -> tuple[str, bytes] | None:
    """(content type, body) for the page and its assets; None for any other path."""
    if path in (PAGE_PATH, PAGE_PATH + "/"):
        return "text/html; charset=utf-8", PAGE.encode()
    if not path.startswith(ASSETS_PREFIX):
        return None
    name = path.removeprefix(ASSETS_PREFIX)
    if name == "init.js":
        return _TYPES[".js"], INIT_JS.encode()
    if name not in ASSETS:
        return None
    return _TYPES.get(Path(name).suffix, "text/plain; charset=utf-8"), _asset(name)
