"""`babychain keys create|list|revoke|rotate` against a DATABASE_URL, and what each does to requests with the key."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from babychain.auth import create_key
from babychain.local.runner import LocalEngine
from babychain.services import services
from tests.conftest import client_for


def keys(database_url: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BABYCHAIN_")}
    env["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "babychain.local.cli", "--home", str(home), "keys", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def _key(output: str) -> str:
    found = re.findall(r"^bc_[A-Za-z0-9_-]{40,}$", output, re.MULTILINE)
    assert len(found) == 1, output
    return found[0]


def _status(engine: LocalEngine, key: str, path: str = "/api/v1/chains/runs") -> int:
    with client_for(engine, key) as client:
        return client.get(path).status_code


def test_create_list_revoke_and_rotate(
    make_engine: Callable[..., LocalEngine], database_url: str, tmp_path: Path
) -> None:
    engine = make_engine(workers=False)
    created = keys(database_url, tmp_path, "create", "--name", "reader", "--scopes", "chains:read")
    assert created.returncode == 0, created.stdout + created.stderr
    reader = _key(created.stdout)
    assert _status(engine, reader) == 200
    with client_for(engine, reader) as client:  # read-only: creating a run needs chains:run
        assert client.post("/api/v1/chains/chain1/runs", json={}).status_code == 403

    listed = keys(database_url, tmp_path, "list", "--json")
    rows = json.loads(listed.stdout)
    [row] = [r for r in rows if r["name"] == "reader"]
    assert row["key_prefix"] == reader[:12] and row["scopes"] == ["chains:read"] and row["is_active"]
    assert reader not in listed.stdout  # never the key itself
    table = keys(database_url, tmp_path, "list").stdout
    assert reader[:12] in table and "active" in table and reader not in table

    rotated = keys(database_url, tmp_path, "rotate", reader[:12])
    assert rotated.returncode == 0, rotated.stdout
    replacement = _key(rotated.stdout)
    assert _status(engine, reader) == 401 and _status(engine, replacement) == 200
    new_row = next(
        r
        for r in json.loads(keys(database_url, tmp_path, "list", "--json").stdout)
        if r["key_prefix"] == replacement[:12]
    )
    assert new_row["name"] == "reader" and new_row["scopes"] == ["chains:read"]

    revoked = keys(database_url, tmp_path, "revoke", new_row["id"])
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert _status(engine, replacement) == 401
    again = keys(database_url, tmp_path, "revoke", new_row["id"])
    assert again.returncode == 1 and "no single active key" in again.stdout


def test_an_expired_key_is_401_and_bad_input_is_one_line(
    make_engine: Callable[..., LocalEngine], database_url: str, tmp_path: Path
) -> None:
    engine = make_engine(workers=False)
    store = services().store
    past = create_key(store, "old", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    future = create_key(store, "new", expires_at=datetime.now(UTC) + timedelta(days=1))
    assert _status(engine, past) == 401 and _status(engine, future) == 200
    bad = keys(database_url, tmp_path, "create", "--name", "x", "--scopes", "chains:everything")
    assert bad.returncode == 2 and "unknown scope" in bad.stdout and "Traceback" not in bad.stderr
    unknown = keys(database_url, tmp_path, "rotate", "bc_nosuchkey")
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
