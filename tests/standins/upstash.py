"""A loopback stand-in for Upstash Redis's REST API in front of a real Valkey server, for the rate limiter's tests.

It speaks the protocol the upstash-redis client uses (what `upstash_redis.http` sends and reads):

- `POST /` with a JSON array, one command (`["EVAL", script, 2, key1, key2, 60, ...]`; numbers may be JSON numbers)
  -> `{"result": ...}`, or `{"error": "..."}` with HTTP 400 when Redis answers an error;
- `POST /pipeline` with an array of commands -> an array of `{"result"}` / `{"error"}`, one per command, in order
  (not atomic); `POST /multi-exec` -> the same, run between MULTI and EXEC on one connection;
- `Authorization: Bearer <token>`, else 401 `{"error": "Unauthorized"}`;
- `Upstash-Encoding: base64` (the client's default): every string in a result is base64, except the status reply
  `OK`, which is sent as is (the client decodes exactly that way); integers, null and arrays keep their JSON shape.
  Without the header, strings are sent as UTF-8 text.

Commands go to Valkey over RESP2 with a small client below (a new connection per HTTP request), so replies keep
their RESP type: a status reply is told from a bulk string, and an error inside a pipeline stays that command's.

Scripts. upstash-ratelimit 1.2 starts every Lua script with `#!lua flags=allow-key-locking`, a flag only Upstash
knows (Valkey refuses the script: "Unexpected flag in script shebang"). Like Upstash, the gateway accepts it: it
drops that flag from the shebang before EVAL, EVAL_RO and SCRIPT LOAD reach Valkey (the shebang line becomes empty
when no other flag is left, so line numbers in errors stay the same). The script Valkey caches is
then not the one the client hashed, so the gateway keeps a map from the client's SHA-1 (of the script as sent) to
Valkey's (of the script forwarded): SCRIPT LOAD answers the client's SHA-1, EVALSHA / EVALSHA_RO / SCRIPT EXISTS
translate it, and an unknown SHA-1 still gets Valkey's NOSCRIPT error, so a client falls back to EVAL as with Upstash.
(upstash-ratelimit's sync limiters send EVAL only; the map is for clients that use EVALSHA.)

Control: `token`; `requests` records (path, headers, body) of each request; `stall()` holds every request until
`release()` (or the stall's own limit), to show a caller's timeout; `stop()` makes it unreachable.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from babychain.local.loopback import LoopbackServer, QuietHandler

UPSTASH_ONLY_FLAGS = ("allow-key-locking",)
_SHEBANG = re.compile(r"\A#!(?P<engine>\S+)(?P<rest>[^\n]*)")


# ------------------------------------------------------------------------------------------------------------ RESP


class RespError(Exception):
    """An error reply (`-ERR ...`): a value in a pipeline's answers, not a failure of the connection."""


@dataclass(frozen=True)
class Status:
    """A status reply (`+OK`, `+QUEUED`), as opposed to a bulk string."""

    text: str


class Resp:
    """A minimal RESP2 client: one connection, commands out, typed replies in."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.reader = self.sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def send(self, *commands: list[Any]) -> None:
        out = bytearray()
        for command in commands:
            out += b"*%d\r\n" % len(command)
            for arg in command:
                data = arg if isinstance(arg, bytes) else str(arg).encode()
                out += b"$%d\r\n%s\r\n" % (len(data), data)
        self.sock.sendall(bytes(out))

    def read(self) -> Any:
        line = self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("Valkey closed the connection")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return Status(body.decode())
        if kind == b"-":
            return RespError(body.decode())
        if kind == b":":
            return int(body)
        if kind == b"$":
            size = int(body)
            if size < 0:
                return None
            data = self.reader.read(size + 2)
            return data[:-2]
        if kind == b"*":
            size = int(body)
            return None if size < 0 else [self.read() for _ in range(size)]
        raise ConnectionError(f"unexpected RESP reply {line!r}")

    def call(self, *command: Any) -> Any:
        self.send(list(command))
        return self.read()


# --------------------------------------------------------------------------------------------------------- scripts


def strip_upstash_flags(script: str) -> str:
    """The script without the flags only Upstash understands (the shebang line emptied if nothing is left)."""
    match = _SHEBANG.match(script)
    if match is None:
        return script
    words = match.group("rest").split()
    flags = [w for w in words if w.startswith("flags=")]
    kept = []
    for word in flags:
        kept += [f for f in word.removeprefix("flags=").split(",") if f and f not in UPSTASH_ONLY_FLAGS]
    others = [w for w in words if not w.startswith("flags=")]
    if not kept and not others:
        line = ""
    else:
        line = f"#!{match.group('engine')} " + " ".join([*others, *([f"flags={','.join(kept)}"] if kept else [])])
    return line + script[match.end() :]


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------------------------- gateway


class UpstashGateway(LoopbackServer):
    def __init__(self, valkey_host: str, valkey_port: int, token: str = "upstash-test-token-0001") -> None:
        self.valkey = (valkey_host, valkey_port)
        self.token = token
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self.scripts: dict[str, str] = {}  # the client's SHA-1 -> the forwarded script's SHA-1
        self._lock = threading.Lock()
        self._stall = threading.Event()
        self._release = threading.Event()
        self.stall_limit_seconds = 30.0
        self.stalled_requests = 0
        gateway = self

        class Handler(QuietHandler, keep_alive=True):
            def do_POST(self) -> None:
                gateway._handle(self)

        super().__init__(Handler, name="upstash-gateway")

    # ------------------------------------------------------------------------------------------------- control

    @contextmanager
    def stall(self) -> Iterator[None]:
        """Holds every request until the block ends (at most `stall_limit_seconds`), answering nothing meanwhile."""
        self._release.clear()
        self._stall.set()
        try:
            yield
        finally:
            self._stall.clear()
            self._release.set()

    def keys(self) -> list[str]:
        connection = Resp(*self.valkey)
        try:
            return sorted(k.decode() for k in connection.call("KEYS", "*"))
        finally:
            connection.close()

    def flush(self) -> None:
        connection = Resp(*self.valkey)
        try:
            connection.call("FLUSHALL")
        finally:
            connection.close()

    # ------------------------------------------------------------------------------------------------ protocol

    def _handle(self, handler: QuietHandler) -> None:
        raw = handler.read_body()
        headers = {k.lower(): v for k, v in handler.headers.items()}
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with self._lock:
            self.requests.append((handler.path, headers, body))
        if self._stall.is_set():
            with self._lock:
                self.stalled_requests += 1
            self._release.wait(self.stall_limit_seconds)
        if headers.get("authorization") != f"Bearer {self.token}":
            handler.send_json(401, {"error": "Unauthorized"})
            return
        encode = headers.get("upstash-encoding") == "base64"
        path = handler.path.rstrip("/") or "/"
        if path == "/" and _is_command(body):
            status, answer = self._single(body, encode)
        elif path in ("/pipeline", "/multi-exec") and isinstance(body, list) and all(map(_is_command, body)):
            status, answer = 200, self._batch(body, encode, atomic=path == "/multi-exec")
        else:
            status, answer = 400, {"error": "ERR failed to parse command"}
        handler.send_json(status, answer)

    def _single(self, command: list[Any], encode: bool) -> tuple[int, dict[str, Any]]:
        connection = Resp(*self.valkey)
        try:
            reply = self._run(connection, command)
        finally:
            connection.close()
        if isinstance(reply, RespError):
            return 400, {"error": str(reply)}
        return 200, {"result": _encode(reply, encode)}

    def _batch(self, commands: list[list[Any]], encode: bool, *, atomic: bool) -> list[dict[str, Any]]:
        connection = Resp(*self.valkey)
        try:
            if atomic:
                connection.call("MULTI")
                for command in commands:
                    self._run(connection, command)  # +QUEUED, or an error that aborts the EXEC below
                done = connection.call("EXEC")
                replies = done if isinstance(done, list) else [done] * len(commands)
            else:
                replies = [self._run(connection, command) for command in commands]
        finally:
            connection.close()
        return [{"error": str(r)} if isinstance(r, RespError) else {"result": _encode(r, encode)} for r in replies]

    def _run(self, connection: Resp, command: list[Any]) -> Any:
        args = [a if isinstance(a, str) else json.dumps(a) for a in command]
        name = args[0].upper()
        sub = args[1].upper() if len(args) > 1 else ""
        if name in ("EVAL", "EVAL_RO") and len(args) > 1:
            args[1] = self._accept_script(args[1])
        elif name == "SCRIPT" and sub == "LOAD" and len(args) > 2:
            loaded = connection.call("SCRIPT", "LOAD", self._accept_script(args[2]))
            # Valkey answers the forwarded script's SHA-1; the client expects the one of the script it sent.
            return loaded if isinstance(loaded, RespError) else sha1(args[2]).encode()
        elif name in ("EVALSHA", "EVALSHA_RO") and len(args) > 1:
            args[1] = self.scripts.get(args[1].lower(), args[1])
        elif name == "SCRIPT" and sub == "EXISTS":
            args[2:] = [self.scripts.get(a.lower(), a) for a in args[2:]]
        return connection.call(*args)

    def _accept_script(self, script: str) -> str:
        forwarded = strip_upstash_flags(script)
        with self._lock:
            self.scripts[sha1(script)] = sha1(forwarded)
        return forwarded


def _is_command(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and isinstance(value[0], str)
        and all(isinstance(a, str | int | float) and not isinstance(a, bool) for a in value)
    )


def _encode(reply: Any, base64_strings: bool) -> Any:
    if isinstance(reply, Status):
        if reply.text == "OK" or not base64_strings:
            return reply.text
        return base64.b64encode(reply.text.encode()).decode()
    if isinstance(reply, bytes):
        return base64.b64encode(reply).decode() if base64_strings else reply.decode("utf-8", "replace")
    if isinstance(reply, list):
        return [_encode(item, base64_strings) for item in reply]
    if isinstance(reply, RespError):
        return str(reply)
    return reply  # int or None
