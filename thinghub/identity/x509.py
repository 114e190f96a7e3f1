"""X.509 checks, all done by ``cryptography`` (no hand parsing): loading PEM certificates and
CSRs, certificate ids, validity periods, key types, and who signed what. Pure functions; each
refusal is an ``IdentityError`` whose message says what is wrong.

Keys accepted (what AWS IoT Core accepts for device and CA certificates): RSA of 2048 to 8192
bits and ECDSA on P-256, P-384 or P-521. Anything else (DSA, Ed25519, small RSA) is refused.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .errors import IdentityError, Problem

__all__ = [
    "MAX_CSR_CHARS",
    "MAX_PEM_CHARS",
    "certificate_id",
    "check_key",
    "check_validity",
    "epoch_ms",
    "is_ca",
    "issued_by",
    "key_problem",
    "load_certificate",
    "load_csr",
    "pem_of",
    "subject_hash",
]

# The model's lengths: CertificatePem 1..65536, CertificateSigningRequest 1..4096 characters.
MAX_PEM_CHARS = 65536
MAX_CSR_CHARS = 4096
_RSA_BITS = (2048, 8192)
_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})


def _validation(message: str) -> IdentityError:
    return IdentityError(Problem.CERTIFICATE_VALIDATION, message)


def certificate_id(certificate: x509.Certificate) -> str:
    """AWS IoT's certificate id: the SHA-256 of the DER encoding, lowercase hex (64)."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def subject_hash(name: x509.Name) -> str:
    """A lookup key for a distinguished name (the SHA-256 of its DER)."""
    return hashlib.sha256(name.public_bytes()).hexdigest()


def pem_of(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def load_certificate(pem: object, what: str = "certificate") -> x509.Certificate:
    """Exactly one PEM certificate; a missing, oversized or unreadable one is refused."""
    if not isinstance(pem, str) or not pem.strip():
        raise IdentityError(Problem.INVALID, f"The {what} PEM is required.")
    if len(pem) > MAX_PEM_CHARS:
        raise IdentityError(
            Problem.INVALID, f"The {what} PEM is longer than {MAX_PEM_CHARS} characters."
        )
    try:
        found = x509.load_pem_x509_certificates(pem.encode())
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise _validation(f"The {what} is not a valid PEM X.509 certificate.") from None
    if len(found) != 1:
        raise _validation(f"The {what} PEM must hold exactly one certificate, not {len(found)}.")
    return found[0]


def load_csr(pem: object) -> x509.CertificateSigningRequest:
    """A PEM certificate signing request whose self-signature verifies and whose key is one
    the hub accepts (InvalidRequestException otherwise, the only shape the model has)."""
    if not isinstance(pem, str) or not pem.strip():
        raise IdentityError(Problem.INVALID, "The certificateSigningRequest is required.")
    if len(pem) > MAX_CSR_CHARS:
        raise IdentityError(
            Problem.INVALID,
            f"The certificateSigningRequest is longer than {MAX_CSR_CHARS} characters.",
        )
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
        valid = csr.is_signature_valid
        key = csr.public_key()
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise IdentityError(
            Problem.INVALID, "The certificateSigningRequest is not a valid PEM CSR."
        ) from None
    if not valid:
        raise IdentityError(
            Problem.INVALID, "The certificateSigningRequest's signature does not verify."
        )
    problem = key_problem(key)
    if problem is not None:
        raise IdentityError(Problem.INVALID, f"The certificateSigningRequest's {problem}")
    return csr


def key_problem(key: object) -> str | None:
    """What is wrong with a public key for AWS IoT, or None."""
    if isinstance(key, rsa.RSAPublicKey):
        low, high = _RSA_BITS
        if not low <= key.key_size <= high:
            return f"RSA key has {key.key_size} bits; {low} to {high} are accepted."
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            return f"elliptic curve {key.curve.name} is not accepted (P-256, P-384, P-521)."
        return None
    return f"key type {type(key).__name__} is not accepted (RSA or ECDSA only)."


def check_key(certificate: x509.Certificate, what: str = "certificate") -> None:
    try:
        key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise _validation(f"The {what}'s public key cannot be read.") from None
    problem = key_problem(key)
    if problem is not None:
        raise _validation(f"The {what}'s {problem}")


def check_validity(certificate: x509.Certificate, now: datetime, what: str = "certificate") -> None:
    """Refuse a certificate outside its validity period at ``now`` (an aware datetime)."""
    if now < certificate.not_valid_before_utc:
        raise _validation(
            f"The {what} is not valid yet (notBefore "
            f"{certificate.not_valid_before_utc.isoformat()})."
        )
    if now > certificate.not_valid_after_utc:
        raise _validation(
            f"The {what} has expired (notAfter {certificate.not_valid_after_utc.isoformat()})."
        )


def is_ca(certificate: x509.Certificate) -> bool:
    """Whether its Basic Constraints say it is a CA (RFC 5280 §4.2.1.9)."""
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca


def issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer`` signed ``certificate``: its subject is the certificate's issuer and
    its key verifies the certificate's signature."""
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True
