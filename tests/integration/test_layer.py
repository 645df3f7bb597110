"""The Lambda layers: `make layers` builds them from arm64 wheels (downloaded from PyPI, through pip's cache) pinned
with their hashes in layers/requirements.lock, compiles them for CPython 3.13, and `layers/check_layer.py` finds every
runtime import of every handler in them. Two builds are identical, and the lock covers its inputs.

Nothing here is skipped: without PyPI the build fails, and so does the test.
"""

from __future__ import annotations

import _imp
import ast
import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
CHECKER = REPO / "layers" / "check_layer.py"
LOCK = REPO / "layers" / "requirements.lock"
LOCK_INPUTS = (REPO / "layers" / "requirements.txt", REPO / "layers" / "requirements-optional.txt")
RUNTIME_PROVIDED = REPO / "layers" / "runtime-provided.txt"
EM_AARCH64 = 183
PYC_MAGIC_313 = (3571).to_bytes(2, "little") + b"\r\n"  # importlib.util.MAGIC_NUMBER of CPython 3.13
LOCK_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$")


def build_layers(out: Path) -> Path:
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


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_layers(tmp_path_factory.mktemp("layers"))


def requirement_lines(path: Path) -> list[Requirement]:
    lines = (raw.split(" #", 1)[0].strip() for raw in path.read_text(encoding="utf-8").splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith(("#", "-"))]


def lock_entries() -> dict[str, tuple[str, list[str]]]:
    """Canonical name -> (pinned version, its hashes), from layers/requirements.lock."""
    entries: dict[str, tuple[str, list[str]]] = {}
    current: list[str] = []
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        if match := LOCK_ENTRY.match(line):
            current = []
            entries[canonicalize_name(match[1])] = (match[2], current)
        elif line.strip().startswith("--hash="):
            current.append(line.strip().removesuffix("\\").strip())
        else:
            assert not line or line.startswith(" ") or line.startswith("#"), f"unexpected lock line: {line!r}"
    return entries


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


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
    # GET /api/v1/openapi.json serves the committed document from the layer; Swagger UI stays in the local shape.
    document = shared / "babychain" / "api" / "openapi.json"
    assert document.read_bytes() == (REPO / "docs" / "openapi.json").read_bytes()
    assert not (shared / "babychain" / "local" / "swagger_ui").exists()
    for runtime_provided in ("boto3", "botocore", "s3transfer", "dateutil", "six.py"):
        assert not (deps / runtime_provided).exists(), runtime_provided
    for root in (shared, deps):
        assert not (root / "bin").exists()


def test_layers_ship_bytecode_for_the_runtime(layers: Path) -> None:
    """Every module has an unchecked-hash .pyc of CPython 3.13 (PEP 552) for its own source, and no other bytecode."""
    for root in (layers / "shared" / "python", layers / "dependencies" / "python"):
        sources = sorted(root.rglob("*.py"))
        assert len(sources) > 50, root
        for source in sources:
            header = (source.parent / "__pycache__" / f"{source.stem}.cpython-313.pyc").read_bytes()[:16]
            assert header[:4] == PYC_MAGIC_313, source
            assert int.from_bytes(header[4:8], "little") == 0b01, f"{source}: not an unchecked-hash .pyc"
            assert header[8:] == _imp.source_hash(int.from_bytes(PYC_MAGIC_313, "little"), source.read_bytes())
        others = [p for p in root.rglob("*.py[co]") if not p.name.endswith(".cpython-313.pyc")]
        assert not others, others[:5]
    report = run_checker(layers).stdout
    assert re.search(r"shared +(\d+) modules, \1 with an unchecked-hash cpython-313 \.pyc", report), report
    assert re.search(r"dependencies +(\d+) modules, \1 with an unchecked-hash cpython-313 \.pyc", report), report


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


def test_a_pyc_that_does_not_match_its_source_is_reported(layers: Path, tmp_path: Path) -> None:
    # An unchecked-hash .pyc is used without looking at the source: an edit after the build would never run.
    shared = tmp_path / "shared"
    shutil.copytree(layers / "shared", shared)
    ids = shared / "python" / "babychain" / "ids.py"
    ids.write_text(ids.read_text(encoding="utf-8") + "\n# edited after the build\n", encoding="utf-8")

    result = run_checker("--shared", shared, "--dependencies", layers / "dependencies")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "PROBLEM 1 .pyc files in the shared layer are not CPython 3.13 bytecode of their source" in result.stdout
    assert "babychain/ids.py" in result.stdout


def test_the_build_needs_a_python_of_the_runtime_version(tmp_path: Path) -> None:
    make = ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "build-SharedLayer"]
    wrong = "3.13" not in sys.implementation.cache_tag
    build = subprocess.run(
        [*make, f"ARTIFACTS_DIR={tmp_path}", f"LAYER_COMPILE_PYTHON={sys.executable if wrong else 'false'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode != 0
    assert "The layers' bytecode needs a CPython 3.13 (cache tag cpython-313)" in build.stderr
    assert "LAYER_PYC=0" in build.stderr
    assert not list(tmp_path.rglob("*.pyc"))


def test_checker_needs_built_layers(tmp_path: Path) -> None:
    result = run_checker(tmp_path)
    assert result.returncode == 2
    assert "make layers" in result.stderr


def test_lock_pins_every_input_with_hashes() -> None:
    entries = lock_entries()
    assert len(entries) > 20
    for path in LOCK_INPUTS:
        for req in requirement_lines(path):
            name = canonicalize_name(req.name)
            assert name in entries, f"{req} ({path.name}) is not pinned in {LOCK.name}: run `make lock`"
            assert req.specifier.contains(entries[name][0], prereleases=True), f"{req}: the lock has {entries[name][0]}"
    extras = {"aws-xray-sdk": "aws-lambda-powertools[tracer]", "psycopg-binary": "psycopg[binary]"}
    for name, why in extras.items():
        assert name in entries, f"{name} ({why}) is not pinned"
    for name, (_, hashes) in entries.items():
        assert hashes and all(h.startswith("--hash=sha256:") for h in hashes), f"{name} has no hashes"


def test_lock_leaves_out_what_the_runtime_provides() -> None:
    checker = ast.parse(CHECKER.read_text(encoding="utf-8"))
    provides = next(
        ast.literal_eval(node.value)
        for node in checker.body
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "LAMBDA_RUNTIME_PROVIDES"
    )
    overridden = {canonicalize_name(r.name) for r in requirement_lines(RUNTIME_PROVIDED)}
    assert overridden == {canonicalize_name(n) for n in provides}
    entries = lock_entries()
    # ...and what only botocore needs (aws-xray-sdk -> botocore -> python-dateutil -> six).
    for name in (*overridden, "python-dateutil", "six"):
        assert name not in entries, f"{name} is locked; the runtime provides it, or only what it provides needs it"


def test_two_builds_are_identical(layers: Path, tmp_path: Path) -> None:
    again = build_layers(tmp_path / "again")
    for layer in ("shared", "dependencies"):
        first, second = file_hashes(layers / layer), file_hashes(again / layer)
        assert first, layer
        assert sorted(first) == sorted(second), f"the {layer} layers hold different files"
        differ = sorted(p for p in first if first[p] != second[p])
        assert not differ, f"the {layer} layers differ in {differ[:10]}"
