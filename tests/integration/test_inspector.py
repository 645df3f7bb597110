"""The run inspector (/runs): its files as the edge serves them, and the pages in a real headless browser.

The browser is Debian's chromium (/usr/bin/chromium, installed by .ci/run) driven by Playwright; without it the
browser tests fail and say how to install it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from babychain.local import inspector
from babychain.local.cli import inspector_line, main
from babychain.local.runner import LocalEngine
from tests.conftest import KEY_A, client_for, free_port, wait_for_run, wait_until
from tests.integration.requests import chain_request
from tests.standins.cors_gateway import CorsGateway

INSPECTOR_DIR = Path(inspector.__file__).parent
RUN_ID = "0b6f0a4e-3c55-4c1e-9d7e-2f1d5b0c8a11"
HOSTILE_PROMPT = '<img src=x onerror="window.__pwned=1"> & </p><b id="bold">bold?</b>'
HOSTILE_VIDEO_TEXT = "<script>window.__pwned=2</script>"
HOSTILE_METADATA = {"note": "<svg onload=window.__pwned=3>"}


# ------------------------------------------------------------------------------------------------- the files


def test_root_sends_browsers_to_the_inspector(engine: LocalEngine) -> None:
    root = httpx.get(engine.base_url + "/", timeout=5)
    assert root.status_code == 302 and root.headers["location"] == "/runs"
    assert httpx.head(engine.base_url + "/", timeout=5).status_code == 302
    assert httpx.post(engine.base_url + "/", timeout=5).status_code == 405


def test_pages_and_assets_are_served_with_a_strict_policy(engine: LocalEngine) -> None:
    base = engine.base_url
    for path, kind in [
        ("/runs", "text/html"),
        ("/runs/", "text/html"),
        (f"/runs/{RUN_ID}", "text/html"),
        (f"/runs/{RUN_ID.upper()}", "text/html"),
        ("/inspector/inspector.js", "text/javascript"),
        ("/inspector/inspector.css", "text/css"),
        ("/inspector/favicon.svg", "image/svg+xml"),
    ]:
        response = httpx.get(base + path, timeout=5)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(kind), path
        assert response.headers["x-content-type-options"] == "nosniff"
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe" not in policy
        head = httpx.head(base + path, timeout=5)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(response.content))
    assert b'data-page="run"' in httpx.get(f"{base}/runs/{RUN_ID}", timeout=5).content
    assert b'data-page="runs"' in httpx.get(f"{base}/runs", timeout=5).content
    assert httpx.post(base + "/runs", timeout=5).status_code == 405
    for path in [
        "/runs/not-a-run",
        f"/runs/{RUN_ID}/x",
        f"/runs/{RUN_ID}0",
        "/inspector/",
        "/inspector/run.html",
        "/inspector/__init__.py",
        "/inspector/%2e%2e/http_server.py",
    ]:
        response = httpx.get(base + path, timeout=5)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "route_not_found", path


def test_the_files_load_nothing_from_elsewhere_and_write_no_markup() -> None:
    for page in ("runs.html", "run.html"):
        html = (INSPECTOR_DIR / page).read_text()
        references = re.findall(r'\b(?:src|href)="([^"]*)"', html)
        assert references, page
        assert all(ref.startswith("/") and not ref.startswith("//") for ref in references), references
        # No inline script, style or event handler: the policy would refuse them, and they have no place here.
        assert "<script>" not in html and "<style" not in html
        assert not re.search(r"<[^>]*\s(?:on\w+|style)\s*=", html), page
    css = (INSPECTOR_DIR / "inspector.css").read_text()
    assert "url(" not in css and "@import" not in css
    script = (INSPECTOR_DIR / "inspector.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "import("):
        assert sink not in script, sink


def test_serve_prints_where_the_inspector_is() -> None:
    local = inspector_line("http://127.0.0.1:8080", "bc_local_dev_key_0001", key_from_environment=False)
    assert "http://127.0.0.1:8080/runs#key=bc_local_dev_key_0001" in local
    configured = inspector_line("http://127.0.0.1:8080", "bc_secret_key", key_from_environment=True)
    assert "http://127.0.0.1:8080/runs " in configured and "bc_secret_key" not in configured


def test_inspect_wants_the_api_base_url(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("ftp://api.example.com", "api.example.com", "javascript:alert(1)"):
        assert main(["inspect", "--api", bad]) == 2
        assert "--api must be the API's base URL" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------- in a browser


class Page:
    """A fresh browser page that records what it requested and every script error."""

    def __init__(self, browser: Any, engine: LocalEngine) -> None:
        self.context = browser.new_context(viewport={"width": 1360, "height": 900})
        self.page = self.context.new_page()
        self.engine = engine
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)

    def open(self, path: str, key: str | None = KEY_A) -> Any:
        self.page.goto(self.engine.base_url + path + (f"#key={key}" if key else ""))
        return self.page

    def only_this_server_was_asked(self) -> None:
        origins = {"{0.scheme}://{0.netloc}".format(urlsplit(url)) for url in self.requests}
        assert origins == {self.engine.base_url}, origins

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[[LocalEngine], Page]]:
    pages: list[Page] = []

    def make(engine: LocalEngine) -> Page:
        pages.append(Page(browser, engine))
        return pages[-1]

    yield make
    for page in pages:
        page.close()


def _create(engine: LocalEngine, chain: str, body: dict[str, Any] | None = None) -> str:
    with client_for(engine) as client:
        response = client.post(f"/api/v1/chains/{chain}/runs", json=body or chain_request(chain, None))
        assert response.status_code == 202, response.text
        run_id: str = response.json()["id"]
        return run_id


def _video_state(page: Any) -> dict[str, Any]:
    state: dict[str, Any] = page.evaluate(
        """() => { const v = document.querySelector('.step[data-step-key="image_to_video"] .preview video');
                   return {readyState: v.readyState, duration: v.duration, width: v.videoWidth,
                           currentTime: v.currentTime}; }"""
    )
    return state


def test_a_finished_chain3_shows_its_steps_with_two_images_and_a_video_that_plays_and_seeks(
    engine: LocalEngine, open_page: Callable[[LocalEngine], Page]
) -> None:
    run_id = _create(engine, "chain3")
    with client_for(engine) as client:
        assert wait_for_run(client, run_id, timeout=60)["status"] == "succeeded"
    browser_page = open_page(engine)

    # The list, then a click through to the run (the key came in the URL's fragment and stays in the tab).
    page = browser_page.open("/runs")
    row = page.locator(f'tr[data-run-id="{run_id}"]')
    row.wait_for()
    assert page.url == engine.base_url + "/runs"  # the fragment with the key is gone from the address bar
    assert row.locator(".status").inner_text() == "succeeded"
    assert "3/3" in row.inner_text() and "chain3" in row.inner_text()
    row.locator("a").click()
    page.wait_for_url(f"**/runs/{run_id}")

    page.locator('body[data-run-status="succeeded"]').wait_for()
    assert page.locator("#run-status").inner_text() == "succeeded"
    steps = page.locator(".chain > .step")
    assert steps.count() == 3
    assert [steps.nth(i).get_attribute("data-step-key") for i in range(3)] == [
        "text_to_image",
        "image_to_image",
        "image_to_video",
    ]
    cards = [steps.nth(i).inner_text() for i in range(3)]
    for card, model in zip(
        cards, ["bfl/flux-2-flex", "bfl/flux-kontext-pro", "bytedance/seedance-1.5-pro"], strict=True
    ):
        assert "succeeded" in card and model in card and "took" in card and "estimate" in card
    assert "the same scene as a vivid oil painting" in cards[1]  # the step's prompt, from the run's input

    # Two images, decoded: the browser fetched and understood the artifact files.
    page.wait_for_function(
        "() => [...document.querySelectorAll('.preview img')].filter(i => i.complete && i.naturalWidth > 0)"
        ".length === 2"
    )
    sizes = page.evaluate(
        "() => [...document.querySelectorAll('.preview img')].map(i => [i.naturalWidth, i.naturalHeight])"
    )
    assert sizes == [[1024, 768], [1024, 768]]

    # The video: metadata loaded, it seeks (Range requests on /files/) and plays.
    page.wait_for_function(
        "() => { const v = document.querySelector('.preview video'); return v && v.readyState >= 1 && v.duration > 0; }"
    )
    state = _video_state(page)
    assert 2.5 <= state["duration"] <= 3.5 and state["width"] > 0
    page.evaluate(
        """() => new Promise((resolve) => { const v = document.querySelector('.preview video');
                   v.addEventListener('seeked', resolve, {once: true}); v.currentTime = 2.0; })"""
    )
    assert abs(_video_state(page)["currentTime"] - 2.0) < 0.2
    page.evaluate("() => { const v = document.querySelector('.preview video'); v.currentTime = 0; return v.play(); }")
    page.wait_for_function("() => document.querySelector('.preview video').currentTime > 0.3")

    assert browser_page.errors == []
    browser_page.only_this_server_was_asked()  # nothing from a CDN or anywhere else


def test_a_running_run_changes_on_screen_without_a_reload(
    make_engine: Callable[..., LocalEngine], open_page: Callable[[LocalEngine], Page]
) -> None:
    engine = make_engine(local_provider_delay_seconds=4.0)  # the page reads the run every 2 s
    run_id = _create(engine, "chain1")
    browser_page = open_page(engine)
    page = browser_page.open(f"/runs/{run_id}")
    page.locator("#run-status[data-status]").wait_for()
    first = page.locator("#run-status").inner_text()
    assert first in ("queued", "running"), first
    # Record every state the page shows from now on, and mark the document: a reload would lose the mark.
    page.evaluate(
        """() => {
          window.__sameDocument = true;
          window.__seen = [];
          const note = () => {
            const run = document.querySelector('#run-status').textContent;
            const steps = [...document.querySelectorAll('.step')].map(s => s.dataset.status).join(',');
            const images = document.querySelectorAll('.preview img').length;
            const entry = run + '|' + steps + '|' + images;
            if (window.__seen[window.__seen.length - 1] !== entry) window.__seen.push(entry);
          };
          note();
          new MutationObserver(note).observe(document.body, {subtree: true, childList: true, characterData: true,
                                                             attributes: true});
        }"""
    )
    page.locator('body[data-run-status="succeeded"]').wait_for(timeout=60_000)
    assert page.evaluate("() => window.__sameDocument") is True
    seen: list[str] = page.evaluate("() => window.__seen")
    assert seen[-1].startswith("succeeded|succeeded,succeeded|1"), seen
    # It showed the first step running, then its image while the video step was still running.
    assert any(entry.split("|")[1].startswith("running") for entry in seen), seen
    assert any(entry.split("|")[1] == "succeeded,running" and entry.endswith("|1") for entry in seen), seen
    page.wait_for_function(
        "() => { const v = document.querySelector('.preview video'); return v && v.readyState >= 1 && v.duration > 0; }"
    )
    assert page.locator("#live").inner_text() == ""  # polling stopped at the end
    assert browser_page.errors == []


def test_caller_text_is_shown_as_text_never_run_as_markup(
    make_engine: Callable[..., LocalEngine], open_page: Callable[[LocalEngine], Page]
) -> None:
    # The second step fails, so the page also shows a step error and the skipped step after it.
    engine = make_engine(local_provider_fail=("image_to_image",))
    body = chain_request("chain3", None)
    body["input"]["text_to_image_params"]["prompt"] = HOSTILE_PROMPT
    body["input"]["image_to_video_params"]["content"][0]["text"] = HOSTILE_VIDEO_TEXT
    body["metadata"] = HOSTILE_METADATA
    run_id = _create(engine, "chain3", body)
    with client_for(engine) as client:
        run = wait_for_run(client, run_id, timeout=60)
    assert run["status"] == "failed"
    browser_page = open_page(engine)

    page = browser_page.open("/runs")
    row = page.locator(f'tr[data-run-id="{run_id}"]')
    row.wait_for()
    assert row.locator("td.prompt").inner_text() == HOSTILE_PROMPT
    assert row.locator(".status").inner_text() == "failed"

    page = browser_page.open(f"/runs/{run_id}")
    page.locator('body[data-run-status="failed"]').wait_for()
    first, second, third = (page.locator(f'.step[data-step-key="{s["step_key"]}"]') for s in run["steps"])
    assert first.locator(".prompt-text").inner_text() == HOSTILE_PROMPT
    assert third.locator(".prompt-text").inner_text() == HOSTILE_VIDEO_TEXT
    assert json.dumps(HOSTILE_METADATA, separators=(",", ":")) in page.locator("#run-facts").inner_text()
    # The failure: the step's error and the run's, and the step after it skipped.
    failed = run["steps"][1]["error"]
    assert second.get_attribute("data-status") == "failed"
    assert f"{failed['code']}: {failed['message']}" in second.locator(".error").inner_text()
    assert run["error"]["code"] in page.locator("#run-error").inner_text()
    assert third.get_attribute("data-status") == "skipped"
    assert third.locator(".placeholder").inner_text() == "skipped"
    first.locator(".preview img").wait_for()

    for view in ("/runs", f"/runs/{run_id}"):
        page = browser_page.open(view)
        page.locator("tr[data-run-id], .step").first.wait_for()
        assert page.evaluate("() => window.__pwned") is None
        assert page.locator('img[src="x"], #bold, svg, .preview script, body > script:not([src])').count() == 0
    assert browser_page.errors == []


def test_without_a_key_the_page_asks_for_one(engine: LocalEngine, open_page: Callable[[LocalEngine], Page]) -> None:
    run_id = _create(engine, "chain1")
    browser_page = open_page(engine)
    page = browser_page.open("/runs", key=None)
    page.locator("#notice").wait_for()
    assert "API key" in page.locator("#notice").inner_text()
    assert page.locator("#settings").get_attribute("open") is not None
    # A wrong key: the API's own error, shown as text.
    page.fill("#api-key", "bc_wrong_key_0000")
    page.click("#settings-form button[type=submit]")
    page.wait_for_function("() => document.querySelector('#notice').textContent.includes('invalid_api_key')")
    assert page.locator("#notice").inner_text() == "The API key is not valid. (invalid_api_key)"
    assert page.locator("tr[data-run-id]").count() == 0
    # The right one, typed once: the list, and the run page in the same tab, need nothing more.
    page.fill("#api-key", KEY_A)
    page.click("#settings-form button[type=submit]")
    page.locator(f'tr[data-run-id="{run_id}"]').wait_for()
    page = browser_page.open(f"/runs/{run_id}", key=None)
    page.locator(".chain > .step").first.wait_for()
    assert page.locator("#api-label").inner_text() == "this server · key set"


# ------------------------------------------------------------------------------------------------- an API elsewhere


@pytest.fixture
def inspect_command() -> Iterator[Callable[[str, int], str]]:
    """`babychain inspect --api <url> --port <port>` as a process; returns the URL it prints."""
    processes: list[subprocess.Popen[str]] = []

    def start(api: str, port: int) -> str:
        command = [sys.executable, "-m", "babychain.local.cli", "inspect", "--api", api, "--port", str(port)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        processes.append(process)
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith(f"Run inspector on http://127.0.0.1:{port}/runs#api={api}"), first
        assert wait_until(lambda: _answers(f"http://127.0.0.1:{port}/runs"), timeout=20)
        return first.split()[-1]

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_pointed_at_an_api_elsewhere_it_works_once_that_api_allows_its_origin(
    engine: LocalEngine, inspect_command: Callable[[str, int], str], open_page: Callable[[LocalEngine], Page]
) -> None:
    # The API behind a gateway with CORS, as an AWS deployment with CorsConfiguration; the pages from `babychain
    # inspect` on another origin; the media straight from the artifact store (a third origin, as S3 would be).
    run_id = _create(engine, "chain1")
    with client_for(engine) as client:
        assert wait_for_run(client, run_id, timeout=60)["status"] == "succeeded"
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    with CorsGateway(engine.base_url, allow_origins=[origin]) as gateway:
        url = inspect_command(gateway.url, port)
        browser_page = open_page(engine)
        page = browser_page.page
        page.goto(f"{url}&key={KEY_A}")
        page.locator(f'tr[data-run-id="{run_id}"]').wait_for()
        assert page.locator("#api-label").inner_text() == f"{gateway.url} · key set"
        page.locator(f'tr[data-run-id="{run_id}"] a').click()
        page.locator('body[data-run-status="succeeded"]').wait_for()
        page.wait_for_function(
            "() => { const i = document.querySelector('.preview img'), v = document.querySelector('.preview video');"
            " return i && i.naturalWidth > 0 && v && v.readyState >= 1; }"
        )
        assert origin in gateway.preflights  # the browser asked, and the gateway allowed this origin
        origins = {"{0.scheme}://{0.netloc}".format(urlsplit(u)) for u in browser_page.requests}
        assert origins == {origin, gateway.url, engine.base_url}, origins
        api_calls = [u for u in browser_page.requests if "/api/" in u]
        assert api_calls and all(u.startswith(gateway.url + "/api/v1/") for u in api_calls)
        assert browser_page.errors == []

        # The same API without CORS for this origin: the page says why it cannot read it.
        gateway.allow_origins.clear()
        page = open_page(engine).page
        page.goto(f"{url}&key={KEY_A}")
        page.wait_for_function("() => document.querySelector('#notice').textContent.includes('CORS')")
        assert page.locator("tr[data-run-id]").count() == 0
