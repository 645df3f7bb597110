"""A loopback TCP proxy in front of Postgres that a test can switch off: the database refusing connections.

`PostgresProxy(dsn)` listens on 127.0.0.1 and forwards every connection, byte for byte, to the server that `dsn`
names (a Unix socket directory, as the embedded server uses, or a TCP host); `proxy.dsn` is the same DSN through the
proxy. `refuse()` stops listening (a new connection is refused at once) and cuts every open connection (the client
sees its server vanish; the server ends the session, with its locks and LISTENs); `forward()` listens again on the
same port.

    with PostgresProxy(database_url) as proxy:
        engine = LocalEngine(..., overrides={"database_url": proxy.dsn})
        proxy.refuse(); ...; proxy.forward()
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from typing import Any, Self

from psycopg.conninfo import conninfo_to_dict, make_conninfo

ACCEPT_POLL_SECONDS = 0.05


class PostgresProxy:
    def __init__(self, dsn: str) -> None:
        params: dict[str, Any] = conninfo_to_dict(dsn)
        host = str(params.get("host") or "/tmp")
        port = int(params.get("port") or 5432)
        if host.startswith("/"):
            self._upstream: tuple[socket.AddressFamily, Any] = (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}")
        else:
            self._upstream = (socket.AF_INET, (str(params.get("hostaddr") or host), port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        params.pop("hostaddr", None)
        self.dsn = make_conninfo("", **{**params, "host": "127.0.0.1", "port": str(self.port)})
        self.connections = 0  # accepted since start, for tests that want to see the engine reconnect
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self._acceptor: threading.Thread | None = None

    def start(self) -> Self:
        self._listening.set()
        self._acceptor = threading.Thread(target=self._accept, args=(self._listener,), daemon=True)
        self._acceptor.start()
        return self

    def refuse(self) -> None:
        """From now on connections are refused, and every open one is cut."""
        self._stop_listening()
        with self._lock:
            cut = list(self._open)
        for sock in cut:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes its pump, which closes both sides

    def forward(self) -> None:
        """Listens again on the same port."""
        if self._listening.is_set():
            return
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self.start()

    def stop(self) -> None:
        self.refuse()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _stop_listening(self) -> None:
        self._listening.clear()
        if self._acceptor is not None:
            self._acceptor.join()
        self._listener.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._listening.is_set():
            readable, _, _ = select.select([listener], [], [], ACCEPT_POLL_SECONDS)
            if not readable or not self._listening.is_set():
                continue
            client, _ = listener.accept()
            family, address = self._upstream
            upstream = socket.socket(family, socket.SOCK_STREAM)
            try:
                upstream.connect(address)
            except OSError:
                upstream.close()
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        try:
            while True:
                readable, _, _ = select.select(list(peers), [], [])
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            with self._lock:
                self._open.difference_update((client, upstream))
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
