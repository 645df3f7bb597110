"""Durable storage for step outputs: provider URLs expire, so every output is copied here before it is handed on."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import quote


class ArtifactStore(ABC):
    @abstractmethod
    def put(self, key: str, content: bytes, content_type: str) -> str:
        """Stores `content` under `key` and returns its durable reference (kept on the step)."""

    def shareable(self, reference: str) -> str:
        """A URL callers and providers can fetch the artifact from (e.g. presigned); here, the reference itself."""
        return reference


class LocalArtifactStore(ArtifactStore):
    """A folder served over HTTP by the local runner (`/files/<key>`)."""

    def __init__(self, folder: str | Path, base_url: str) -> None:
        self.folder = Path(folder).resolve()
        self.base_url = base_url.rstrip("/")

    def path_for(self, key: str) -> Path:
        path = (self.folder / key).resolve()
        if not path.is_relative_to(self.folder):
            raise ValueError(f"artifact key escapes the store: {key!r}")
        return path

    def put(self, key: str, content: bytes, content_type: str) -> str:
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(content)
        tmp.replace(path)  # readers never see a half-written file
        return f"{self.base_url}/{quote(key)}"
