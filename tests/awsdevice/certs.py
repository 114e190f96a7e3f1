"""A device maker's own CA and certificates (``cryptography``, as a user would make them), the
AWS IoT registration of that CA with boto3 (GetRegistrationCode, RegisterCACertificate with
a verification certificate, RegisterCertificate), and a bare TLS client that reports how
the hub answered a certificate."""

from __future__ import annotations

import socket
import ssl
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from devhub import TIMEOUT, DevHub


@dataclass
class Issuer:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> str:
        return pem(self.certificate)


def pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(subject: str | None = None) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(subject or f"Maker CA {uuid.uuid4().hex[:6]}")
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return Issuer(certificate, key)


def issue(
    issuer: Issuer,
    subject: str,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(minutes=5))
        .not_valid_after(not_after or now + timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(issuer.key, hashes.SHA256())
    )
    return certificate, key


def write_pair(
    directory: Path, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    stem = uuid.uuid4().hex[:10]
    cert_file, key_file = directory / f"{stem}.cert.pem", directory / f"{stem}.key.pem"
    cert_file.write_text(pem(certificate))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def register_ca(iot: Any, issuer: Issuer, *, active: bool = True) -> str:
    """RegisterCACertificate with the verification certificate AWS IoT asks for (its CN the
    account's registration code, signed by the CA's key); the CA certificate id."""
    code = iot.get_registration_code()["registrationCode"]
    verification, _key = issue(issuer, code)
    answer = iot.register_ca_certificate(
        caCertificate=issuer.pem,
        verificationCertificate=pem(verification),
        setAsActive=active,
    )
    return str(answer["certificateId"])


def tls_answer(hub: DevHub, cert_file: Path, key_file: Path, client_id: str) -> str:
    """How the hub answers an MQTT 3.1.1 CONNECT over TLS with this client certificate:
    ``connack:<rc>``, or ``tls:<reason>`` when the TLS layer refused the certificate (with
    TLS 1.3 the server's alert comes after the client's side of the handshake is done, so
    it shows on the first read)."""
    context = ssl.create_default_context(cafile=str(hub.ca_file))
    context.load_cert_chain(str(cert_file), str(key_file))
    raw = socket.create_connection((hub.host, hub.tls_port), timeout=TIMEOUT)
    try:
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            name = client_id.encode()
            body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(name).to_bytes(2, "big") + name
            sock.sendall(bytes([0x10, len(body)]) + body)
            connack = b""
            while len(connack) < 4:
                chunk = sock.recv(4 - len(connack))
                if not chunk:
                    return "closed"
                connack += chunk
            return f"connack:{connack[3]}"
    except ssl.SSLError as error:
        return f"tls:{error.reason}"
    except ConnectionResetError:
        return "tls:reset"
