"""Durable storage for step outputs: provider URLs expire, so every output is copied here before it is handed on."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import quote

from babychain.ids import is_canonical_uuid


def run_prefix(run_id: str) -> str:
    """Where a run's outputs live: every key of the run starts with this (the bucket's lifecycle rule and the
    retention purge rely on it)."""
    if not is_canonical_uuid(run_id):
        raise ValueError(f"not a run id: {run_id!r}")
    return f"runs/{run_id}/"


class ArtifactStore(ABC):
    @abstractmethod
    def put(self, key: str, content: bytes, content_type: str) -> str:
        """Stores `content` under `key` and returns its durable reference (kept on the step)."""

    def shareable(self, reference: str) -> str:
        """A URL callers and providers can fetch the artifact from (e.g. presigned); here, the reference itself."""
        return reference

    def delete_run(self, run_id: str) -> None:  # noqa: B027 - S3 needs no call: its lifecycle rule expires objects
        """Deletes the run's outputs, once the run itself is deleted (retention). Nothing here: in the bucket the
        lifecycle rule expires `runs/` objects after the same number of days."""


class LocalArtifactStore(ArtifactStore):
    """A folder served over HTTP by the local runner (`/files/<key>`)."""

    def __init__(self, folder: str | Path, base_url: str) -> None:
        self.folder = Path(folder).resolve()
        self.base_url = base_url.rstrip("/")
        self._root = str(self.folder)
        # Folders below the root this store made (True) or found to be real folders, not links (False). A put into a
        # known folder asks the file system nothing before its create: each mkdir, lstat and failed lookup is a
        # system call, and on ext4 a mkdir that finds its folder is not free either.
        self._folders: dict[str, bool] = {}

    def path_for(self, key: str) -> Path:
        return Path(self._path(key))

    def _path(self, key: str) -> str:
        # Plain os.path on strings (pathlib costs a few hundred Python calls per put); the same resolve and check.
        if _PLAIN_KEY.fullmatch(key) and not _has_link(self._root, key):
            # No `.`/`..` and no link below the resolved root: the path is what realpath would answer, without
            # realpath's lstat of every component of the root as well.
            return f"{self._root}{os.sep}{key}"
        path = os.path.realpath(os.path.join(self._root, key))
        if path != self._root and not path.startswith(self._root + os.sep):
            raise ValueError(f"artifact key escapes the store: {key!r}")
        return path

    def put(self, key: str, content: bytes, content_type: str) -> str:
        path = None
        if _PLAIN_KEY.fullmatch(key):
            try:
                path = self._plain_path(key)
            except FileNotFoundError:  # no root folder yet, or a known folder went away (retention): from the root
                self._folders.clear()
                os.makedirs(self._root, exist_ok=True)
                path = self._plain_path(key)
        if path is None:  # not a plain key, or a link on the way: realpath decides, as it always did
            path = self._path(key)
            _make_folder(os.path.dirname(path))
        tmp = path + ".part"
        try:
            _write(tmp, content)
        except FileNotFoundError:  # the folder went away since it was made (retention): make it again
            self._folders.clear()
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _write(tmp, content)
        os.replace(tmp, path)  # readers never see a half-written file
        return f"{self.base_url}/{quote(key)}"

    def _plain_path(self, key: str) -> str | None:
        """The path of a plain key with its folders made, or None when a link is on the way (or at the file itself).

        Each folder below the root is made with one mkdir; one that exists already is checked with lstat to be a
        folder and not a link (the check `_has_link` makes), once per process. In a folder this store made itself
        nothing was there to be a link, so the file's own name is not looked up either."""
        folders = self._folders
        names = key.split("/")
        path = self._root
        made = True  # the root: whatever is below it gets checked
        for name in names[:-1]:
            path = f"{path}{os.sep}{name}"
            known = folders.get(path)
            if known is not None:
                made = known
                continue
            try:
                os.mkdir(path)
                made = True
            except FileExistsError:
                mode = os.lstat(path).st_mode
                if stat.S_ISLNK(mode):
                    return None
                if not stat.S_ISDIR(mode):
                    raise
                made = False
            if len(folders) >= _MAX_KNOWN_FOLDERS:
                folders.clear()
            folders[path] = made
        path = f"{path}{os.sep}{names[-1]}"
        if not made:
            try:
                if stat.S_ISLNK(os.lstat(path).st_mode):
                    return None
            except FileNotFoundError:
                pass
        return path

    def delete_run(self, run_id: str) -> None:
        """Removes the run's folder (`runs/<run id>/`) and everything in it; a run without files is fine."""
        folder = self.path_for(run_prefix(run_id))
        self._folders.clear()
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(folder)


# Folders a store remembers (a few runs' worth per container; forgotten all at once past it).
_MAX_KNOWN_FOLDERS = 4096

# A relative key of plain names: no empty, `.` or `..` component, nothing but letters, digits, `.`, `_`, `-`.
_PLAIN_KEY = re.compile(r"(?!\.\.?(?:/|$))[A-Za-z0-9._-]+(?:/(?!\.\.?(?:/|$))[A-Za-z0-9._-]+)*")


def _has_link(root: str, key: str) -> bool:
    """Whether any existing component of `key` below `root` is a symbolic link (past the first missing one, nothing
    exists to be one)."""
    path = root
    for name in key.split("/"):
        path = f"{path}{os.sep}{name}"
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                return True
        except FileNotFoundError:
            return False
        except OSError:
            return True  # let realpath decide
    return False


def _make_folder(folder: str) -> None:
    """`os.makedirs(folder, exist_ok=True)` in fewer calls for the usual cases: the folder itself (a step's folder,
    when its run's folder exists), else its parent and then itself (a run's first output); deeper, makedirs."""
    try:
        _mkdir(folder)
    except FileNotFoundError:
        try:
            _mkdir(os.path.dirname(folder))
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            return
        _mkdir(folder)


def _mkdir(path: str) -> None:
    try:
        os.mkdir(path)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


def _write(path: str, content: bytes) -> None:
    # The file through its descriptor: `open()` would add a stat, an isatty ioctl and a seek to the create and write.
    # O_NOFOLLOW: a link planted at the temporary name is refused, not written through.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
