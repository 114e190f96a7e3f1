"""The hub's own certificate authority: ``<data_dir>/ca/ca.pem`` and ``ca/ca.key``.

Created at the hub's first start and reused afterwards (a new CA would orphan every
certificate issued so far). An ECDSA P-256 key, a self-signed certificate valid for 10 years
whose subject is ``CN=ThingHub CA <hub id>, O=ThingHub`` (the hub id: 8 random hex digits,
fixed at creation). It signs the certificates of ``CreateKeysAndCertificate`` and
``CreateCertificateFromCsr`` (``issue``): end-entity, TLS client authentication, valid from a
minute before issue (devices' clocks drift) until the CA itself expires.

Files: the directory is mode 0700 and the key 0600 from the moment they exist (the key never
exists with wider permissions, even briefly). Each file is written to a temporary name,
fsynced and renamed, the key before the certificate; so a ``ca.pem`` is only ever found with
its ``ca.key``. A key without a certificate is what a crash during the first start leaves:
nothing was ever issued from it, and the CA is made anew. A certificate without its key, or
a key that does not match the certificate, is refused (``CAError``): that is damage the
operator must look at, not something to paper over by minting a new CA.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import ThingHubError
from .x509 import certificate_id

__all__ = [
    "CA_DIR",
    "CERT_FILE",
    "ISSUED_COMMON_NAME",
    "KEY_FILE",
    "CAError",
    "HubCA",
    "IssuedKeyPair",
]

CA_DIR = "ca"
CERT_FILE = "ca.pem"
KEY_FILE = "ca.key"
VALIDITY = timedelta(days=3652)
# Issued certificates start this much before the moment of issue: a device whose clock is a
# little behind must not find its new certificate "not yet valid".
BACKDATE = timedelta(minutes=1)
#: the subject of an issued certificate whose CSR has an empty one (AWS IoT writes
#: "AWS IoT Certificate" there)
ISSUED_COMMON_NAME = "ThingHub IoT Certificate"


class CAError(ThingHubError):
    """The CA files cannot be used (missing, unreadable, or a certificate without its key)."""


@dataclass(frozen=True, slots=True)
class IssuedKeyPair:
    """CreateKeysAndCertificate's answer: a new key pair and its certificate."""

    certificate: x509.Certificate
    public_key_pem: str
    private_key_pem: str


class HubCA:
    """The loaded CA: ``certificate``, ``pem``, ``fingerprint``, and ``issue``."""

    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.certificate = certificate
        self._key = key
        self.pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
        self.certificate_id = certificate_id(certificate)
        self._ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())

    @property
    def subject(self) -> str:
        return self.certificate.subject.rfc4514_string()

    @property
    def fingerprint(self) -> str:
        """SHA-256 fingerprint, colon-separated uppercase hex (as ``openssl x509 -fingerprint
        -sha256`` prints it)."""
        digest = self.certificate.fingerprint(hashes.SHA256())
        return ":".join(f"{b:02X}" for b in digest)

    # ------------------------------------------------------------------ files

    @classmethod
    def load_or_create(cls, data_dir: Path, *, now: datetime | None = None) -> HubCA:
        """The CA in ``data_dir/ca``, created there if there is none yet."""
        directory = Path(data_dir) / CA_DIR
        if (directory / CERT_FILE).exists():
            return cls.load(data_dir)
        return cls._create(directory, now or datetime.now(UTC))

    @classmethod
    def load(cls, data_dir: Path) -> HubCA:
        directory = Path(data_dir) / CA_DIR
        cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
        if not cert_path.exists():
            raise CAError(
                f"there is no CA in {directory} yet: the hub creates it at its first start"
            )
        try:
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except FileNotFoundError:
            raise CAError(f"{cert_path} exists but its key {key_path} does not") from None
        except (OSError, ValueError, TypeError) as error:
            raise CAError(f"cannot read the CA in {directory}: {error}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CAError(f"{key_path} is not an ECDSA key")
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        pem = serialization.Encoding.PEM
        if key.public_key().public_bytes(pem, public) != certificate.public_key().public_bytes(
            pem, public
        ):
            raise CAError(f"{key_path} is not the key of {cert_path}")
        return cls(certificate, key)

    @classmethod
    def _create(cls, directory: Path, now: datetime) -> HubCA:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, f"ThingHub CA {secrets.token_hex(4)}"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ThingHub"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + VALIDITY)
            # It signs end-entity certificates only (RFC 5280 §4.2.1.9: path length 0).
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_atomically(directory / KEY_FILE, key_pem, 0o600)
        _write_atomically(
            directory / CERT_FILE, certificate.public_bytes(serialization.Encoding.PEM), 0o644
        )
        _fsync_directory(directory)
        return cls(certificate, key)

    # ------------------------------------------------------------------ issuing

    def issue(
        self,
        public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
        subject: x509.Name,
        now: datetime,
    ) -> x509.Certificate:
        """An end-entity TLS client certificate for ``public_key``, signed by this CA."""
        if not subject.rdns:
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUED_COMMON_NAME)])
        rsa_key = isinstance(public_key, rsa.RSAPublicKey)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(self.certificate.not_valid_after_utc)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=rsa_key,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )

    def issue_server(
        self,
        public_key: ec.EllipticCurvePublicKey,
        hosts: Sequence[str],
        now: datetime,
        validity: timedelta,
    ) -> x509.Certificate:
        """A TLS server certificate for ``hosts`` (IP addresses and DNS names, each a
        subjectAltName; the first is the common name), signed by this CA, valid from a minute
        before ``now`` for ``validity`` (never past the CA's own end)."""
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        end = min(now + validity, self.certificate.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )

    def issue_key_pair(self, now: datetime) -> IssuedKeyPair:
        """A new ECDSA P-256 key pair and its certificate (PKCS#8 private key, SPKI public
        key, both PEM). P-256 rather than AWS's RSA 2048: the same TLS support on devices, and
        a key made in microseconds rather than tens of milliseconds."""
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = self.issue(key.public_key(), x509.Name([]), now)
        return IssuedKeyPair(
            certificate=certificate,
            public_key_pem=key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii"),
            private_key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode("ascii"),
        )


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` through a temporary file created with ``mode`` (so a key is
    never readable by others, not even for a moment), fsynced, then renamed over ``path``."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
