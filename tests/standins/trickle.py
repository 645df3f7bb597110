"""A receiver that answers 200 a byte at a time, well within any per-read timeout: only a total deadline ends it.

`trickle` picks what is slow: "headers" (the status line on), "body" (headers at once), or "none" (all at once).
`body_bytes` long bodies make the answer effectively endless; `slow_requests` trickles only the first that many
requests and answers the rest at once (a receiver that hung, then recovered). It records each request (`seen`: its
`webhook-id` and whether its answer went out in full), and how many requests were open at once.
"""

from __future__ import annotations

import collections
import contextlib
import select
import socket
import threading
from collections.abc import Iterator
from typing import Any

BYTE_INTERVAL_SECONDS = 0.05


class TrickleReceiver:
    def __init__(self, trickle: str = "body", *, body_bytes: int = 40, slow_requests: int | None = None) -> None:
        self.body = b'{"ok":true,"padding":"' + b"p" * max(0, body_bytes - 24) + b'"}'
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(self.body)
        split = {"headers": 0, "body": len(head), "none": len(head) + len(self.body)}[trickle]
        self._fast, self._slow = (head + self.body)[:split], (head + self.body)[split:]
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.slow_requests = slow_requests
        self.completed = 0  # answers sent in full
        self.attempts: collections.Counter[str] = collections.Counter()  # webhook-id -> requests seen
        self.seen: list[dict[str, Any]] = []  # per request, in arrival order: {"event_id", "completed"}
        self.open = 0
        self.most_open = 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, self._opened():
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                request += chunk
            record: dict[str, Any] = {"event_id": _header(request, b"webhook-id"), "completed": False}
            with self._lock:
                self.attempts[record["event_id"]] += 1
                self.seen.append(record)
                slow = self.slow_requests is None or len(self.seen) <= self.slow_requests
            try:
                if not slow:
                    # Read the whole body first: closing with unread bytes would reset the connection under the answer.
                    _read_body(conn, request)
                    conn.sendall(self._fast + self._slow)
                else:
                    conn.sendall(self._fast)
                for index in range(len(self._slow) if slow else 0):
                    if self._stopped.is_set():
                        return
                    conn.sendall(self._slow[index : index + 1])
                    # Waits like a sleep, but ends at once when the client hangs up, so `open` stays exact.
                    readable, _, _ = select.select([conn], [], [], BYTE_INTERVAL_SECONDS)
                    if readable and not conn.recv(1):
                        return
            except OSError:
                return  # the client gave up, as it should
            with self._lock:
                self.completed += 1
                record["completed"] = True

    @contextlib.contextmanager
    def _opened(self) -> Iterator[None]:
        with self._lock:
            self.open += 1
            self.most_open = max(self.most_open, self.open)
        try:
            yield
        finally:
            with self._lock:
                self.open -= 1

    def close(self) -> None:
        self._stopped.set()
        self.sock.close()


def _read_body(conn: socket.socket, request: bytes) -> None:
    head, _, body = request.partition(b"\r\n\r\n")
    left = int(_header(head, b"content-length") or 0) - len(body)
    while left > 0:
        chunk = conn.recv(min(left, 65536))
        if not chunk:
            return
        left -= len(chunk)


def _header(request: bytes, name: bytes) -> str:
    for line in request.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip().decode()
    return ""
