"""docs/webhooks.md's examples, run as the page shows them: the ```js block and the two ```python blocks are taken
from the markdown (so the page and the tests cannot drift), the Node one run with Node and the npm `standardwebhooks`
package pinned in examples/node/, on a real callback that the engine sent to a receiver saving it as `babychain
serve` does, and on altered copies of it.

Node and the package are installed by .ci/run (apt `nodejs npm` when node is missing, then `npm ci` in
examples/node/); without them these tests fail and say how to install them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from babychain.local.cli import _announcer
from babychain.local.receiver import WebhookReceiver
from babychain.local.runner import LocalEngine
from babychain.security.webhooks import signature_headers
from tests.conftest import CALLBACK_SECRET, client_for, wait_for_run
from tests.integration.requests import chain_request

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "webhooks.md"
NODE_PROJECT = ROOT / "examples" / "node"
INSTALL = "apt-get install nodejs npm && (cd examples/node && npm ci)  (.ci/run does both when they are missing)"


def doc_blocks(heading: str, language: str) -> list[str]:
    """The ```<language> blocks of the page's section under `heading` (up to the next heading of any level)."""
    lines = DOC.read_text(encoding="utf-8").split("\n")
    blocks: list[str] = []
    open_block: tuple[str, list[str]] | None = None  # (its language, its lines) while inside a fenced block
    for line in lines[lines.index(heading) + 1 :]:
        if open_block is None and line.startswith("#"):
            break  # the next heading (inside a block, "#" is a comment)
        if not line.startswith("```"):
            if open_block is not None:
                open_block[1].append(line)
        elif open_block is None:
            open_block = (line.removeprefix("```"), [])
        else:
            if open_block[0] == language:
                blocks.append("\n".join(open_block[1]) + "\n")
            open_block = None
    return blocks


def doc_script() -> str:
    """The one ```js block under the page's Node heading."""
    blocks = doc_blocks("### Node, with `standardwebhooks` (npm)", "js")
    assert len(blocks) == 1, f"expected one js block in docs/webhooks.md's Node section, found {len(blocks)}"
    return blocks[0]


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.fail(f"node is missing: {INSTALL}")
    version = subprocess.run([found, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    # Run here on Node 20; Debian 12's apt installs 18, which the example's code and the package also support.
    assert int(version.lstrip("v").split(".")[0]) >= 18, f"docs/webhooks.md's example wants Node 18+, found {version}"
    if not (NODE_PROJECT / "node_modules" / "standardwebhooks" / "package.json").exists():
        pytest.fail(f"the npm package standardwebhooks is missing from examples/node/node_modules: {INSTALL}")
    return found


@pytest.fixture
def run_example(node: str, tmp_path: Path) -> Callable[[Path, Path, str], subprocess.CompletedProcess[str]]:
    script = tmp_path / "verify.js"
    script.write_text(doc_script(), encoding="utf-8")

    def run(headers: Path, body: Path, secret: str) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "NODE_PATH": str(NODE_PROJECT / "node_modules"),  # the pinned package, wherever the script lies
            "BABYCHAIN_CALLBACK_SECRET": secret,
        }
        return subprocess.run(
            [node, str(script), str(headers), str(body)], capture_output=True, text=True, env=env, timeout=60
        )

    return run


def _tampered(folder: Path, name: str, body: bytes) -> Path:
    path = folder / f"{name}.body"
    path.write_bytes(body)
    return path


def test_the_pinned_package_is_the_one_the_page_names(node: str) -> None:
    installed = json.loads((NODE_PROJECT / "node_modules" / "standardwebhooks" / "package.json").read_text())
    pinned = json.loads((NODE_PROJECT / "package.json").read_text())["dependencies"]["standardwebhooks"]
    assert installed["version"] == pinned
    assert f"`standardwebhooks` {pinned} on Node 20" in DOC.read_text(encoding="utf-8")


def test_the_examples_accept_a_real_callback_and_refuse_a_tampered_one(
    engine: LocalEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_example: Callable[[Path, Path, str], subprocess.CompletedProcess[str]],
) -> None:
    saved = tmp_path / "deliveries"
    receiver = WebhookReceiver(CALLBACK_SECRET, on_delivery=_announcer(saved)).start()
    try:
        with client_for(engine) as client:
            created = client.post("/api/v1/chains/chain1/runs", json=chain_request("chain1", receiver.url))
            assert created.status_code == 202, created.text
            run_id = created.json()["id"]
            assert wait_for_run(client, run_id)["status"] == "succeeded"
        delivery = receiver.wait_for(1, timeout=60)[0]
    finally:
        receiver.stop()
    assert CALLBACK_SECRET.startswith("whsec_") and delivery.verified
    headers, body = saved / f"evt_{run_id}.headers.json", saved / f"evt_{run_id}.body"
    assert body.read_bytes() == delivery.body

    accepted = run_example(headers, body, CALLBACK_SECRET)
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout == f"evt_{run_id} chain_run.succeeded {run_id} succeeded\n"

    for name, altered in [
        ("status", delivery.body.replace(b'"succeeded"', b'"failed"', 1)),
        ("one-byte", delivery.body[:-1] + b" "),
    ]:
        refused = run_example(headers, _tampered(tmp_path, name, altered), CALLBACK_SECRET)
        assert refused.returncode != 0 and refused.stdout == "", name
        assert "No matching signature found" in refused.stderr, (name, refused.stderr)

    other = run_example(headers, body, "whsec_" + "b3RoZXItc2VjcmV0LW9mLXRoaXJ0eS10d28tYnl0ZXM=")
    assert other.returncode != 0 and "No matching signature found" in other.stderr

    # The page's two Python handlers, on the same saved delivery.
    monkeypatch.setenv("BABYCHAIN_CALLBACK_SECRET", CALLBACK_SECRET)
    saved_headers = json.loads(headers.read_text())
    for heading in ("### Python, with the BabyChain client", "### Python, with `standardwebhooks` alone"):
        [block] = doc_blocks(heading, "python")
        namespace: dict[str, Any] = {}
        exec(compile(block, f"docs/webhooks.md: {heading}", "exec"), namespace)
        assert namespace["handle"](saved_headers, body.read_bytes()) == 204, heading
        assert namespace["handle"](saved_headers, delivery.body.replace(b"chain1", b"chain2", 1)) == 400, heading


def test_the_node_example_with_a_plain_secret_signed_by_the_engine(
    tmp_path: Path, run_example: Callable[[Path, Path, str], subprocess.CompletedProcess[str]]
) -> None:
    """A secret that is not whsec_: the engine signs with its UTF-8 bytes; the page's `format: "raw"` branch."""
    secret = "plain secret, non-ASCII: grüße ☂"
    run_id = "0b6f0a4e-3c55-4c1e-9d7e-2f1d5b0c8a11"
    body = json.dumps({"type": "chain_run.failed", "data": {"id": run_id, "status": "failed"}}).encode()
    headers = tmp_path / "delivery.headers.json"
    headers.write_text(json.dumps(signature_headers(secret, f"evt_{run_id}", body)))
    good = _tampered(tmp_path, "good", body)

    accepted = run_example(headers, good, secret)
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout == f"evt_{run_id} chain_run.failed {run_id} failed\n"
    refused = run_example(headers, _tampered(tmp_path, "bad", body.replace(b"failed", b"passed")), secret)
    assert refused.returncode != 0 and "No matching signature found" in refused.stderr
    # The same secret handed to the library as a string (no raw format) is not the engine's key.
    whsec_like = run_example(headers, good, "whsec_" + secret)
    assert whsec_like.returncode != 0
