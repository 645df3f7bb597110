"""A throwaway certificate authority and a server TLS context it signs, for loopback HTTPS in tests.

The server context remembers the SNI each connection sent (`sock.sni`), so a test can see which name a client
asked for.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
import tempfile
from datetime import UTC, datetime
from typing import Any


def make_tls_server_context(names: list[str]) -> tuple[ssl.SSLContext, bytes]:
    """A server context for `names`, signed by a throwaway CA; returns (context, CA certificate PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "safe_http test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as folder:
        cert_path, key_path = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
        with open(cert_path, "wb") as handle:
            handle.write(pem)
        with open(key_path, "wb") as handle:
            handle.write(key_pem)
        server_context.load_cert_chain(cert_path, key_path)

    def remember_sni(sock: Any, name: str | None, _context: ssl.SSLContext) -> None:
        sock.sni = name

    server_context.sni_callback = remember_sni
    return server_context, ca_cert.public_bytes(serialization.Encoding.PEM)


def trusting(ca_pem: bytes) -> ssl.SSLContext:
    """A client context like the engine's, trusting only the test CA."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.set_alpn_protocols(["http/1.1"])
    return context
