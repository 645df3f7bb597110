"""The lean HTTP/1.1 client against loopback servers whose answers are scripted byte for byte.

Framing (Content-Length, chunked, read to close), the keep-alive pool (reuse, idle expiry, the idle cap, a socket the
peer closed, the one retry of a request that got no byte of answer), the held request head, and the deadline.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from babychain.errors import UnsafeUrlError
from babychain.security import lean_http
from babychain.security.deadline import total_deadline
from babychain.security.lean_http import Origin
from babychain.security.safe_http import FetchError, fetch_bytes

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Seen:
    connection: int  # 1, 2, ... in accept order
    index: int  # 1, 2, ... the request's place on its connection
    head: bytes
    body: bytes


# What the server sends for a request, and whether it then closes the connection. b"" with True: hang up unanswered.
Answer = Callable[[Seen], tuple[bytes, bool]]


def always(payload: bytes) -> Answer:
    return lambda seen: (payload, False)


class RawServer:
    """A loopback HTTP/1.1 server on a plain socket: it reads each request (head and Content-Length body) and sends
    what `answer` says, byte for byte."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[Seen] = []
        self.connections = 0
        self.closed = 0  # connections that ended (either side)
        self.sent_bytes = 0
        self._lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.origin = Origin("http", "127.0.0.1", self.port, "127.0.0.1")
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
            threading.Thread(target=self._connection, args=(conn, number), daemon=True).start()

    def _connection(self, conn: socket.socket, number: int) -> None:
        buffer = b""
        index = 0
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                body, buffer = buffer[:length], buffer[length:]
                index += 1
                seen = Seen(number, index, head, body)
                with self._lock:
                    self.requests.append(seen)
                payload, close = self.answer(seen)
                self._send(conn, payload)
                if close:
                    return
        except OSError:
            return
        finally:
            conn.close()
            with self._lock:
                self.closed += 1

    def _send(self, conn: socket.socket, payload: bytes) -> None:
        for start in range(0, len(payload), 65536):
            conn.sendall(payload[start : start + 65536])
            with self._lock:
                self.sent_bytes += min(65536, len(payload) - start)

    def wait_closed(self, count: int) -> int:
        deadline = time.monotonic() + 2
        while self.closed < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.closed

    def stop(self) -> None:
        self.sock.close()


@pytest.fixture(autouse=True)
def fresh_pool() -> Iterator[None]:
    lean_http.close_pooled_connections()
    yield
    lean_http.close_pooled_connections()


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], RawServer]]:
    servers: list[RawServer] = []

    def start(answer: Answer) -> RawServer:
        servers.append(RawServer(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def get(server: RawServer, path: str = "/", **options: Any) -> lean_http.Response:
    return lean_http.fetch("GET", server.url + path, timeout=options.pop("timeout", 5), **options)


def idle() -> dict[Origin, int]:
    return lean_http.connection_pool().idle_origins()


# ------------------------------------------------------------------------------------------------ framing

CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
    b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
)


def test_a_chunked_body_is_read_whole_and_its_connection_reused(serve: Callable[[Answer], RawServer]) -> None:
    server = serve(always(CHUNKED))
    for _ in range(3):
        response = get(server)
        assert (response.status_code, response.content, response.text) == (200, b"hello world", "hello world")
    assert server.connections == 1 and len(server.requests) == 3
    assert idle() == {server.origin: 1}


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nhello\r\n0\r\n\r\n",  # not a hex size
        b"+5\r\nhello\r\n0\r\n\r\n",  # int() would take it; HTTP does not
        b"5\r\nhello!!\r\n0\r\n\r\n",  # longer than its size
        b"5\r\nhel",  # cut off
        b"0\r\n" + b"X-Trailer: t\r\n" * 10_000 + b"\r\n",  # trailers without end
        b"1" * 9000 + b"\r\n",  # a chunk line without end
    ],
)
def test_a_broken_chunked_body_is_a_protocol_error(serve: Callable[[Answer], RawServer], body: bytes) -> None:
    server = serve(lambda seen: (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body, True))
    with pytest.raises(lean_http.RemoteProtocolError):
        get(server)
    assert idle() == {}


def endless_chunks(seen: Seen, *, size: bytes = b"10000") -> tuple[bytes, bool]:
    """A chunked body of 80 chunks of 64 KiB (5 MiB), or one chunk that says it is 4 GiB (size FFFFFFFF)."""
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: image/png\r\n\r\n"
    if size == b"FFFFFFFF":
        return head + b"FFFFFFFF\r\n" + b"\x89PNG\r\n\x1a\n" + b"x" * (5 << 20), True
    return head + (size + b"\r\n" + b"x" * 65536 + b"\r\n") * 80 + b"0\r\n\r\n", True


@pytest.mark.parametrize("size", [b"10000", b"FFFFFFFF"])
def test_a_chunked_download_stops_at_the_cap(serve: Callable[[Answer], RawServer], size: bytes) -> None:
    server = serve(lambda seen: endless_chunks(seen, size=size))
    with pytest.raises(UnsafeUrlError, match="larger than 100000 bytes"):
        fetch_bytes(server.url + "/o.png", resolver=lambda h, p: [], max_bytes=100_000, allow_loopback_http=True)
    assert server.wait_closed(1) == 1  # the client hung up: the rest of the 5 MiB was never wanted
    assert idle() == {}


def test_a_body_without_a_length_is_read_to_close_and_not_pooled(serve: Callable[[Answer], RawServer]) -> None:
    server = serve(lambda seen: (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"a" * 200_000, True))
    assert get(server).content == b"a" * 200_000
    assert get(server).content == b"a" * 200_000
    assert server.connections == 2 and idle() == {}


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",  # two framings: not trusted
    ],
)
def test_connections_the_answer_does_not_keep_alive_are_closed(
    serve: Callable[[Answer], RawServer], head: bytes
) -> None:
    body = b"2\r\nok\r\n0\r\n\r\n" if b"chunked" in head else b"ok"
    server = serve(always(head + body))
    assert get(server).content == b"ok" and get(server).content == b"ok"
    assert server.connections == 2 and server.wait_closed(2) == 2 and idle() == {}


def test_interim_answers_are_skipped_and_no_body_answers_keep_the_connection(
    serve: Callable[[Answer], RawServer],
) -> None:
    answers = {
        1: b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK,
        2: b"HTTP/1.1 204 No Content\r\n\r\n",
        3: b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",  # a 304 has no body, whatever it says
        4: OK,
    }
    server = serve(lambda seen: (answers[seen.index], False))
    assert [(r.status_code, r.content) for r in (get(server) for _ in range(4))] == [
        (200, b"ok"),
        (204, b""),
        (304, b""),
        (200, b"ok"),
    ]
    assert server.connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    ],
)
def test_an_invalid_answer_is_a_protocol_error(serve: Callable[[Answer], RawServer], answer: bytes) -> None:
    server = serve(always(answer))
    with pytest.raises(lean_http.RemoteProtocolError):
        get(server)
    assert idle() == {}


def test_an_endless_head_is_refused(serve: Callable[[Answer], RawServer]) -> None:
    server = serve(lambda seen: (b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * 200_000 + b"\r\n\r\n", True))
    with pytest.raises(lean_http.RemoteProtocolError, match="too large"):
        get(server)


def test_headers_read_without_case_and_repeated_ones_join(serve: Callable[[Answer], RawServer]) -> None:
    head = b"HTTP/1.1 201 Created\r\nX-Thing: a\r\nx-thing: b\r\nContent-Type: text/plain; charset=latin-1\r\n"
    server = serve(always(head + b"Content-Length: 1\r\n\r\n\xe9"))
    response = get(server)
    assert (response.status_code, response.reason_phrase) == (201, "Created")
    assert response.headers["X-THING"] == "a, b" and response.headers.get("x-thing") == "a, b"
    assert "content-length" in response.headers and response.headers.get("missing") is None
    assert response.text == "é"


def test_an_announced_body_over_the_limit_is_refused_before_reading(serve: Callable[[Answer], RawServer]) -> None:
    server = serve(always(b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n" + b"z" * 5_000_000))
    with pytest.raises(lean_http.ResponseTooLarge):
        get(server, max_bytes=1000)
    assert server.wait_closed(1) == 1 and server.sent_bytes < 5_000_000


# ------------------------------------------------------------------------------------------------ the pool


def test_idle_connections_expire(serve: Callable[[Answer], RawServer], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lean_http, "IDLE_EXPIRY_SECONDS", 0.2)
    server = serve(always(OK))
    get(server)
    get(server)
    assert server.connections == 1
    time.sleep(0.3)
    get(server)
    assert server.connections == 2 and server.wait_closed(1) == 1  # the expired one was closed, not reused


def test_expired_connections_of_other_origins_are_swept(
    serve: Callable[[Answer], RawServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lean_http, "IDLE_EXPIRY_SECONDS", 0.2)
    monkeypatch.setattr(lean_http, "_SWEEP_SECONDS", 0.0)
    quiet, busy = serve(always(OK)), serve(always(OK))
    get(quiet)
    time.sleep(0.3)
    get(busy)
    assert quiet.wait_closed(1) == 1 and idle() == {busy.origin: 1}


def test_few_idle_connections_are_kept_per_origin(serve: Callable[[Answer], RawServer]) -> None:
    server = serve(always(OK))
    open_answers = [lean_http.request("GET", server.origin, "/", timeout=5) for _ in range(6)]  # six at once
    for response in open_answers:
        assert response.read() == b"ok"
    assert server.connections == 6
    assert idle() == {server.origin: lean_http.MAX_IDLE_PER_ORIGIN}
    assert server.wait_closed(2) == 2


def test_threads_share_the_pool_safely(serve: Callable[[Answer], RawServer]) -> None:
    server = serve(lambda seen: (b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n%08d" % seen.index, False))
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(40):
                assert len(get(server).content) == 8
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and len(server.requests) == 240
    assert server.connections <= 6 * 2 and idle()[server.origin] <= lean_http.MAX_IDLE_PER_ORIGIN


def test_a_pooled_socket_the_peer_closed_is_not_used(serve: Callable[[Answer], RawServer]) -> None:
    # The server says keep-alive, then hangs up at once (an idle timeout shorter than ours).
    server = serve(lambda seen: (OK, True))
    assert get(server).content == b"ok"
    server.wait_closed(1)
    assert get(server).content == b"ok"
    assert server.connections == 2 and [seen.connection for seen in server.requests] == [1, 2]


def test_a_request_on_a_connection_that_died_goes_once_more_on_a_fresh_one(
    serve: Callable[[Answer], RawServer],
) -> None:
    # The second request on the first connection is read and dropped unanswered: the peer closed that connection
    # just as it was reused. Not one byte of answer came, so the request is sent again on a new connection.
    server = serve(lambda seen: (b"", True) if (seen.connection, seen.index) == (1, 2) else (OK, False))
    assert get(server).content == b"ok"
    response = lean_http.fetch("POST", server.url + "/hook", body=b'{"n":1}', timeout=5)
    assert response.content == b"ok"
    assert [(seen.connection, seen.index, seen.body) for seen in server.requests] == [
        (1, 1, b""),
        (1, 2, b'{"n":1}'),
        (2, 1, b'{"n":1}'),
    ]


def test_a_request_is_sent_again_only_once(serve: Callable[[Answer], RawServer]) -> None:
    server = serve(lambda seen: (OK, False) if seen.connection == 1 and seen.index == 1 else (b"", True))
    get(server)
    with pytest.raises(lean_http.RemoteProtocolError, match="without sending a response"):
        get(server)
    assert [(seen.connection, seen.index) for seen in server.requests] == [(1, 1), (1, 2), (2, 1)]


def test_a_request_that_got_part_of_an_answer_is_not_sent_again(serve: Callable[[Answer], RawServer]) -> None:
    server = serve(lambda seen: (OK, False) if seen.index == 1 else (b"HTTP/1.1 200 OK\r\nContent-", True))
    get(server)
    with pytest.raises(lean_http.RemoteProtocolError):
        get(server)
    assert len(server.requests) == 2 and server.connections == 1


def test_a_fresh_connection_that_dies_is_not_retried(serve: Callable[[Answer], RawServer]) -> None:
    server = serve(lambda seen: (b"", True))
    with pytest.raises(lean_http.RemoteProtocolError):
        get(server)
    assert len(server.requests) == 1


# ------------------------------------------------------------------------------------------------ writes, deadline


class RecordingSocket:
    """A real socket that records what each write (send or sendall) was given."""

    def __init__(self, inner: socket.socket) -> None:
        self.inner = inner
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.inner.sendall(data)

    def send(self, data: bytes) -> int:
        sent = self.inner.send(data)
        self.writes.append(bytes(data[:sent]))
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def recorded(server: RawServer) -> RecordingSocket:
    """The pooled connection to `server`, its socket wrapped to record writes."""
    get(server)
    pool = lean_http.connection_pool()
    [conn] = pool._idle[server.origin]
    conn.sock = RecordingSocket(conn.sock)  # type: ignore[assignment]
    return conn.sock  # type: ignore[return-value]


def test_a_small_request_head_and_body_go_out_in_one_write(serve: Callable[[Answer], RawServer]) -> None:
    server = serve(always(OK))
    sock = recorded(server)
    lean_http.fetch("POST", server.url + "/jobs", body=b'{"a": 1}', timeout=5)
    [write] = sock.writes
    assert write.startswith(b"POST /jobs HTTP/1.1\r\n") and write.endswith(b'\r\n\r\n{"a": 1}')
    lean_http.fetch("GET", server.url + "/jobs/1", timeout=5)
    assert sock.writes[1].startswith(b"GET /jobs/1 HTTP/1.1\r\n") and len(sock.writes) == 2
    assert server.requests[-2].body == b'{"a": 1}'


def test_a_large_body_is_not_joined_to_the_head(serve: Callable[[Answer], RawServer]) -> None:
    server = serve(always(OK))
    sock = recorded(server)
    body = b"x" * (lean_http.HOLD_BYTES + 1)
    lean_http.fetch("POST", server.url + "/big", body=body, timeout=5)
    assert len(sock.writes) == 2 and sock.writes[0].endswith(b"\r\n\r\n") and sock.writes[1] == body
    assert server.requests[-1].body == body


def test_the_request_head_is_the_clients_own(serve: Callable[[Answer], RawServer]) -> None:
    server = serve(always(OK))
    lean_http.fetch(
        "POST",
        server.url + "/a b?q=é",
        headers={"Accept-Encoding": "gzip", "Content-Length": "999", "Connection": "close", "X-Key": "k"},
        body=b"{}",
        params={"page": "2 3"},
        timeout=5,
    )
    lines = server.requests[0].head.decode().split("\r\n")
    assert lines[0] == "POST /a%20b?q=%C3%A9&page=2+3 HTTP/1.1"
    assert sorted(lines[1:]) == sorted(
        [f"Host: 127.0.0.1:{server.port}", "X-Key: k", "Accept-Encoding: identity", "Content-Length: 2"]
    )


@pytest.mark.parametrize(
    "headers", [{"X-Evil": "a\r\nInjected: yes"}, {"Bad Name": "v"}, {"X-Null": "a\x00b"}, {"X-Wide": "ключ"}]
)
def test_a_header_that_would_break_the_request_is_refused(
    serve: Callable[[Answer], RawServer], headers: dict[str, str]
) -> None:
    server = serve(always(OK))
    with pytest.raises(lean_http.LocalProtocolError):
        lean_http.fetch("GET", server.url, headers=headers, timeout=5)
    assert server.connections == 0


def test_past_the_deadline_nothing_is_written_or_dialled(serve: Callable[[Answer], RawServer]) -> None:
    server = serve(always(OK))
    sock = recorded(server)
    with total_deadline(0.05):
        time.sleep(0.1)
        with pytest.raises(lean_http.WriteTimeout):
            get(server)  # the pooled connection: the write is refused
        with pytest.raises(lean_http.ConnectTimeout):
            get(server)  # no pooled connection left: the connect is refused
    assert sock.writes == [] and server.connections == 1 and len(server.requests) == 1


def test_a_read_timeout_is_a_timeout(serve: Callable[[Answer], RawServer]) -> None:
    server = serve(lambda seen: (time.sleep(0.5), (OK, False))[1])  # type: ignore[func-returns-value]
    with pytest.raises(lean_http.ReadTimeout):
        get(server, timeout=0.1)


def test_an_answer_that_comes_late_within_the_read_s_timeout_is_read(
    serve: Callable[[Answer], RawServer],
) -> None:
    server = serve(lambda seen: (time.sleep(0.25), (OK, False))[1])  # type: ignore[func-returns-value]
    assert get(server, timeout=0.4).content == b"ok"


@pytest.mark.parametrize("seconds", [0.03, 0.2])
def test_a_pooled_connection_s_longer_timeout_does_not_outlast_a_shorter_deadline(
    serve: Callable[[Answer], RawServer], seconds: float
) -> None:
    # The first request leaves a pooled connection read with a 10 s timeout; the second has `seconds` left in all.
    server = serve(lambda seen: (OK, False) if seen.index == 1 else (time.sleep(2), (OK, False))[1])  # type: ignore[func-returns-value]
    get(server, timeout=10)
    started = time.monotonic()
    with total_deadline(seconds), pytest.raises(lean_http.ReadTimeout):
        get(server, timeout=10)
    assert time.monotonic() - started < seconds + 0.5 and server.connections == 1


def test_fetch_errors_keep_the_client_error_names(serve: Callable[[Answer], RawServer]) -> None:
    server = serve(lambda seen: (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhalf", True))
    with pytest.raises(FetchError) as info:
        fetch_bytes(server.url + "/x", resolver=lambda h, p: [], max_bytes=100, allow_loopback_http=True)
    assert info.value.message == "Download failed: RemoteProtocolError." and info.value.transient is True


def test_a_tracer_sees_each_request_without_its_query(serve: Callable[[Answer], RawServer]) -> None:
    server = serve(lambda seen: (OK, False) if (seen.connection, seen.index) == (1, 1) else (b"", True))
    traced: list[tuple[str, str, int | None, str | None]] = []

    @contextmanager
    def tracer(method: str, url: str) -> Iterator[Callable[[int], None]]:
        entry: list[Any] = [method, url, None, None]
        try:
            yield lambda status: entry.__setitem__(2, status)
        except BaseException as exc:
            entry[3] = type(exc).__name__
            raise
        finally:
            traced.append(tuple(entry))  # type: ignore[arg-type]

    lean_http.trace_requests(tracer)
    try:
        lean_http.fetch("POST", server.url + "/jobs?signature=secret", body=b"{}", timeout=5)
        with pytest.raises(lean_http.RemoteProtocolError):
            get(server, "/jobs/1?token=secret")
    finally:
        lean_http.trace_requests(None)
    base = f"http://127.0.0.1:{server.port}"
    assert traced == [("POST", base + "/jobs", 200, None), ("GET", base + "/jobs/1", None, "RemoteProtocolError")]


def _silent_listener() -> tuple[socket.socket, Origin]:
    """A listening socket whose connections nobody reads until the test says so."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    return listener, Origin("http", "127.0.0.1", port, "127.0.0.1")


def test_a_body_larger_than_the_socket_buffers_waits_for_room_and_arrives_whole() -> None:
    listener, origin = _silent_listener()
    body = b"y" * 16_000_000
    received = bytearray()

    def late_reader() -> None:
        conn, _ = listener.accept()
        time.sleep(0.3)  # the client's buffers fill up meanwhile
        while b"\r\n\r\n" not in received or len(received) < received.index(b"\r\n\r\n") + 4 + len(body):
            received.extend(conn.recv(1 << 20))
        conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
        conn.close()

    thread = threading.Thread(target=late_reader, daemon=True)
    thread.start()
    with lean_http.request("POST", origin, "/upload", {}, body, timeout=10) as response:
        assert response.status_code == 204
    thread.join(5)
    assert bytes(received).endswith(b"\r\n\r\n" + body)
    listener.close()


def test_a_write_that_finds_no_room_within_its_timeout_is_a_write_timeout() -> None:
    listener, origin = _silent_listener()
    started = time.monotonic()
    with pytest.raises(lean_http.WriteTimeout, match=r"The write timed out\."):
        lean_http.request("POST", origin, "/upload", {}, b"z" * 64_000_000, timeout=0.3)
    assert time.monotonic() - started < 5
    listener.close()
