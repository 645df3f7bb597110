"""The docs against the code: links resolve, Python examples compile and import what exists, curl examples name
routes that exist, and the error codes docs/api.md lists are codes the code raises. Cheap: no network, no server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import babychain.client
from babychain.chains.templates import find_template
from babychain.local.lambda_shim import match_route

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHARED = ROOT / "shared" / "babychain"

LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


def _blocks(path: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(path.read_text(encoding="utf-8")) if lang == language]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_resolve(doc: Path) -> None:
    for target in LINK.findall(FENCE.sub("", doc.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        file_part, _, anchor = target.partition("#")
        path = (doc.parent / file_part).resolve() if file_part else doc
        assert path.exists(), f"{doc.name}: link to missing {target}"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path), f"{doc.name}: no heading #{anchor} in {path.name}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_python_examples_compile_and_import_what_exists(doc: Path) -> None:
    for block in _blocks(doc, "python"):
        compile(block, f"{doc.name} example", "exec")
        for names in re.findall(r"^from babychain\.client import (.+)$", block, re.MULTILINE):
            for name in (n.strip() for n in names.split(",")):
                assert hasattr(babychain.client, name), f"{doc.name}: babychain.client has no {name}"


def _curl_requests(text: str) -> list[tuple[str, str]]:
    """(method, path) of every curl command in the bash blocks (continuation lines joined)."""
    found = []
    text = text.replace("\\\n", " ").replace("<run id>", "00000000-0000-4000-8000-000000000000")
    for command in re.findall(r"curl .*?\n", text):
        url = re.search(
            r"(?:\$BABYCHAIN_URL|https?://(?:localhost|127\.0\.0\.1):\d+|localhost:\d+)(/[^\s\"'?]*)", command
        )
        if url is None:
            continue
        method = "POST" if ("-X POST" in command or " -d " in command) else "GET"
        found.append((method, url.group(1)))
    return found


def test_curl_examples_name_routes_that_exist() -> None:
    requests = []
    for doc in DOCS:
        for block in _blocks(doc, "bash"):
            requests += _curl_requests(block + "\n")
    assert len(requests) >= 8, requests  # README and docs/api.md have them for every chain, get, list, cancel
    for method, path in requests:
        matched = match_route(method, path)
        assert matched is not None, f"{method} {path} is not a route"
        if slug := matched[2].get("slug"):
            assert find_template(slug) is not None, f"{path}: no chain {slug}"


def test_documented_error_codes_are_raised_by_the_code() -> None:
    source = "\n".join(p.read_text(encoding="utf-8") for p in SHARED.rglob("*.py"))
    source += "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "functions").rglob("*.py"))
    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d{3}) \| (.+?) \|", api, re.MULTILINE)
    codes = {code for _status, cell in rows for code in re.findall(r"`([a-z_]+)`", cell)}
    assert {"invalid_chain_input", "idempotency_conflict", "rate_limited", "database_unreachable"} <= codes
    for code in codes:
        assert f'"{code}"' in source, f"docs/api.md lists {code}, which nothing raises"
