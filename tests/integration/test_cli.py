"""The README's run command: `babychain demo` completes a chain3 run and verifies its callback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_chain3_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BABYCHAIN_", "DATABASE_URL"))}
    result = subprocess.run(
        [sys.executable, "-m", "babychain.local.cli", "--home", str(tmp_path / "home"), "demo"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Free of library noise: no warnings (Powertools' empty-metrics one used to appear on every invocation).
    assert "Warning" not in result.stdout + result.stderr, result.stderr
    out = result.stdout
    assert "DEVELOPMENT SETTING ON" in out
    assert "run succeeded (current_step_key=completed)" in out
    for step in ("text_to_image", "image_to_image", "image_to_video"):
        assert f"{step:<15} succeeded" in out
    assert "[h264" in out and "[JPEG" in out and "[PNG" in out
    assert "signature VERIFIED with the standardwebhooks reference library" in out
    videos = list((tmp_path / "home" / "artifacts" / "runs").glob("*/image_to_video/output-0.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000
