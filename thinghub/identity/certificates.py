"""Device certificates and registered CA certificates, per account.

Where a certificate comes from decides what is checked (each refusal changes nothing):

============================  ===============================================================
CreateKeysAndCertificate      a new ECDSA P-256 key pair, signed by the hub's CA (``ca.py``)
CreateCertificateFromCsr      the CSR must parse, its signature verify, its key be accepted
                              (``x509.py``); its subject is kept; signed by the hub's CA
RegisterCACertificate         a CA certificate (Basic Constraints CA), in its validity
                              period; in DEFAULT mode with a verification certificate whose
                              subject CN is the account's registration code
                              (RegistrationCodeValidationException) and which the CA's key
                              signed (CertificateValidationException)
RegisterCertificate           in its validity period and signed by a CA registered in the
                              account (the one given, or the one whose subject and key fit;
                              two that fit: CertificateConflictException); that CA must be
                              ACTIVE (CertificateStateException); the mode is the CA's
RegisterCertificateWithoutCA  in its validity period; SNI_ONLY mode
============================  ===============================================================

Certificate ids are the SHA-256 of the DER; a device certificate's id is unique across the
hub (``registry/store.py``, version 3): registering one that any account holds is
ResourceAlreadyExistsException, naming the resource only to its own account.

Status rules: UpdateCertificate takes ACTIVE, INACTIVE, REVOKED (and the deprecated
REGISTER_INACTIVE); PENDING_TRANSFER and PENDING_ACTIVATION are AWS IoT's internal states
("will result in an exception being thrown"). A REVOKED certificate stays revoked (ThingHub's
rule: revocation is for a key that may be compromised). DeleteCertificate is refused while the
certificate is ACTIVE (CertificateStateException), attached to a thing, or, unless
``forceDelete``, to a policy (DeleteConflictException); ``forceDelete`` detaches its policies.
A CA certificate must be INACTIVE to be deleted.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Callable, Mapping

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..registry.ids import wall_clock_ms
from ..registry.store import RegistryStore
from .arns import Arns
from .ca import HubCA, IssuedKeyPair
from .changes import IdentityChanges
from .errors import IdentityError, Problem, invalid
from .models import (
    CACertificate,
    CAStatus,
    Certificate,
    CertificateMode,
    CertificateOrigin,
    CertificateStatus,
    Page,
)
from .paging import seq_page
from .store import IdentityStore, ca_certificate_row, certificate_row, lookup
from .x509 import (
    certificate_id,
    check_key,
    check_validity,
    epoch_ms,
    is_ca,
    issued_by,
    load_certificate,
    load_csr,
    pem_of,
    subject_hash,
)

__all__ = ["SETTABLE_STATUSES", "Certificates", "check_registration_config", "check_status"]

#: what UpdateCertificate (and a registration's ``status``) may set
SETTABLE_STATUSES = frozenset(
    {
        CertificateStatus.ACTIVE,
        CertificateStatus.INACTIVE,
        CertificateStatus.REVOKED,
        CertificateStatus.REGISTER_INACTIVE,
    }
)
_REGISTRATION_CONFIG_KEYS = frozenset({"templateBody", "roleArn", "templateName"})


def check_status(raw: object) -> CertificateStatus:
    try:
        status = CertificateStatus(str(raw))
    except ValueError:
        raise invalid(f"{raw!r} is not a certificate status.") from None
    if status not in SETTABLE_STATUSES:
        raise invalid(f"The status {status} is used internally and cannot be set.")
    return status


def check_registration_config(raw: object) -> dict[str, str] | None:
    """A RegistrationConfig: templateBody (<= 10240), templateName (1..36 of [0-9A-Za-z_-]),
    roleArn (20..2048), all strings."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise invalid("registrationConfig must be an object.")
    config: dict[str, str] = {}
    for key, value in raw.items():
        if key not in _REGISTRATION_CONFIG_KEYS or not isinstance(value, str):
            raise invalid(f"registrationConfig.{key} is not a known string member.")
        config[key] = value
    body = config.get("templateBody")
    if body is not None and len(body) > 10240:
        raise invalid("registrationConfig.templateBody is longer than 10240 characters.")
    name = config.get("templateName")
    if name is not None and not (
        1 <= len(name) <= 36 and all(c.isascii() and (c.isalnum() or c in "_-") for c in name)
    ):
        raise invalid("registrationConfig.templateName must be 1 to 36 of 0-9A-Za-z_-.")
    role = config.get("roleArn")
    if role is not None and not 20 <= len(role) <= 2048:
        raise invalid("registrationConfig.roleArn must be 20 to 2048 characters.")
    return config


class Certificates(IdentityStore):
    def __init__(
        self,
        store: RegistryStore,
        arns: Arns,
        *,
        ca: HubCA | None,
        clock: Callable[[], int] = wall_clock_ms,
        changes: IdentityChanges | None = None,
    ) -> None:
        super().__init__(store, arns, clock=clock, changes=changes)
        #: the hub's CA, which signs what CreateKeysAndCertificate and CreateCertificateFromCsr
        #: hand out (None: those two are refused)
        self.ca = ca

    def _hub_ca(self) -> HubCA:
        if self.ca is None:
            raise invalid("This hub has no CA loaded; it cannot issue certificates.")
        return self.ca

    # ------------------------------------------------------------------ device: reads

    def describe(self, account_id: str, certificate_id: str) -> Certificate:
        with self.store.read() as conn:
            return self._certificate(conn, account_id, certificate_id)

    def listing(
        self,
        account_id: str,
        *,
        after: int | None,
        limit: int,
        ascending: bool,
        ca_certificate_id: str | None = None,
    ) -> Page[Certificate]:
        """Certificates in creation order (or its reverse), after the one whose ``seq`` is
        ``after``; with ``ca_certificate_id``, only those that CA signed."""
        equal: dict[str, object] = {"account_id": account_id}
        if ca_certificate_id is not None:
            equal["ca_certificate_id"] = ca_certificate_id
        with self.store.read() as conn:
            return seq_page(
                conn,
                "SELECT * FROM iot_certificates",
                equal,
                certificate_row,
                after=after,
                limit=limit,
                ascending=ascending,
            )

    # ------------------------------------------------------------------ device: issued here

    def create_keys_and_certificate(
        self, account_id: str, *, active: bool
    ) -> tuple[Certificate, IssuedKeyPair]:
        issued = self._hub_ca().issue_key_pair(self.now())
        record = self._insert(
            account_id,
            issued.certificate,
            CertificateStatus.ACTIVE if active else CertificateStatus.INACTIVE,
            CertificateOrigin.HUB,
            None,
            CertificateMode.DEFAULT,
        )
        return record, issued

    def create_from_csr(self, account_id: str, csr_pem: object, *, active: bool) -> Certificate:
        csr = load_csr(csr_pem)
        public_key = csr.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise invalid("The certificateSigningRequest's key must be RSA or ECDSA.")
        certificate = self._hub_ca().issue(public_key, csr.subject, self.now())
        return self._insert(
            account_id,
            certificate,
            CertificateStatus.ACTIVE if active else CertificateStatus.INACTIVE,
            CertificateOrigin.HUB,
            None,
            CertificateMode.DEFAULT,
        )

    # ------------------------------------------------------------------ device: registered

    def register(
        self,
        account_id: str,
        pem: object,
        *,
        ca_pem: object = None,
        status: CertificateStatus = CertificateStatus.INACTIVE,
    ) -> Certificate:
        certificate = load_certificate(pem)
        check_key(certificate)
        check_validity(certificate, self.now())
        given = None if ca_pem is None else load_certificate(ca_pem, "CA certificate")
        with self._write() as conn:
            ca = self._signing_ca(conn, account_id, certificate, given)
            if ca.status is not CAStatus.ACTIVE:
                raise IdentityError(
                    Problem.CERTIFICATE_STATE,
                    f"The CA certificate {ca.certificate_id} that signed it is not ACTIVE.",
                )
            return self._insert(
                account_id,
                certificate,
                status,
                CertificateOrigin.CA,
                ca.certificate_id,
                ca.mode,
                conn=conn,
            )

    def register_without_ca(
        self,
        account_id: str,
        pem: object,
        *,
        status: CertificateStatus = CertificateStatus.INACTIVE,
    ) -> Certificate:
        certificate = load_certificate(pem)
        check_key(certificate)
        check_validity(certificate, self.now())
        return self._insert(
            account_id,
            certificate,
            status,
            CertificateOrigin.NO_CA,
            None,
            CertificateMode.SNI_ONLY,
        )

    def _signing_ca(
        self,
        conn: sqlite3.Connection,
        account_id: str,
        certificate: x509.Certificate,
        given: x509.Certificate | None,
    ) -> CACertificate:
        if given is not None:
            given_id = certificate_id(given)
            row = conn.execute(
                "SELECT * FROM iot_ca_certificates WHERE account_id = ? AND certificate_id = ?",
                (account_id, given_id),
            ).fetchone()
            if row is None:
                raise IdentityError(
                    Problem.CERTIFICATE_VALIDATION,
                    f"The CA certificate {given_id} is not registered.",
                )
            if not issued_by(certificate, given):
                raise IdentityError(
                    Problem.CERTIFICATE_VALIDATION,
                    "The certificate was not signed by the CA certificate given.",
                )
            return ca_certificate_row(row)
        rows = conn.execute(
            "SELECT * FROM iot_ca_certificates WHERE account_id = ? AND subject_hash = ? "
            "ORDER BY seq",
            (account_id, subject_hash(certificate.issuer)),
        ).fetchall()
        signers = [
            ca_certificate_row(r)
            for r in rows
            if issued_by(certificate, x509.load_pem_x509_certificate(r["pem"].encode()))
        ]
        if not signers:
            raise IdentityError(
                Problem.CERTIFICATE_VALIDATION,
                "The certificate is not signed by a CA certificate registered in this account.",
            )
        if len(signers) > 1:
            raise IdentityError(
                Problem.CERTIFICATE_CONFLICT,
                "More than one registered CA certificate has this certificate's issuer and "
                "key; give the one that signed it (caCertificatePem).",
            )
        return signers[0]

    def _insert(
        self,
        account_id: str,
        certificate: x509.Certificate,
        status: CertificateStatus,
        origin: CertificateOrigin,
        ca_certificate_id: str | None,
        mode: CertificateMode,
        *,
        conn: sqlite3.Connection | None = None,
    ) -> Certificate:
        if conn is None:
            # What the TLS layer trusts changes with a certificate registered without its CA
            # (it is its own trust anchor: transport/tls.py).
            with self._write(trust=origin is CertificateOrigin.NO_CA) as own:
                return self._insert(
                    account_id, certificate, status, origin, ca_certificate_id, mode, conn=own
                )
        cert_id = certificate_id(certificate)
        holder = conn.execute(
            "SELECT account_id FROM iot_certificates WHERE certificate_id = ?", (cert_id,)
        ).fetchone()
        if holder is not None:
            ours = holder[0] == account_id
            raise IdentityError(
                Problem.ALREADY_EXISTS,
                "The certificate is already registered."
                if ours
                else "The certificate is already registered in another account.",
                resource_id=cert_id if ours else None,
                resource_arn=self.arns.certificate(account_id, cert_id) if ours else None,
            )
        now = self.now_ms()
        cursor = conn.execute(
            "INSERT INTO iot_certificates (certificate_id, account_id, status, origin, "
            "ca_certificate_id, certificate_mode, pem, not_before, not_after, created_at, "
            "modified_at, customer_version, generation) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 1)",
            (
                cert_id,
                account_id,
                status.value,
                origin.value,
                ca_certificate_id,
                mode.value,
                pem_of(certificate),
                epoch_ms(certificate.not_valid_before_utc),
                epoch_ms(certificate.not_valid_after_utc),
                now,
                now,
            ),
        )
        seq = cursor.lastrowid
        assert seq is not None
        return Certificate(
            account_id=account_id,
            certificate_id=cert_id,
            status=status,
            origin=origin,
            ca_certificate_id=ca_certificate_id,
            mode=mode,
            pem=pem_of(certificate),
            not_before=epoch_ms(certificate.not_valid_before_utc),
            not_after=epoch_ms(certificate.not_valid_after_utc),
            created_at=now,
            modified_at=now,
            customer_version=1,
            generation=1,
            seq=seq,
        )

    # ------------------------------------------------------------------ device: changes

    def _without_ca(self, account_id: str, certificate_id: str) -> bool:
        """Whether the certificate was registered without its CA: the TLS layer trusts it
        as it is while it is ACTIVE, so a change of it is a change of trust."""
        with self.store.read() as conn:
            row = conn.execute(
                "SELECT origin FROM iot_certificates WHERE certificate_id = ? AND account_id = ?",
                (certificate_id, account_id),
            ).fetchone()
        return row is not None and row[0] == CertificateOrigin.NO_CA.value

    def update(self, account_id: str, certificate_id: str, new_status: CertificateStatus) -> bool:
        """Set the status; True when it changed (idempotent otherwise)."""
        if new_status not in SETTABLE_STATUSES:
            raise invalid(f"The status {new_status} is used internally and cannot be set.")
        with self._write(trust=self._without_ca(account_id, certificate_id)) as conn:
            current = self._certificate(conn, account_id, certificate_id)
            if current.status is new_status:
                return False
            if current.status is CertificateStatus.REVOKED:
                raise IdentityError(
                    Problem.CERTIFICATE_STATE,
                    f"The certificate {certificate_id} is revoked; its status cannot change.",
                )
            conn.execute(
                "UPDATE iot_certificates SET status = ?, modified_at = ?, "
                "customer_version = customer_version + 1, generation = generation + 1 "
                "WHERE certificate_id = ?",
                (new_status.value, self.now_ms(), certificate_id),
            )
        return True

    def delete(self, account_id: str, certificate_id: str, *, force: bool = False) -> None:
        with self._write(trust=self._without_ca(account_id, certificate_id)) as conn:
            current = self._certificate(conn, account_id, certificate_id)
            if current.status is CertificateStatus.ACTIVE:
                raise IdentityError(
                    Problem.CERTIFICATE_STATE,
                    f"Certificate must be deactivated (not ACTIVE) before deletion. "
                    f"Id: {certificate_id}",
                )
            thing = conn.execute(
                "SELECT thing_name FROM iot_thing_principals WHERE certificate_id = ? LIMIT 1",
                (certificate_id,),
            ).fetchone()
            if thing is not None:
                raise IdentityError(
                    Problem.DELETE_CONFLICT,
                    f"The certificate is attached to thing {thing[0]}; detach it first.",
                )
            policy = conn.execute(
                "SELECT policy_name FROM iot_policy_targets WHERE certificate_id = ? LIMIT 1",
                (certificate_id,),
            ).fetchone()
            if policy is not None and not force:
                raise IdentityError(
                    Problem.DELETE_CONFLICT,
                    f"The certificate is attached to policy {policy[0]}; detach it first "
                    "(or delete with forceDelete).",
                )
            # Its policy attachments go with it (ON DELETE CASCADE, registry/store.py).
            conn.execute("DELETE FROM iot_certificates WHERE certificate_id = ?", (certificate_id,))

    # ------------------------------------------------------------------ registration code

    def registration_code(self, account_id: str) -> str | None:
        with self.store.read() as conn:
            row = conn.execute(
                "SELECT code FROM iot_registration_codes WHERE account_id = ?", (account_id,)
            ).fetchone()
        return None if row is None else str(row[0])

    def ensure_registration_code(self, account_id: str) -> str:
        """The account's code (64 hex digits), made at its first request."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT code FROM iot_registration_codes WHERE account_id = ?", (account_id,)
            ).fetchone()
            if row is not None:
                return str(row[0])
            code = secrets.token_hex(32)
            conn.execute(
                "INSERT INTO iot_registration_codes (account_id, code) VALUES (?, ?)",
                (account_id, code),
            )
        return code

    # ------------------------------------------------------------------ CA certificates

    def register_ca(
        self,
        account_id: str,
        pem: object,
        *,
        verification_pem: object = None,
        active: bool = False,
        auto_registration: bool = False,
        registration_config: dict[str, str] | None = None,
        mode: CertificateMode = CertificateMode.DEFAULT,
    ) -> CACertificate:
        ca = load_certificate(pem, "CA certificate")
        check_key(ca, "CA certificate")
        now = self.now()
        check_validity(ca, now, "CA certificate")
        if not is_ca(ca):
            raise IdentityError(
                Problem.CERTIFICATE_VALIDATION,
                "The CA certificate is not a CA: its Basic Constraints do not say CA:TRUE.",
            )
        verification = None
        if mode is CertificateMode.DEFAULT:
            if verification_pem is None:
                raise invalid("A verificationCertificate is required in DEFAULT mode.")
            verification = load_certificate(verification_pem, "verification certificate")
            check_validity(verification, now, "verification certificate")
        cert_id = certificate_id(ca)
        now_ms = self.now_ms()
        with self._write(trust=True) as conn:
            if verification is not None:
                code = conn.execute(
                    "SELECT code FROM iot_registration_codes WHERE account_id = ?",
                    (account_id,),
                ).fetchone()
                names = verification.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
                common = [str(n.value) for n in names]
                if code is None or common != [str(code[0])]:
                    raise IdentityError(
                        Problem.REGISTRATION_CODE,
                        "The verification certificate's common name is not this account's "
                        "registration code (GetRegistrationCode).",
                    )
                if not issued_by(verification, ca):
                    raise IdentityError(
                        Problem.CERTIFICATE_VALIDATION,
                        "The verification certificate was not signed by the CA certificate's key.",
                    )
            existing = conn.execute(
                "SELECT 1 FROM iot_ca_certificates WHERE account_id = ? AND certificate_id = ?",
                (account_id, cert_id),
            ).fetchone()
            if existing is not None:
                raise IdentityError(
                    Problem.ALREADY_EXISTS,
                    "The CA certificate is already registered.",
                    resource_id=cert_id,
                    resource_arn=self.arns.ca_certificate(account_id, cert_id),
                )
            status = CAStatus.ACTIVE if active else CAStatus.INACTIVE
            auto = "ENABLE" if auto_registration else "DISABLE"
            config_text = None if registration_config is None else json.dumps(registration_config)
            cursor = conn.execute(
                "INSERT INTO iot_ca_certificates (account_id, certificate_id, subject_hash, "
                "status, auto_registration, certificate_mode, registration_config, pem, "
                "not_before, not_after, created_at, modified_at, customer_version, generation) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 1)",
                (
                    account_id,
                    cert_id,
                    subject_hash(ca.subject),
                    status.value,
                    auto,
                    mode.value,
                    config_text,
                    pem_of(ca),
                    epoch_ms(ca.not_valid_before_utc),
                    epoch_ms(ca.not_valid_after_utc),
                    now_ms,
                    now_ms,
                ),
            )
            row = conn.execute(
                "SELECT * FROM iot_ca_certificates WHERE seq = ?", (cursor.lastrowid,)
            ).fetchone()
        return ca_certificate_row(row)

    def describe_ca(self, account_id: str, certificate_id: str) -> CACertificate:
        with self.store.read() as conn:
            return self._ca(conn, account_id, certificate_id)

    def _ca(self, conn: sqlite3.Connection, account_id: str, certificate_id: str) -> CACertificate:
        row = lookup(
            conn,
            "SELECT * FROM iot_ca_certificates WHERE account_id = ? AND certificate_id = ?",
            (account_id, certificate_id),
            f"The CA certificate {certificate_id} does not exist.",
        )
        return ca_certificate_row(row)

    def ca_listing(
        self,
        account_id: str,
        *,
        after: int | None,
        limit: int,
        ascending: bool,
        template_name: str | None = None,
    ) -> Page[CACertificate]:
        equal: dict[str, object] = {"account_id": account_id}
        if template_name is not None:
            equal["json_extract(registration_config, '$.templateName')"] = template_name
        with self.store.read() as conn:
            return seq_page(
                conn,
                "SELECT * FROM iot_ca_certificates",
                equal,
                ca_certificate_row,
                after=after,
                limit=limit,
                ascending=ascending,
            )

    def update_ca(
        self,
        account_id: str,
        certificate_id: str,
        *,
        new_status: CAStatus | None = None,
        auto_registration: bool | None = None,
        registration_config: dict[str, str] | None = None,
        remove_auto_registration: bool = False,
    ) -> CACertificate:
        with self._write(trust=True) as conn:
            current = self._ca(conn, account_id, certificate_id)
            status = new_status or current.status
            auto = current.auto_registration
            if auto_registration is not None:
                auto = "ENABLE" if auto_registration else "DISABLE"
            config = current.registration_config
            if remove_auto_registration:
                config = None
            elif registration_config is not None:
                config = registration_config
            conn.execute(
                "UPDATE iot_ca_certificates SET status = ?, auto_registration = ?, "
                "registration_config = ?, modified_at = ?, customer_version = "
                "customer_version + 1, generation = generation + 1 "
                "WHERE account_id = ? AND certificate_id = ?",
                (
                    status.value,
                    auto,
                    None if config is None else json.dumps(dict(config)),
                    self.now_ms(),
                    account_id,
                    certificate_id,
                ),
            )
            updated = self._ca(conn, account_id, certificate_id)
        # Committed: the connections of its certificates are closed if it is no longer ACTIVE.
        self.changes.ca_changed(account_id, certificate_id)
        return updated

    def delete_ca(self, account_id: str, certificate_id: str) -> None:
        with self._write(trust=True) as conn:
            current = self._ca(conn, account_id, certificate_id)
            if current.status is CAStatus.ACTIVE:
                raise IdentityError(
                    Problem.CERTIFICATE_STATE,
                    f"The CA certificate {certificate_id} must be deactivated (not ACTIVE) "
                    "before deletion.",
                )
            conn.execute(
                "DELETE FROM iot_ca_certificates WHERE account_id = ? AND certificate_id = ?",
                (account_id, certificate_id),
            )
