"""The TLS listener's own certificate when the operator configures none: signed by the hub's
CA (``ca.py``), kept in ``<data_dir>/ca/server.pem`` and ``server.key``, so that devices
trust the hub by trusting the one CA certificate ``thinghub ca show`` prints, which also
issues their own certificates.

At each start (``ensure``) the files are reused unless the certificate is missing or
unreadable, names other hosts than ``hosts``, was not signed by the hub's CA, or ends within
``RENEW_BEFORE``: then a new ECDSA P-256 key and a certificate valid for ``VALIDITY`` are made.
The key is written first, mode 0600 from its creation (``ca._write_atomically``); a crash
between the two files leaves a key with the old certificate, which the next start finds not
matching and replaces. The hosts default to ``localhost``, ``127.0.0.1`` and the machine's
host name (``default_hosts``); ``mqtt.tls_hosts`` names others.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .ca import CA_DIR, HubCA, _fsync_directory, _write_atomically
from .x509 import issued_by

__all__ = [
    "RENEW_BEFORE",
    "SERVER_CERT_FILE",
    "SERVER_KEY_FILE",
    "VALIDITY",
    "default_hosts",
    "ensure",
]

SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server.key"
VALIDITY = timedelta(days=365)
RENEW_BEFORE = timedelta(days=30)


def default_hosts() -> tuple[str, ...]:
    """``localhost``, ``127.0.0.1`` and this machine's host name."""
    hosts = ["localhost", "127.0.0.1"]
    name = socket.gethostname()
    if name and name not in hosts:
        hosts.append(name)
    return tuple(hosts)


def ensure(
    ca: HubCA, data_dir: Path, hosts: Sequence[str], *, now: datetime | None = None
) -> tuple[Path, Path]:
    """The (certificate, key) files of the hub's TLS server certificate for ``hosts``, made
    anew when the ones there do not fit (module notes)."""
    if not hosts:
        raise ValueError("the TLS server certificate needs at least one host name")
    directory = Path(data_dir) / CA_DIR
    cert_path, key_path = directory / SERVER_CERT_FILE, directory / SERVER_KEY_FILE
    moment = now or datetime.now(UTC)
    if _usable(ca, cert_path, key_path, hosts, moment):
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = ca.issue_server(key.public_key(), hosts, moment, VALIDITY)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    _fsync_directory(directory)
    return cert_path, key_path


def _usable(
    ca: HubCA, cert_path: Path, key_path: Path, hosts: Sequence[str], now: datetime
) -> bool:
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return False
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    if key.public_key().public_bytes(pem, public) != certificate.public_key().public_bytes(
        pem, public
    ):
        return False
    if not issued_by(certificate, ca.certificate):
        return False
    if (
        certificate.not_valid_after_utc - now < RENEW_BEFORE
        or now < certificate.not_valid_before_utc
    ):
        return False
    return _names(certificate) == {_canonical(h) for h in hosts}


def _names(certificate: x509.Certificate) -> set[str]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    found = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    found.update(names.get_values_for_type(x509.DNSName))
    return found


def _canonical(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host
