"""The one-machine HTTP edge over real loopback HTTP: methods, malformed HTTP, body limits, keep-alive, the artifact
files (HEAD, Range, If-Range, path escapes) and the access log of the API worker processes."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from babychain.local import media
from babychain.local.runner import LocalEngine
from tests.conftest import FAST, KEY_A, client_for
from tests.integration.requests import SEED_CHAIN1

MiB = 1024 * 1024


# ------------------------------------------------------------------------------------------------- helpers


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content[:300]
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert error["type"] and error["message"]
    return error


def _address(engine: LocalEngine) -> tuple[str, int]:
    parts = urlsplit(engine.base_url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


class RawResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def _read_response(reader: Any, *, head: bool = False) -> RawResponse:
    """One HTTP/1.1 response from a socket file (Content-Length framing, which is all the edge uses)."""
    status_line = reader.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while True:
        line = reader.readline()
        assert line, "connection closed inside the headers"
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    assert "transfer-encoding" not in headers
    length = 0 if head else int(headers.get("content-length", "0"))
    body = reader.read(length) if length else b""
    assert len(body) == length
    return RawResponse(int(status_line.split()[1]), headers, body)


def _raw(engine: LocalEngine, data: bytes, *, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Sends `data` on a fresh connection and reads until the server closes it: (everything read, closed by server)."""
    with socket.create_connection(_address(engine), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return received, True
                received += chunk
        except TimeoutError:
            return received, False


def _request(method: str, target: str, *headers: str) -> bytes:
    return ("\r\n".join([f"{method} {target} HTTP/1.1", "Host: localhost", *headers]) + "\r\n\r\n").encode("latin-1")


@pytest.fixture
def artifact(engine: LocalEngine) -> tuple[str, bytes]:
    """A real PNG from the local provider's renderer, stored in the engine's artifact folder: (URL, bytes)."""
    data = media.text_to_image("a lighthouse at dusk", seed=7, width=96, height=64, output_format="png")
    assert len(data) > 100
    url = engine.artifacts.put("runs/abc/step-1/image.png", data, "image/png")
    return url, data


# ------------------------------------------------------------------------------------------------- API routes


def test_wrong_methods_on_api_routes_are_405_with_allow(engine: LocalEngine) -> None:
    with client_for(engine) as client:
        for method in ("PUT", "PATCH", "DELETE", "OPTIONS"):
            response = client.request(method, "/api/v1/chains")
            _error(response, 405, "method_not_allowed")
            assert response.headers["allow"] == "GET"
            response = client.request(method, "/api/v1/chains/chain1/runs", json=SEED_CHAIN1)
            _error(response, 405, "method_not_allowed")
            assert response.headers["allow"] == "POST"
        _error(client.get("/api/v1/webhooks/bfl"), 405, "method_not_allowed")
        # The connection stays usable after a 405 whose request body the app never read.
        assert client.get("/api/v1/chains").status_code == 200
        assert client.get("/api/v1/chains/runs").json()["data"] == []  # nothing was created


def test_head_on_an_api_route_is_405_without_a_body(engine: LocalEngine) -> None:
    with socket.create_connection(_address(engine), timeout=5) as sock, sock.makefile("rb") as reader:
        # A HEAD answer must carry no body: the next response on the same connection starts right after its headers.
        sock.sendall(_request("HEAD", "/api/v1/chains", f"Authorization: Bearer {KEY_A}"))
        head = _read_response(reader, head=True)
        assert head.status == 405
        assert head.headers["allow"] == "GET"
        assert head.headers["content-type"] == "application/json"
        sock.sendall(_request("GET", "/api/health"))
        after = _read_response(reader)
        assert after.status == 200 and after.json()["database"] == "ok"


def test_unknown_paths_are_404_route_not_found(engine: LocalEngine) -> None:
    with client_for(engine) as client:
        for method, path in [
            ("GET", "/api/v1/nothing/here"),
            ("POST", "/nope"),
            ("GET", "/index.html"),
            ("GET", "/files"),
        ]:
            _error(client.request(method, path), 404, "route_not_found")


# ------------------------------------------------------------------------------------------------- malformed HTTP


MALFORMED = {
    "content-length-abc": b"POST /api/v1/chains/chain1/runs HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "garbage-request-line": b"HELLO THERE\r\n\r\n",
    "bad-version": b"GET /api/health HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    "conflicting-content-length": b"POST /api/v1/chains/chain1/runs HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
    b"Content-Length: 3\r\n\r\n{}",
    "content-length-and-chunked": b"POST /api/v1/chains/chain1/runs HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "space-in-header-name": b"GET /api/health HTTP/1.1\r\nBad Header: x\r\n\r\n",
    "control-char-in-header-name": b"GET /api/health HTTP/1.1\r\nX-Bad\x01: x\r\n\r\n",
    "nul-in-header-value": b"GET /api/health HTTP/1.1\r\nX-Ok: a\x00b\r\n\r\n",
    "non-ascii-target": b"GET /files/caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad-chunk-size": b"POST /api/v1/chains/chain1/runs HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
}


def test_malformed_http_gets_a_json_400_and_the_connection_closes(engine: LocalEngine) -> None:
    for case, data in MALFORMED.items():
        received, closed = _raw(engine, data)
        assert received, f"{case}: the server dropped the connection without an answer"
        assert closed, f"{case}: the server kept the connection open after malformed HTTP (read {received!r})"
        head, _, body = received.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        assert status_line.startswith("HTTP/1.1 400 "), (case, status_line)
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        assert headers["content-type"] == "application/json", case
        assert headers["connection"] == "close", case
        assert int(headers["content-length"]) == len(body), case
        error = json.loads(body)["error"]
        assert error["code"] == "malformed_request" and error["type"] == "invalid_request_error", case


def test_the_edge_still_serves_after_malformed_requests(engine: LocalEngine) -> None:
    for _ in range(3):
        _raw(engine, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a TLS ClientHello on the plain port
    assert httpx.get(engine.base_url + "/api/health", timeout=5).status_code == 200


def test_an_upgrade_the_edge_does_not_perform_is_answered_and_the_connection_closed(engine: LocalEngine) -> None:
    # curl's h2c attempt: the parser stops at the upgrade, so keeping the connection would hang the next request.
    received, closed = _raw(
        engine,
        _request("GET", "/api/health", "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMA")
        + _request("GET", "/api/health"),
    )
    assert closed, "the connection was left open after an upgrade request"
    assert received.startswith(b"HTTP/1.1 200 ") and received.count(b"HTTP/1.1 ") == 1
    assert b"connection: close" in received.lower()


# ------------------------------------------------------------------------------------------------- body limits


def test_a_body_over_the_gateway_limit_is_413_json(engine: LocalEngine) -> None:
    # The edge's own limit (API Gateway's 10 MiB): it answers before any handler runs, even on a route whose handler
    # reads no body, and closes the connection (the rest of the body is not read).
    too_big = b"x" * (10 * MiB + 1)
    with client_for(engine) as client:
        for path in ("/api/v1/chains/chain1/runs", "/api/v1/chains/cancel/00000000-0000-0000-0000-000000000000"):
            response = client.post(path, content=too_big, headers={"Content-Type": "application/json"})
            error = _error(response, 413, "payload_too_large")
            assert "262144" not in error["message"]  # not the handler's limit
            assert response.headers["connection"] == "close"
    assert httpx.get(engine.base_url + "/api/health", timeout=5).status_code == 200


def test_a_body_over_the_api_limit_but_under_the_gateway_limit_is_413_from_the_handler(engine: LocalEngine) -> None:
    body = json.loads(json.dumps(SEED_CHAIN1))
    body["input"]["text_to_image_params"]["prompt"] = "x" * MiB
    with client_for(engine) as client:
        error = _error(client.post("/api/v1/chains/chain1/runs", json=body), 413, "payload_too_large")
        assert "262144" in error["message"]  # the handler's own limit, not the edge's
        assert client.get("/api/v1/chains/runs").json()["data"] == []


# ------------------------------------------------------------------------------------------------- keep-alive


def test_keep_alive_serves_many_requests_on_one_connection(engine: LocalEngine) -> None:
    local_addresses = set()
    with client_for(engine) as client:
        for _ in range(50):
            response = client.get("/api/health")
            assert response.status_code == 200
            local_addresses.add(response.extensions["network_stream"].get_extra_info("client_addr"))
    assert len(local_addresses) == 1


def test_keep_alive_and_pipelining_on_a_raw_socket(engine: LocalEngine) -> None:
    with socket.create_connection(_address(engine), timeout=5) as sock, sock.makefile("rb") as reader:
        sock.sendall(_request("GET", "/api/health"))
        first = _read_response(reader)
        sock.sendall(_request("GET", "/api/v1/chains", f"Authorization: Bearer {KEY_A}"))
        second = _read_response(reader)
        # Pipelined: three requests in one write, answered in order on the same connection.
        sock.sendall(
            _request("GET", "/api/health")
            + _request("GET", "/api/v1/nope")
            + _request("GET", "/api/v1/chains", f"Authorization: Bearer {KEY_A}")
        )
        pipelined = [_read_response(reader) for _ in range(3)]
    assert first.status == 200 and first.json()["database"] == "ok"
    assert second.status == 200 and second.json()["object"] == "list"
    assert [r.status for r in pipelined] == [200, 404, 200]
    assert pipelined[1].json()["error"]["code"] == "route_not_found"
    assert pipelined[2].json()["object"] == "list"
    assert all(r.headers.get("connection") != "close" for r in [first, second, *pipelined])


# ------------------------------------------------------------------------------------------------- files


def test_get_and_head_of_an_artifact(engine: LocalEngine, artifact: tuple[str, bytes]) -> None:
    url, data = artifact
    assert url.startswith(engine.base_url + "/files/")
    got = httpx.get(url, timeout=5)
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["content-type"] == "image/png"
    assert got.headers["accept-ranges"] == "bytes"
    assert got.headers["content-length"] == str(len(data))
    assert re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+"', got.headers["etag"])
    assert parsedate_to_datetime(got.headers["last-modified"]).timestamp() == pytest.approx(
        (engine.artifacts.folder / "runs/abc/step-1/image.png").stat().st_mtime, abs=1
    )
    head = httpx.head(url, timeout=5)
    assert head.status_code == 200 and head.content == b""
    for name in ("content-type", "accept-ranges", "content-length", "etag", "last-modified"):
        assert head.headers[name] == got.headers[name], name
    # On the wire, too: HEAD sends no body (the next answer on the connection starts right after its headers).
    path = urlsplit(url).path
    with socket.create_connection(_address(engine), timeout=5) as sock, sock.makefile("rb") as reader:
        sock.sendall(_request("HEAD", path) + _request("GET", path, "Range: bytes=0-3"))
        assert _read_response(reader, head=True).headers["content-length"] == str(len(data))
        assert _read_response(reader).body == data[:4]


def test_byte_ranges(engine: LocalEngine, artifact: tuple[str, bytes]) -> None:
    url, data = artifact
    size = len(data)
    with httpx.Client(timeout=5) as client:

        def ranged(value: str, **headers: str) -> httpx.Response:
            return client.get(url, headers={"Range": value, **headers})

        first = ranged("bytes=0-9")
        assert first.status_code == 206
        assert first.headers["content-range"] == f"bytes 0-9/{size}"
        assert first.headers["content-length"] == "10"
        assert first.content == data[:10]
        rest = ranged("bytes=10-")
        assert rest.status_code == 206 and rest.content == data[10:]
        assert rest.headers["content-range"] == f"bytes 10-{size - 1}/{size}"
        suffix = ranged("bytes=-5")
        assert suffix.status_code == 206 and suffix.content == data[-5:]
        assert suffix.headers["content-range"] == f"bytes {size - 5}-{size - 1}/{size}"
        beyond = ranged(f"bytes=5-{size + 100}")  # the last position is clamped to the file
        assert beyond.status_code == 206 and beyond.content == data[5:]
        longer_suffix = ranged(f"bytes=-{size + 100}")
        assert longer_suffix.status_code == 206 and longer_suffix.content == data

        unsatisfiable = ranged(f"bytes={size}-")
        _error(unsatisfiable, 416, "range_not_satisfiable")
        assert unsatisfiable.headers["content-range"] == f"bytes */{size}"
        _error(ranged("bytes=-0"), 416, "range_not_satisfiable")

        for ignored in ("bytes=0-1,4-5", "bytes=abc", "bytes=5-2", "items=0-3", "bytes=-", "bytes 0-3"):
            whole = ranged(ignored)
            assert whole.status_code == 200, ignored
            assert whole.content == data and "content-range" not in whole.headers

        etag = first.headers["etag"]
        assert ranged("bytes=0-9", **{"If-Range": etag}).status_code == 206
        stale = ranged("bytes=0-9", **{"If-Range": '"0-0"'})
        assert stale.status_code == 200 and stale.content == data
        weak = ranged("bytes=0-9", **{"If-Range": "W/" + etag})  # If-Range needs a strong match
        assert weak.status_code == 200 and weak.content == data


def test_a_replaced_artifact_gets_a_new_etag(engine: LocalEngine, artifact: tuple[str, bytes]) -> None:
    url, data = artifact
    before = httpx.get(url, timeout=5).headers["etag"]
    time.sleep(0.05)  # the ETag is made of the modification time and the size, which stays the same
    engine.artifacts.put("runs/abc/step-1/image.png", data[::-1], "image/png")
    after = httpx.get(url, headers={"Range": "bytes=0-9", "If-Range": before}, timeout=5)
    assert after.headers["etag"] != before
    assert after.status_code == 200 and after.content == data[::-1]


ESCAPES = (
    "/files/../outside.txt",
    "/files/%2e%2e/outside.txt",
    "/files/%2E%2E%2Foutside.txt",
    "/files/..%2foutside.txt",
    "/files/runs/../../outside.txt",
    "/files/runs/%2e%2e/%2e%2e/outside.txt",
    "/files/%2Fetc%2Fhostname",
    "/files//etc/hostname",
    "/files/",
    "/files/runs",
    "/files/%00",
    "/files/runs/abc/step-1/image.png%00.txt",
)


def test_paths_outside_the_artifact_folder_are_404(engine: LocalEngine, artifact: tuple[str, bytes]) -> None:
    secret = b"not for the web"
    (engine.home / "outside.txt").write_bytes(secret)
    assert (engine.artifacts.folder / ".." / "outside.txt").read_bytes() == secret  # the target exists
    with socket.create_connection(_address(engine), timeout=5) as sock, sock.makefile("rb") as reader:
        for target in ESCAPES:
            sock.sendall(_request("GET", target))
            response = _read_response(reader)
            assert response.status == 404, (target, response.status, response.body[:200])
            assert secret not in response.body
            assert response.json()["error"]["code"] == "file_not_found", target


def test_missing_files_partial_files_and_wrong_methods(engine: LocalEngine, artifact: tuple[str, bytes]) -> None:
    url, _data = artifact
    _error(httpx.get(engine.base_url + "/files/runs/nope.png", timeout=5), 404, "file_not_found")
    part = engine.artifacts.folder / "runs/abc/step-1/video.mp4.part"
    part.write_bytes(b"half a video")
    _error(httpx.get(engine.base_url + "/files/runs/abc/step-1/video.mp4.part", timeout=5), 404, "file_not_found")
    for method in ("POST", "PUT", "DELETE"):
        response = httpx.request(method, url, content=b"x", timeout=5)
        _error(response, 405, "method_not_allowed")
        assert response.headers["allow"] == "GET, HEAD"
    assert httpx.get(url, timeout=5).status_code == 200  # untouched


# ------------------------------------------------------------------------------------------------- access log

_ENGINE_SCRIPT = textwrap.dedent(
    """
    import json, logging, sys
    from babychain.local.runner import LocalEngine

    home, overrides = sys.argv[1], json.loads(sys.argv[2])
    engine = LocalEngine(home, overrides=overrides, workers=False, api_workers=1, access_log=True,
                         log_level=logging.INFO).start()
    try:
        print(engine.base_url, flush=True)
        sys.stdin.read()  # runs until the test closes our stdin
    finally:
        engine.stop()
    """
)

_ACCESS_LINE = re.compile(
    r'^(?P<ip>127\.0\.0\.1):(?P<port>\d+) "(?P<method>[A-Z]+) (?P<target>\S+) HTTP/1\.1" (?P<status>\d{3}) '
    r"(?P<bytes>\d+) (?P<ms>\d+\.\d)ms (?P<function>\S+)$"
)


def test_api_workers_write_one_access_line_per_request(database_url: str, tmp_path: Path) -> None:
    # The API workers are forked from the engine's fork server and write to the stderr the fork server inherited
    # when it started, which in this pytest process may be long before this test (capfd then sees nothing). An engine
    # of its own in a child process, with stderr to a file, captures exactly this engine's lines.
    home = tmp_path / "home"
    clip = os.urandom(5000)
    (home / "artifacts").mkdir(parents=True)
    (home / "artifacts" / "clip.mp4").write_bytes(clip)
    overrides = {k: list(v) if isinstance(v, tuple) else v for k, v in FAST.items()}
    overrides["database_url"] = database_url
    requests: list[tuple[str, str, dict[str, str], int]] = [
        ("GET", "/api/health", {}, 200),
        ("GET", "/api/v1/chains/runs?limit=1", {}, 200),
        ("PUT", "/api/v1/models", {}, 405),
        ("GET", "/api/v1/nope", {}, 404),
        ("HEAD", "/api/health", {}, 405),
        ("GET", "/files/clip.mp4", {"Range": "bytes=0-9"}, 206),
        ("HEAD", "/files/clip.mp4", {}, 200),
        ("GET", "/files/missing.png", {}, 404),
    ]
    sent: list[tuple[str, str, int, int]] = []  # method, target, status, body bytes received
    stderr_path = tmp_path / "engine.stderr"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", _ENGINE_SCRIPT, str(home), json.dumps(overrides)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        try:
            assert process.stdout is not None and process.stdin is not None
            base_url = process.stdout.readline().decode().strip()
            assert base_url.startswith("http://127.0.0.1:"), stderr_path.read_text()
            with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=10) as client:
                for method, target, headers, status in requests:
                    response = client.request(method, target, headers=headers)
                    assert response.status_code == status, (method, target, response.text)
                    sent.append((method, target, status, len(response.content)))
                port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
        finally:
            if process.stdin is not None:
                process.stdin.close()  # the engine stops: its workers finish and exit
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                raise
    output = stderr_path.read_text()
    lines = [line.split("babychain.access: ", 1)[1] for line in output.splitlines() if "babychain.access: " in line]
    entries = [_ACCESS_LINE.match(line) for line in lines]
    assert all(entries), lines
    logged = [(m["method"], m["target"], int(m["status"]), int(m["bytes"])) for m in entries if m]
    assert logged == sent, output  # exactly one line per request, in order, with the body bytes sent
    assert {int(m["port"]) for m in entries if m} == {port}  # one keep-alive connection
    functions = [m["function"] for m in entries if m]
    assert functions == ["list", "list", "-", "-", "-", "files", "files", "-"]
    assert sent[5][3] == 10 and sent[6][3] == 0 and sent[4][3] == 0
