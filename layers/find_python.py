"""Prints the path of a CPython of the layers' version (the template's runtime, 3.13), which compiles the layers'
bytecode; exits 1 when this machine has none.

Bytecode is specific to a Python version (`__pycache__/<module>.cpython-313.pyc`), so the build interpreter's own
version would be useless on the runtime. Looked for, in order: `python3.13` on PATH (if it runs: a pyenv shim of a
version that is not selected does not), then the interpreters pyenv and uv install (`$PYENV_ROOT/versions/3.13.*`,
`~/.local/share/uv/python/cpython-3.13.*`), newest first. `LAYER_COMPILE_PYTHON=...` on the make command line skips
the search.

Usage: python layers/find_python.py [3.13]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def cache_tag(version: str) -> str:
    return "cpython-" + version.replace(".", "")


def is_version(python: str | Path, version: str) -> bool:
    """Whether `python` runs and is the CPython whose bytecode the runtime reads (same cache tag)."""
    try:
        out = subprocess.run(
            [str(python), "-S", "-c", "import sys; print(sys.implementation.cache_tag)"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip() == cache_tag(version)


def _patch_level(path: Path) -> tuple[int, ...]:
    digits = path.name.split("-")[1] if path.name.startswith("cpython-") else path.name
    return tuple(int(p) for p in digits.split(".") if p.isdigit())


def candidates(version: str) -> list[Path]:
    found: list[Path] = []
    on_path = shutil.which(f"python{version}")
    if on_path:
        found.append(Path(on_path))
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    uv_root = Path(os.environ.get("UV_PYTHON_INSTALL_DIR") or Path.home() / ".local" / "share" / "uv" / "python")
    for installs in (
        sorted((pyenv_root / "versions").glob(f"{version}.*"), key=_patch_level, reverse=True),
        sorted(uv_root.glob(f"cpython-{version}.*"), key=_patch_level, reverse=True),
    ):
        found.extend(install / "bin" / f"python{version}" for install in installs)
    return found


def find_python(version: str) -> Path | None:
    return next((path for path in candidates(version) if is_version(path, version)), None)


def main() -> int:
    version = sys.argv[1] if len(sys.argv) > 1 else "3.13"
    python = find_python(version)
    if python is None:
        print(f"no Python {version} found (PATH, pyenv, uv)", file=sys.stderr)
        return 1
    print(python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
