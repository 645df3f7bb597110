"""Removes from a built dependency layer what the Lambda runtime already provides (boto3, botocore, s3transfer), and
then the distributions only those needed.

    python layers/prune_runtime.py build/layers/dependencies/python -r layers/requirements.txt [-r ...]

pip cannot leave out one dependency, and some packages pull these in (aws-xray-sdk, for Powertools' Tracer, requires
botocore: 30 MB). Carrying them would also put a layer botocore next to the runtime's boto3, two versions that were
not released together. A distribution is removed through its RECORD; one is kept when the requirement files ask for
it (a file that names boto3 on purpose keeps it), or a kept distribution requires it, markers and extras evaluated
for the target as layers/check_layer.py does.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from check_layer import LAMBDA_RUNTIME_PROVIDES, Distribution, Layer, Requirement, canonicalize_name, requirements_of


def roots(requirement_files: list[Path]) -> dict[str, set[str]]:
    """Canonical name -> extras asked for, from pip requirement files (requirement lines only)."""
    found: dict[str, set[str]] = {}
    for path in requirement_files:
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.split(" #", 1)[0].strip()
            if line and not line.startswith(("#", "-")):
                req = Requirement(line)
                found.setdefault(canonicalize_name(req.name), set()).update(req.extras)
    return found


def remove(dist: Distribution, python_dir: Path) -> int:
    """Deletes a distribution's files as its RECORD lists them; returns the bytes freed."""
    freed = 0
    folders: set[Path] = set()
    for line in (dist.dist_info / "RECORD").read_text(encoding="utf-8").splitlines():
        rel = line.rsplit(",", 2)[0]
        path = (python_dir / rel).resolve()
        if rel and path.is_relative_to(python_dir.resolve()) and path.is_file():
            freed += path.stat().st_size
            path.unlink()
            folders.update(p for p in path.parents if p.is_relative_to(python_dir.resolve()) and p != python_dir)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        shutil.rmtree(folder / "__pycache__", ignore_errors=True)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    shutil.rmtree(dist.dist_info, ignore_errors=True)
    return freed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prunes what the Lambda runtime provides from a dependency layer.")
    parser.add_argument("python_dir", type=Path, help="the layer's python/ folder")
    parser.add_argument("-r", dest="requirements", type=Path, action="append", default=[], help="a requirement file")
    args = parser.parse_args(argv)
    python_dir: Path = args.python_dir.resolve()
    wanted = roots(args.requirements)
    layer = Layer("dependencies", python_dir)
    by_name = {canonicalize_name(d.name): d for d in layer.distributions}
    # A requirement file that names one of them on purpose (to pin a newer boto3, say) keeps it.
    runtime = {canonicalize_name(n) for n in LAMBDA_RUNTIME_PROVIDES} - set(wanted)

    # Keep what the requirement files ask for and everything that needs, never going through the runtime's packages.
    keep: dict[str, set[str]] = {}
    todo = list(wanted.items())
    while todo:
        name, extras = todo.pop()
        if name not in by_name or (name in keep and extras <= keep[name]):
            continue
        keep.setdefault(name, set()).update(extras)
        for req in requirements_of(by_name[name], keep[name]):
            dep = canonicalize_name(req.name)
            if dep not in runtime:
                todo.append((dep, set(req.extras)))

    for name, dist in sorted(by_name.items()):
        if name not in keep:
            why = "provided by the Lambda runtime" if name in runtime else "only needed by what the runtime provides"
            freed = remove(dist, python_dir)
            print(f"pruned {dist.name} {dist.version} ({why}): {freed / 1_048_576:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
