"""Makes docs/inspector.png: the run inspector showing a finished chain3, as README shows it.

    python scripts/inspector_screenshot.py [--out docs/inspector.png] [--chromium /usr/bin/chromium]

It starts the whole engine on loopback in a throwaway folder (embedded Postgres, local provider), runs the demo's
chain3 with a webhook receiver, opens /runs/<id> in headless chromium, waits until both images are decoded and the
video has loaded and seeked to a frame, and saves the page.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

from babychain.local.cli import demo_request
from babychain.local.receiver import WebhookReceiver
from babychain.local.runner import LocalEngine

ROOT = Path(__file__).resolve().parents[1]


def finished_chain3(engine: LocalEngine, receiver: WebhookReceiver) -> str:
    key = engine.settings.api_keys[0]
    with httpx.Client(base_url=engine.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        body = {**demo_request("chain3", receiver.url), "metadata": {"project": "lighthouse", "shot": 12}}
        run = client.post("/api/v1/chains/chain3/runs", json=body, headers={"Idempotency-Key": "screenshot"}).json()
        deadline = time.monotonic() + 120
        while run["status"] not in ("succeeded", "failed", "canceled") or run.get("callback", {}).get("status") not in (
            "delivered",
            "failed",
        ):
            if time.monotonic() > deadline:
                raise SystemExit(f"the run did not finish: {run['status']}")
            time.sleep(0.2)
            run = client.get(f"/api/v1/chains/get/{run['id']}").json()
    if run["status"] != "succeeded":
        raise SystemExit(f"the run ended {run['status']}: {run.get('error')}")
    run_id: str = run["id"]
    return run_id


def screenshot(engine: LocalEngine, run_id: str, out: Path, chromium: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1360, "height": 820})
        page.goto(f"{engine.base_url}/runs/{run_id}#key={engine.settings.api_keys[0]}")
        page.locator('body[data-run-status="succeeded"]').wait_for()
        page.wait_for_function(
            "() => [...document.querySelectorAll('.preview img')].filter(i => i.complete && i.naturalWidth).length"
            " === 2"
        )
        page.wait_for_function(
            "() => { const v = document.querySelector('.preview video'); return v?.readyState >= 1 }"
        )
        # A frame from the middle of the clip rather than the first one.
        page.evaluate(
            """() => new Promise((resolve) => { const v = document.querySelector('.preview video');
                       v.addEventListener('seeked', resolve, {once: true}); v.currentTime = 1.6; })"""
        )
        # Enough data to play on: the player has drawn the frame and put its loading spinner away.
        page.wait_for_function("() => document.querySelector('.preview video').readyState >= 3")
        page.wait_for_timeout(800)
        page.mouse.move(0, 0)  # no hover state
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "inspector.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="babychain-screenshot-") as home:
        engine = LocalEngine(home, api_workers=1, step_workers=1, callback_workers=1).start()
        receiver = WebhookReceiver(engine.settings.callback_secret).start()
        try:
            run_id = finished_chain3(engine, receiver)
            screenshot(engine, run_id, args.out, args.chromium)
        finally:
            receiver.stop()
            engine.stop()
    print(f"wrote {args.out} (run {run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
