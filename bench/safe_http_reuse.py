"""CPU per `fetch_bytes` of a small file: a new TLS context and connection per request, a new connection with the
shared context, and a pooled keep-alive connection (what `lean_http` does).

A loopback server in another process serves 4 KiB over HTTP and, when `cryptography` is installed, over HTTPS
with a throwaway CA, so only the client's CPU is counted (`time.process_time` of this process). Also times the
TLS context creation itself against reusing the shared one.
Usage: python bench/safe_http_reuse.py [--fetches 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import ssl
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

from babychain.local.loopback import LoopbackServer, QuietHandler
from babychain.security import lean_http
from babychain.security.safe_http import close_pooled_connections, fetch_bytes, shared_ssl_context

BODY = bytes(range(256)) * 16  # 4 KiB; the same in the spawned server process
HOST = "files.test"


class Handler(QuietHandler, keep_alive=True):  # keep-alive, like a real file server
    def do_GET(self) -> None:
        self.send_bytes(200, BODY, "application/octet-stream")


def serve(port_queue: Any, cert_pem: bytes | None, key_pem: bytes | None) -> None:
    context: ssl.SSLContext | None = None
    if cert_pem and key_pem:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as folder:
            cert_path, key_path = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
            with open(cert_path, "wb") as handle:
                handle.write(cert_pem)
            with open(key_path, "wb") as handle:
                handle.write(key_pem)
            context.load_cert_chain(cert_path, key_path)
    server = LoopbackServer(Handler, tls=context)
    port_queue.put(server.port)
    server.httpd.serve_forever()


def make_certificate(name: str) -> tuple[bytes, bytes, bytes] | None:
    """(CA PEM, leaf PEM, leaf key PEM) for `name`, or None without `cryptography`."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        return None
    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])

    def builder(subject: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
        )

    ca = (
        builder(ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key.public_key())
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem = serialization.Encoding.PEM
    return ca.public_bytes(pem), leaf.public_bytes(pem), key_pem


def start_server(cert: tuple[bytes, bytes, bytes] | None) -> tuple[BaseProcess, int]:
    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    process = context.Process(
        target=serve, args=(ports, cert[1] if cert else None, cert[2] if cert else None), daemon=True
    )
    process.start()
    return process, int(ports.get(timeout=30))


def measure(fetch: Callable[[], bytes], fetches: int) -> tuple[float, float]:
    """(CPU ms per fetch, wall ms per fetch, median of 5 batches)."""
    for _ in range(5):
        assert fetch() == BODY
    cpu, wall = [], []
    batch = max(1, fetches // 5)
    for _ in range(5):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(batch):
            fetch()
        cpu.append((time.process_time() - cpu0) * 1000 / batch)
        wall.append((time.perf_counter() - wall0) * 1000 / batch)
    return statistics.median(cpu), statistics.median(wall)


def run_scheme(scheme: str, port: int, fetches: int) -> None:
    url = f"{scheme}://{HOST}:{port}/file"

    def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    def fetch() -> bytes:
        return fetch_bytes(url, resolver=resolver, max_bytes=1 << 20, allow_loopback_http=True).content

    def fresh_pool() -> bytes:
        # A new pool per request: a new TLS context (the CA bundle loaded again) and a new connection.
        close_pooled_connections()
        return fetch()

    def unpooled() -> bytes:
        # No idle connection kept: a new connection (and TLS handshake) per request, the shared context.
        keep, lean_http.MAX_IDLE_PER_ORIGIN = lean_http.MAX_IDLE_PER_ORIGIN, 0
        try:
            return fetch()
        finally:
            lean_http.MAX_IDLE_PER_ORIGIN = keep

    rows = [
        ("new TLS context + connection per request", fresh_pool),
        ("new connection, shared TLS context", unpooled),
        ("pooled keep-alive connection (now)", fetch),
    ]
    for label, fn in rows:
        close_pooled_connections()
        cpu, wall = measure(fn, fetches)
        print(f"{scheme:5}  {label:46}  CPU {cpu:6.2f} ms/fetch   wall {wall:6.2f} ms/fetch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fetches", type=int, default=200)
    args = parser.parse_args()

    cpu = time.process_time
    create = timeit.repeat(lean_http.create_ssl_context, number=20, repeat=5, timer=cpu)
    shared_ssl_context()
    reuse = timeit.repeat(shared_ssl_context, number=10_000, repeat=5, timer=cpu)
    print(
        f"TLS context (CPU): create {statistics.median(create) / 20 * 1000:.2f} ms each, "
        f"reuse {statistics.median(reuse) / 10_000 * 1e6:.2f} µs each"
    )

    process, port = start_server(None)
    try:
        run_scheme("http", port, args.fetches)
    finally:
        process.terminate()

    cert = make_certificate(HOST)
    if cert is None:
        print("https: skipped (needs the cryptography package for a loopback certificate)")
        return
    ca_pem = cert[0].decode()

    production = lean_http.create_ssl_context

    def trusting_bench_ca() -> ssl.SSLContext:
        # The production context plus the throwaway CA, so creation costs the same as in production.
        context = production()
        context.load_verify_locations(cadata=ca_pem)
        return context

    lean_http.create_ssl_context = trusting_bench_ca  # type: ignore[assignment]
    close_pooled_connections()
    process, port = start_server(cert)
    try:
        run_scheme("https", port, args.fetches)
    finally:
        process.terminate()
        close_pooled_connections()


if __name__ == "__main__":
    main()
