"""The one-machine HTTP edge: uvicorn serving a small ASGI app that plays API Gateway.

API routes become API Gateway HTTP API (v2) events for the very same Lambda handlers; `/files/` serves the artifact
folder with `HEAD` and `Range` (so browsers can seek in videos); `/runs` serves the run inspector's static pages
(`babychain.local.inspector`), and `/` sends browsers there; `/docs` is the API reference (Swagger UI, served from
files on this machine: `babychain.local.api_docs`). The handler runs on the event loop's thread and
blocks it: a worker process handles one invocation at a time, which is Lambda's contract (Powertools keeps the
current event at class level). Concurrency comes from several worker processes sharing the listening socket.
Every answer of ours, malformed HTTP included, is in the API's JSON error shape.
"""

from __future__ import annotations

import base64
import json
import logging
import mimetypes
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from babychain.errors import ApiError
from babychain.local import inspector
from babychain.local.api_docs import docs_answer
from babychain.local.lambda_shim import LambdaContext, load_handler, lowered_http_event, match_route, route_methods

access_log = logging.getLogger("babychain.access")
log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Handler = Callable[[dict[str, Any], Any], Any]

MAX_REQUEST_BYTES = 10 * 1024 * 1024  # API Gateway's own payload limit; the handlers enforce the API's smaller one
FILE_CHUNK_BYTES = 256 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_ACCESS_LINE = '%s:%s "%s %s HTTP/%s" %d %d %.1fms %s'


def _error_body(error: ApiError) -> bytes:
    return json.dumps(error.body(), separators=(",", ":")).encode()


class Reply:
    """One response: status, headers, and the body as bytes or as a file region to stream."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes = b"", *, function: str = "-") -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.function = function
        self.file: tuple[Path, int, int] | None = None  # path, offset, length

    @classmethod
    def error(cls, error: ApiError, extra: dict[str, str] | None = None) -> Reply:
        headers = {"content-type": "application/json", "cache-control": "no-store", **error.headers, **(extra or {})}
        return cls(error.status, headers, _error_body(error))

    @property
    def length(self) -> int:
        return self.file[2] if self.file else len(self.body)


class ApiGatewayApp:
    """ASGI app: routes to the handlers of `functions/` as API Gateway would, and serves the artifact files."""

    def __init__(
        self,
        artifacts_dir: str | Path,
        *,
        handler_for: Callable[[str], Handler] = load_handler,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        self.artifacts_dir = Path(artifacts_dir).resolve()
        self.handler_for = handler_for
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await _lifespan(receive, send)
        if scope["type"] != "http":
            return None
        started = time.perf_counter()
        try:
            reply = await self._reply(scope, receive)
        except Exception:
            log.exception("unhandled error in the HTTP edge")
            reply = Reply.error(ApiError(500, "internal_error", "Internal server error."))
        await _send_reply(scope, send, reply)
        if access_log.isEnabledFor(logging.INFO):
            client = scope.get("client") or ("-", 0)
            args = (
                client[0],
                client[1],
                scope["method"],
                _raw_target(scope),
                scope.get("http_version", "1.1"),
                reply.status,
                0 if scope["method"] == "HEAD" else reply.length,  # bytes of body sent
                (time.perf_counter() - started) * 1000,
                reply.function,
            )
            # `access_log.info` without its search of the stack for the caller's file and line (`findCaller`, most of
            # a line's cost): the record names this module, the line is the same.
            access_log.handle(
                access_log.makeRecord(access_log.name, logging.INFO, __file__, 0, _ACCESS_LINE, args, None)
            )

    async def _reply(self, scope: Scope, receive: Receive) -> Reply:
        method: str = scope["method"]
        path = scope.get("raw_path", b"").decode("latin-1").split("?", 1)[0] or scope["path"]
        headers = _headers(scope)
        if path.startswith("/files/"):
            if method not in ("GET", "HEAD"):
                return _method_not_allowed(["GET", "HEAD"])
            return self._file(method, path, headers)
        page = _inspector(method, path)
        if page is not None:
            return page
        if (docs := docs_answer(path)) is not None:
            if method not in ("GET", "HEAD"):
                return _method_not_allowed(["GET", "HEAD"])
            content_type, data = docs
            return Reply(200, {"content-type": content_type, "cache-control": "no-cache"}, data, function="docs")
        route = match_route(method, path)
        if route is None:
            allowed = route_methods(path)
            if allowed:
                return _method_not_allowed(allowed)
            return Reply.error(ApiError(404, "route_not_found", "No such route."))
        body = await _read_body(receive, self.max_request_bytes)
        if body is None:
            return Reply.error(
                ApiError(413, "payload_too_large", "Request body is too large."), {"connection": "close"}
            )
        function, route_key, params = route
        query = scope.get("query_string", b"").decode("latin-1")
        client = scope.get("client")
        # `headers` has lower-case names (`_headers`): it becomes the event's own, as API Gateway's v2 events have.
        event = lowered_http_event(
            method, path, query, headers, body, route_key, params, client[0] if client else "127.0.0.1"
        )
        response = self.handler_for(function)(event, LambdaContext(function_name=function))
        payload = response.get("body") or ""
        data = base64.b64decode(payload) if response.get("isBase64Encoded") else payload.encode()
        reply_headers = {k.lower(): v if type(v) is str else str(v) for k, v in (response.get("headers") or {}).items()}
        for cookie in response.get("cookies") or []:
            reply_headers.setdefault("set-cookie", cookie)
        return Reply(response["statusCode"], reply_headers, data, function=function)

    def _file(self, method: str, path: str, headers: dict[str, str]) -> Reply:
        key = unquote(path.removeprefix("/files/"))
        file = None if "\x00" in key else (self.artifacts_dir / key).resolve()  # resolve() raises on a NUL
        if (
            file is None
            or not file.is_relative_to(self.artifacts_dir)
            or not file.is_file()
            or file.name.endswith(".part")
        ):
            return Reply.error(ApiError(404, "file_not_found", "No such file."))
        stat = file.stat()
        size = stat.st_size
        base = {
            "content-type": mimetypes.guess_type(file.name)[0] or "application/octet-stream",
            "accept-ranges": "bytes",
            "last-modified": formatdate(stat.st_mtime, usegmt=True),
            "etag": f'"{stat.st_mtime_ns:x}-{size:x}"',
        }
        status, offset, length = 200, 0, size
        requested = _parse_range(headers.get("range"), size)
        if isinstance(requested, str):  # unsatisfiable
            return Reply.error(
                ApiError(416, "range_not_satisfiable", "The requested range is outside the file."),
                {"content-range": f"bytes */{size}"},
            )
        if requested is not None and headers.get("if-range", base["etag"]) == base["etag"]:
            offset, end = requested
            status, length = 206, end - offset + 1
            base["content-range"] = f"bytes {offset}-{end}/{size}"
        reply = Reply(status, base, function="files")
        reply.file = (file, offset, 0 if method == "HEAD" else length)
        reply.headers["content-length"] = str(length)
        return reply


class InspectorApp:
    """ASGI app serving only the run inspector (`babychain inspect`), for looking at an API that runs elsewhere."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await _lifespan(receive, send)
        if scope["type"] != "http":
            return None
        path = scope.get("raw_path", b"").decode("latin-1").split("?", 1)[0] or scope["path"]
        reply = _inspector(scope["method"], path) or Reply.error(ApiError(404, "route_not_found", "No such route."))
        await _send_reply(scope, send, reply)
        return None


def _inspector(method: str, path: str) -> Reply | None:
    """The run inspector's pages and files, and `/` sending browsers to them; None for every other path."""
    name = inspector.asset_for(path)
    if name is None and path != "/":
        return None
    if method not in ("GET", "HEAD"):
        return _method_not_allowed(["GET", "HEAD"])
    if name is None:
        return Reply(302, {"location": inspector.HOME, "cache-control": "no-store"}, function="inspector")
    data, content_type = inspector.read_asset(name)
    return Reply(200, inspector.headers_for(content_type), data, function="inspector")


def _parse_range(value: str | None, size: int) -> tuple[int, int] | str | None:
    """One `bytes=` range as (first, last) inclusive; None to send the whole file (absent, multi-range or malformed:
    RFC 9110 lets a server ignore Range); "unsatisfiable" for a range outside the file."""
    if not value:
        return None
    m = _RANGE.match(value.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    first_text, last_text = m.groups()
    if not first_text:  # suffix: the last N bytes
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None
    if first >= size:  # checked before defaulting the last position, which would be below `first` here
        return "unsatisfiable"
    return first, min(int(last_text), size - 1) if last_text else size - 1


def _method_not_allowed(allowed: list[str]) -> Reply:
    return Reply.error(
        ApiError(405, "method_not_allowed", f"This route accepts {', '.join(allowed)}."), {"allow": ", ".join(allowed)}
    )


def _headers(scope: Scope) -> dict[str, str]:
    # API Gateway joins repeated headers with commas.
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers


def _raw_target(scope: Scope) -> str:
    path = scope.get("raw_path", b"").decode("latin-1") or scope["path"]
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{path}?{query}" if query else path


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None when it is larger than `limit`."""
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _send_reply(scope: Scope, send: Send, reply: Reply) -> None:
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in reply.headers.items()]
    if "content-length" not in reply.headers:
        raw.append((b"content-length", str(len(reply.body)).encode("latin-1")))
    await send({"type": "http.response.start", "status": reply.status, "headers": raw})
    if reply.file is None or scope["method"] == "HEAD":
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else reply.body})
        return
    path, offset, remaining = reply.file
    with path.open("rb") as f:
        f.seek(offset)
        while remaining > 0:
            chunk = f.read(min(FILE_CHUNK_BYTES, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": remaining > 0})
    if remaining > 0:  # the file shrank under us: end the response rather than hang the client
        await send({"type": "http.response.body", "body": b""})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class _HeldHead:
    """Stands in for the transport while uvicorn writes a response's head: keeps the bytes."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


class _HeadFirst:
    """The transport, with a held response head written in front of the first body bytes (one write, one syscall),
    or on its own before the connection closes."""

    def __init__(self, transport: Any, head: bytes) -> None:
        self.transport = transport
        self.head = head

    def write(self, data: bytes) -> None:
        head, self.head = self.head, b""
        self.transport.write(head + data if head else data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def flush(self) -> None:
        if self.head and not self.transport.is_closing():
            self.transport.write(self.head)
        self.head = b""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class OneWriteCycle(RequestResponseCycle):
    """uvicorn's request cycle, writing a response's head together with its first body bytes: uvicorn writes the
    head as soon as the app starts the response, so every small answer took two writes. Nothing else is held: a
    `100 Continue` still goes out at once."""

    _head = b""

    async def send(self, message: MutableMapping[str, Any]) -> None:  # type: ignore[override]
        transport = self.transport
        if message["type"] == "http.response.start" and not self.response_started:
            held = _HeldHead()
            self.transport = held  # type: ignore[assignment]
            try:
                await super().send(message)  # type: ignore[arg-type]
            finally:
                self.transport = transport
            self._head = held.data
            return
        if not self._head:
            await super().send(message)  # type: ignore[arg-type]
            return
        head_first = _HeadFirst(transport, self._head)
        self._head = b""
        self.transport = head_first  # type: ignore[assignment]
        try:
            await super().send(message)  # type: ignore[arg-type]
        finally:
            self.transport = transport
            head_first.flush()  # a HEAD answer, or a send that wrote nothing: the head on its own


class JsonErrorProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering malformed HTTP in the API's JSON error shape (not plain text), and
    sending each response's head with its body (`OneWriteCycle`)."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # uvicorn builds the cycle here and has no hook for its class; its task runs later and looks `send` up then.
        if type(self.cycle) is RequestResponseCycle:
            self.cycle.__class__ = OneWriteCycle

    def _unsupported_upgrade_warning(self) -> None:
        # The parser stops at an upgrade it will not perform (h2c, websocket): answer this request, then close,
        # rather than keep a connection whose next requests would never be parsed.
        self.keep_alive = False
        if self.cycle is not None:
            self.cycle.keep_alive = False

    def send_400_response(self, msg: str) -> None:
        body = _error_body(ApiError(400, "malformed_request", "The request is not valid HTTP/1.1."))
        content = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket every API worker process shares (the kernel hands each connection to one of them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=2048)
    sock.set_inheritable(True)
    return sock


def serve(sock: socket.socket, app: ApiGatewayApp | InspectorApp, *, graceful_seconds: float = 10.0) -> None:
    """Runs uvicorn on an already bound socket until SIGTERM/SIGINT, then finishes in-flight requests and returns."""
    config = uvicorn.Config(
        app,
        http=JsonErrorProtocol,
        loop="uvloop" if _has_uvloop() else "asyncio",
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_keep_alive=15,
        timeout_graceful_shutdown=int(graceful_seconds),
        ws="none",
    )
    uvicorn.Server(config).run(sockets=[sock])


def _has_uvloop() -> bool:
    if os.name != "posix":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True
