"""A default TLS certificate for traefik, so that traefik does not make one on every reload.

traefik 3.7 builds its TLS stores again on every configuration change; a store without a
default certificate gets a freshly generated self-signed RSA-2048 one each time. That key
generation is most of traefik's reload cost: measured on this project's 2-core VM, 69-75 ms of
CPU per reload of a one-route configuration (with a long random tail: RSA prime search), against
3-4 ms once a default certificate is configured (``docs/traefik.md``). Every add_route waits for
a reload, so a managed traefik is always given a default certificate: the hub's ``ssl_cert`` /
``ssl_key`` when it has them, else this self-signed EC P-256 one, made once per traefik start
(about a millisecond) in traefik's private directory, the key readable by its owner only.

Nothing trusts this certificate; it is what traefik serves to a TLS client whose SNI matches no
other certificate, exactly as traefik's own generated one would be.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

__all__ = ["write_self_signed"]


def _write_private(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)


def write_self_signed(cert_path: Path, key_path: Path, *, common_name: str) -> None:
    """Write a self-signed EC P-256 certificate (PEM, 10 years) and its key (PEM, mode 0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
