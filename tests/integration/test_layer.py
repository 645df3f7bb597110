"""The Lambda layers: `make layers` builds them from arm64 wheels (downloaded from PyPI, through pip's cache), and
`layers/check_layer.py` finds every runtime import of every handler in them.

Nothing here is skipped: without PyPI the build fails, and so does the test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKER = REPO / "layers" / "check_layer.py"
EM_AARCH64 = 183


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("layers")
    make = ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "layers"]
    build = subprocess.run(
        [*make, f"LAYERS_DIR={out}", f"PYTHON={sys.executable}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, f"make layers failed:\n{build.stdout}\n{build.stderr}"
    return out


def run_checker(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECKER), *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def e_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")


def test_built_layers_hold_every_runtime_import(layers: Path) -> None:
    result = run_checker(layers)
    assert result.returncode == 0, result.stdout + result.stderr
    report = result.stdout
    assert "Result: OK" in report
    for handler in sorted(p.parent.name for p in (REPO / "functions").glob("*/app.py")):
        assert f"Handler {handler} " in report
    lines = report.splitlines()
    for name in ("aws_lambda_powertools", "pydantic", "httpx", "psycopg", "psycopg_pool", "supabase", "sentry_sdk"):
        found = [line for line in lines if line.startswith(f"  {name} ")]
        assert found and all("dependencies layer" in line for line in found), name
    assert all("Lambda runtime" in line for line in lines if line.startswith("  boto3 "))
    assert "MB unzipped" in report and "MB zipped" in report


def test_layer_layout(layers: Path) -> None:
    shared, deps = layers / "shared" / "python", layers / "dependencies" / "python"
    assert (shared / "babychain" / "services.py").is_file()
    assert not (deps / "babychain").exists()
    assert not (deps / "boto3").exists() and not (deps / "botocore").exists()
    for root in (shared, deps):
        assert not list(root.rglob("__pycache__")), "bytecode caches should be stripped"
        assert not (root / "bin").exists()


def test_dependency_layer_binaries_are_aarch64(layers: Path) -> None:
    deps = layers / "dependencies" / "python"
    for package in ("psycopg_binary", "pydantic_core"):
        extensions = sorted((deps / package).glob("*.so"))
        assert extensions, f"no extension modules in {package}"
        for so in extensions:
            assert ".cpython-313-aarch64-linux-gnu." in so.name, so.name
            assert e_machine(so) == EM_AARCH64, so
    libs = sorted((deps / "psycopg_binary.libs").glob("libpq*"))
    assert libs and all(e_machine(lib) == EM_AARCH64 for lib in libs)


def test_a_missing_import_is_reported(layers: Path, tmp_path: Path) -> None:
    broken = tmp_path / "dependencies"
    shutil.copytree(layers / "dependencies", broken, symlinks=True)
    shutil.rmtree(broken / "python" / "httpx")
    for dist_info in (broken / "python").glob("httpx-*.dist-info"):
        shutil.rmtree(dist_info)

    result = run_checker("--shared", layers / "shared", "--dependencies", broken)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "PROBLEM MISSING httpx: imported at " in result.stdout
    assert "Result: FAIL" in result.stdout


def test_checker_needs_built_layers(tmp_path: Path) -> None:
    result = run_checker(tmp_path)
    assert result.returncode == 2
    assert "make layers" in result.stderr
