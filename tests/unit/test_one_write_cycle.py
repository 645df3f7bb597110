"""The HTTP edge writes a response's head with its body: one transport write per small answer (uvicorn's own cycle
writes the head as soon as the app starts the response). Checked on uvicorn's real cycle with a recording transport;
tests/integration/test_local_http.py covers the same answers on the wire (HEAD, pipelining, closing after a 413)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.flow_control import FlowControl

from babychain.local.http_server import OneWriteCycle


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _answer(method: str, *messages: dict[str, Any], keep_alive: bool = True) -> RecordingTransport:
    transport = RecordingTransport()
    completed: list[bool] = []
    cycle = OneWriteCycle(
        scope={"method": method, "type": "http", "path": "/"},
        transport=transport,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=[],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: completed.append(True),
    )

    async def run() -> None:
        for message in messages:
            await cycle.send(message)  # type: ignore[arg-type]

    asyncio.run(run())
    assert completed == [True]
    return transport


START = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}


def test_a_small_answer_is_one_write_head_then_body() -> None:
    transport = _answer("GET", START, {"type": "http.response.body", "body": b"{}"})
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and transport.writes[0].endswith(b"\r\n\r\n{}")


def test_a_streamed_answer_sends_the_head_with_its_first_chunk_only() -> None:
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]}
    transport = _answer(
        "GET",
        start,
        {"type": "http.response.body", "body": b"ab", "more_body": True},
        {"type": "http.response.body", "body": b"cd"},
    )
    assert len(transport.writes) == 2
    assert transport.writes[0].endswith(b"\r\n\r\nab") and transport.writes[1] == b"cd"


def test_a_head_answer_still_sends_its_head() -> None:
    transport = _answer("HEAD", START, {"type": "http.response.body", "body": b""})
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and transport.writes[0].endswith(b"\r\n\r\n")


def test_the_head_goes_out_before_the_connection_closes() -> None:
    transport = _answer("HEAD", START, {"type": "http.response.body", "body": b""}, keep_alive=False)
    assert transport.closed
    assert len(transport.writes) == 1 and b"connection: close\r\n" in transport.writes[0]
