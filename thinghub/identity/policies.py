"""AWS IoT policies: document validation, versions, and attachment to certificates.

Evaluation (may this connection CONNECT, PUBLISH, SUBSCRIBE, Receive here?) is not done
here: ``policy_eval.py`` compiles the documents ``IdentityReader`` reads back.

A policy document must be (AWS IoT Core policy elements; MalformedPolicyException otherwise):

* JSON text of at most ``MAX_DOCUMENT_CHARS`` characters not counting whitespace (AWS IoT's
  quota, 2048), holding one object with ``Version`` ``"2012-10-17"``, a ``Statement`` (one
  statement or a non-empty list), and optionally ``Id``;
* each statement an object with ``Effect`` (``Allow`` or ``Deny``), ``Action`` and
  ``Resource`` (a string or a non-empty list of strings), optionally ``Sid`` (a string) and
  ``Condition`` (an object of objects). ``Action`` entries are ``*`` or
  ``service:Name`` (``iot:Publish``, ``iot:*``, ``greengrass:*``); ``Resource`` entries are
  ``*`` or ARNs (``arn:...``), which may hold policy variables (``${iot:ClientId}``).
  ``NotAction``, ``NotResource`` and ``Principal`` are refused: AWS IoT policies have no
  such elements.

Versions: ids count up from 1 and are never reused; at most ``MAX_VERSIONS`` (5) exist at
once (VersionsLimitExceededException); the default version cannot be deleted, and a policy is
deleted only with its default version alone and no target attached (DeleteConflictException,
with AWS IoT's messages). A certificate holds at most ``MAX_POLICIES_PER_TARGET`` (10, AWS
IoT's quota) policies (LimitExceededException).
"""

from __future__ import annotations

import json
import re
import sqlite3

from .errors import IdentityError, Problem, invalid, matching
from .models import Page, Policy, PolicyVersion, PrincipalPolicy
from .paging import key_page, seq_page
from .store import IdentityStore, lookup, policy_row

__all__ = [
    "MAX_DOCUMENT_CHARS",
    "MAX_POLICIES_PER_TARGET",
    "MAX_VERSIONS",
    "Policies",
    "check_document",
    "check_policy_name",
    "check_version_id",
]

MAX_DOCUMENT_CHARS = 2048
MAX_VERSIONS = 5
MAX_POLICIES_PER_TARGET = 10
POLICY_VERSION = "2012-10-17"
# The model's PolicyDocument maximum (404600); past it the text is not even parsed.
_MAX_TEXT = 404_600
_POLICY_NAME = re.compile(r"[A-Za-z0-9_+=,.@-]{1,128}")
_ACTION = re.compile(r"\*|[A-Za-z0-9-]+:[A-Za-z0-9*?]+")
_STATEMENT_KEYS = frozenset({"Sid", "Effect", "Action", "Resource", "Condition"})
_UNSUPPORTED = frozenset({"NotAction", "NotResource", "Principal", "NotPrincipal"})
_TARGETS = "iot_policy_targets"
_POLICY_SELECT = (
    "SELECT p.*, v.document FROM iot_policies p JOIN iot_policy_versions v "
    "ON v.account_id = p.account_id AND v.policy_name = p.policy_name "
    "AND v.version_id = p.default_version"
)


def check_policy_name(name: object) -> str:
    return matching(
        _POLICY_NAME, name, "policy name", "1 to 128 characters of A-Z, a-z, 0-9 and _+=,.@-"
    )


def check_version_id(raw: object) -> int:
    if not isinstance(raw, str) or not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise invalid(f"The policy version id {raw!r} is not valid: a decimal number.")
    return int(raw)


def _malformed(message: str) -> IdentityError:
    return IdentityError(Problem.MALFORMED_POLICY, f"Policy document is malformed: {message}")


def check_document(text: object) -> str:
    """The document as given (AWS IoT returns it as sent), once it is a valid policy."""
    if not isinstance(text, str) or not text.strip():
        raise invalid("The policyDocument is required.")
    if len(text) > _MAX_TEXT:
        raise _malformed(f"it is longer than {MAX_DOCUMENT_CHARS} characters.")
    size = sum(1 for c in text if not c.isspace())
    if size > MAX_DOCUMENT_CHARS:
        raise _malformed(
            f"it has {size} characters (not counting whitespace); the limit is "
            f"{MAX_DOCUMENT_CHARS}."
        )
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        raise _malformed("it is not valid JSON.") from None
    if not isinstance(document, dict):
        raise _malformed("it must be a JSON object.")
    extra = set(document) - {"Version", "Statement", "Id"}
    if extra:
        raise _malformed(f"unknown element {sorted(extra)[0]!r}.")
    if document.get("Version") != POLICY_VERSION:
        raise _malformed(f'"Version" must be "{POLICY_VERSION}".')
    if "Id" in document and not isinstance(document["Id"], str):
        raise _malformed('"Id" must be a string.')
    statements = document.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list) or not statements:
        raise _malformed('"Statement" must be a statement or a non-empty list of them.')
    for number, statement in enumerate(statements, 1):
        _check_statement(number, statement)
    return text


def _check_statement(number: int, statement: object) -> None:
    where = f"statement {number}"
    if not isinstance(statement, dict):
        raise _malformed(f"{where} is not an object.")
    for key in statement:
        if key in _UNSUPPORTED:
            raise _malformed(f"{where}: AWS IoT policies have no {key!r} element.")
        if key not in _STATEMENT_KEYS:
            raise _malformed(f"{where}: unknown element {key!r}.")
    if statement.get("Effect") not in ("Allow", "Deny"):
        raise _malformed(f'{where}: "Effect" must be "Allow" or "Deny".')
    if "Sid" in statement and not isinstance(statement["Sid"], str):
        raise _malformed(f'{where}: "Sid" must be a string.')
    for action in _strings(statement.get("Action"), f'{where}: "Action"'):
        if _ACTION.fullmatch(action) is None:
            raise _malformed(f'{where}: the action {action!r} is not "*" or "service:Name".')
    for resource in _strings(statement.get("Resource"), f'{where}: "Resource"'):
        if resource != "*" and not resource.startswith("arn:"):
            raise _malformed(f'{where}: the resource {resource!r} is not "*" or an ARN.')
    condition = statement.get("Condition")
    if condition is not None and not (
        isinstance(condition, dict) and all(isinstance(v, dict) for v in condition.values())
    ):
        raise _malformed(f'{where}: "Condition" must map operators to objects.')


def _strings(value: object, what: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise _malformed(f"{what} must be a string or a non-empty list of strings.")
    return items


class Policies(IdentityStore):
    # ------------------------------------------------------------------ reads

    def get(self, account_id: str, name: str) -> Policy:
        with self.store.read() as conn:
            return self._policy(conn, account_id, name)

    def _policy(self, conn: sqlite3.Connection, account_id: str, name: str) -> Policy:
        row = lookup(
            conn,
            f"{_POLICY_SELECT} WHERE p.account_id = ? AND p.policy_name = ?",
            (account_id, name),
            f"The policy {name} does not exist.",
        )
        return policy_row(row)

    def listing(
        self, account_id: str, *, after: int | None, limit: int, ascending: bool
    ) -> Page[Policy]:
        """Policies in creation order (or its reverse), after the one whose seq is ``after``."""
        with self.store.read() as conn:
            return seq_page(
                conn,
                _POLICY_SELECT,
                {"p.account_id": account_id},
                policy_row,
                after=after,
                limit=limit,
                ascending=ascending,
                seq="p.seq",
            )

    def version(self, account_id: str, name: str, version_id: int) -> PolicyVersion:
        with self.store.read() as conn:
            policy = self._policy(conn, account_id, name)
            row = _version_row(conn, account_id, name, version_id)
        return _version(row, policy.default_version)

    def versions(self, account_id: str, name: str) -> list[PolicyVersion]:
        """Every version, newest first (as AWS IoT lists them)."""
        with self.store.read() as conn:
            policy = self._policy(conn, account_id, name)
            rows = conn.execute(
                "SELECT * FROM iot_policy_versions WHERE account_id = ? AND policy_name = ? "
                "ORDER BY version_id DESC",
                (account_id, name),
            ).fetchall()
        return [_version(r, policy.default_version) for r in rows]

    def attached(
        self, account_id: str, certificate_id: str, *, after: str | None, limit: int
    ) -> Page[str]:
        """Names of the policies attached to a certificate, in name order."""
        with self.store.read() as conn:
            self._certificate(conn, account_id, certificate_id)
            scope = {"account_id": account_id, "certificate_id": certificate_id}
            return key_page(conn, _TARGETS, "policy_name", scope, after=after, limit=limit)

    def targets(self, account_id: str, name: str, *, after: str | None, limit: int) -> Page[str]:
        """Ids of the certificates the policy is attached to, in id order."""
        with self.store.read() as conn:
            self._policy(conn, account_id, name)
            scope = {"account_id": account_id, "policy_name": name}
            return key_page(conn, _TARGETS, "certificate_id", scope, after=after, limit=limit)

    def effective(self, account_id: str, certificate_id: str) -> list[PrincipalPolicy]:
        """The policies attached to a certificate with their default documents."""
        with self.store.read() as conn:
            self._certificate(conn, account_id, certificate_id)
            return principal_policies(conn, account_id, certificate_id)

    # ------------------------------------------------------------------ writes

    def create(self, account_id: str, name: str, document: object) -> Policy:
        check_policy_name(name)
        text = check_document(document)
        now = self.now_ms()
        with self._write() as conn:
            exists = conn.execute(
                "SELECT 1 FROM iot_policies WHERE account_id = ? AND policy_name = ?",
                (account_id, name),
            ).fetchone()
            if exists is not None:
                raise IdentityError(
                    Problem.ALREADY_EXISTS,
                    f"The policy {name} already exists.",
                    resource_id=name,
                    resource_arn=self.arns.policy(account_id, name),
                )
            conn.execute(
                "INSERT INTO iot_policies (account_id, policy_name, default_version, "
                "last_version, created_at, modified_at, generation) VALUES (?, ?, 1, 1, ?, ?, 1)",
                (account_id, name, now, now),
            )
            conn.execute(
                "INSERT INTO iot_policy_versions (account_id, policy_name, version_id, "
                "document, created_at) VALUES (?, ?, 1, ?, ?)",
                (account_id, name, text, now),
            )
            return self._policy(conn, account_id, name)

    def delete(self, account_id: str, name: str) -> None:
        check_policy_name(name)
        with self._write() as conn:
            policy = self._policy(conn, account_id, name)
            attached = conn.execute(
                "SELECT 1 FROM iot_policy_targets WHERE account_id = ? AND policy_name = ? LIMIT 1",
                (account_id, name),
            ).fetchone()
            if attached is not None:
                raise IdentityError(
                    Problem.DELETE_CONFLICT,
                    "The policy cannot be deleted as the policy is attached to one or more "
                    f"principals (name={name})",
                )
            others = conn.execute(
                "SELECT 1 FROM iot_policy_versions WHERE account_id = ? AND policy_name = ? "
                "AND version_id != ? LIMIT 1",
                (account_id, name, policy.default_version),
            ).fetchone()
            if others is not None:
                raise IdentityError(
                    Problem.DELETE_CONFLICT,
                    "The policy cannot be deleted as versions other than the default version "
                    f"exist (name={name})",
                )
            conn.execute(
                "DELETE FROM iot_policies WHERE account_id = ? AND policy_name = ?",
                (account_id, name),
            )

    def create_version(
        self, account_id: str, name: str, document: object, *, set_default: bool
    ) -> PolicyVersion:
        check_policy_name(name)
        text = check_document(document)
        now = self.now_ms()
        with self._write() as conn:
            self._policy(conn, account_id, name)
            count = conn.execute(
                "SELECT count(*) FROM iot_policy_versions WHERE account_id = ? AND policy_name = ?",
                (account_id, name),
            ).fetchone()[0]
            if count >= MAX_VERSIONS:
                raise IdentityError(
                    Problem.VERSIONS_LIMIT,
                    f"The policy {name} already has the maximum number of versions "
                    f"({MAX_VERSIONS}); delete one first.",
                )
            conn.execute(
                "UPDATE iot_policies SET last_version = last_version + 1, modified_at = ?, "
                "generation = generation + 1 WHERE account_id = ? AND policy_name = ?",
                (now, account_id, name),
            )
            version_id = int(
                conn.execute(
                    "SELECT last_version FROM iot_policies WHERE account_id = ? AND "
                    "policy_name = ?",
                    (account_id, name),
                ).fetchone()[0]
            )
            conn.execute(
                "INSERT INTO iot_policy_versions (account_id, policy_name, version_id, "
                "document, created_at) VALUES (?, ?, ?, ?, ?)",
                (account_id, name, version_id, text, now),
            )
            if set_default:
                conn.execute(
                    "UPDATE iot_policies SET default_version = ? WHERE account_id = ? AND "
                    "policy_name = ?",
                    (version_id, account_id, name),
                )
        return PolicyVersion(name, version_id, text, set_default, now)

    def set_default_version(self, account_id: str, name: str, version_id: int) -> None:
        check_policy_name(name)
        with self._write() as conn:
            self._policy(conn, account_id, name)
            _version_row(conn, account_id, name, version_id)
            conn.execute(
                "UPDATE iot_policies SET default_version = ?, modified_at = ?, "
                "generation = generation + 1 WHERE account_id = ? AND policy_name = ?",
                (version_id, self.now_ms(), account_id, name),
            )

    def delete_version(self, account_id: str, name: str, version_id: int) -> None:
        check_policy_name(name)
        with self._write() as conn:
            policy = self._policy(conn, account_id, name)
            _version_row(conn, account_id, name, version_id)
            if version_id == policy.default_version:
                raise IdentityError(
                    Problem.DELETE_CONFLICT,
                    f"Cannot delete the default version {version_id} of policy {name}.",
                )
            conn.execute(
                "DELETE FROM iot_policy_versions WHERE account_id = ? AND policy_name = ? AND "
                "version_id = ?",
                (account_id, name, version_id),
            )

    def attach(self, account_id: str, name: str, certificate_id: str) -> None:
        """Attach to a certificate; attaching it again is no error."""
        check_policy_name(name)
        with self._write() as conn:
            self._policy(conn, account_id, name)
            self._certificate(conn, account_id, certificate_id)
            names = [
                r[0]
                for r in conn.execute(
                    "SELECT policy_name FROM iot_policy_targets WHERE account_id = ? AND "
                    "certificate_id = ?",
                    (account_id, certificate_id),
                )
            ]
            if name in names:
                return
            if len(names) >= MAX_POLICIES_PER_TARGET:
                raise IdentityError(
                    Problem.LIMIT_EXCEEDED,
                    f"The certificate has {len(names)} policies attached; the limit is "
                    f"{MAX_POLICIES_PER_TARGET}.",
                )
            conn.execute(
                "INSERT INTO iot_policy_targets (account_id, policy_name, certificate_id, "
                "created_at) VALUES (?, ?, ?, ?)",
                (account_id, name, certificate_id, self.now_ms()),
            )

    def detach(self, account_id: str, name: str, certificate_id: str) -> None:
        """Detach; detaching what is not attached (or does not exist) is no error, as the
        model has no ResourceNotFoundException for DetachPolicy."""
        check_policy_name(name)
        with self._write() as conn:
            conn.execute(
                "DELETE FROM iot_policy_targets WHERE account_id = ? AND policy_name = ? AND "
                "certificate_id = ?",
                (account_id, name, certificate_id),
            )


def principal_policies(
    conn: sqlite3.Connection, account_id: str, certificate_id: str
) -> list[PrincipalPolicy]:
    rows = conn.execute(
        "SELECT p.policy_name, p.default_version, v.document FROM iot_policy_targets t "
        "JOIN iot_policies p ON p.account_id = t.account_id AND p.policy_name = t.policy_name "
        "JOIN iot_policy_versions v ON v.account_id = p.account_id AND "
        "v.policy_name = p.policy_name AND v.version_id = p.default_version "
        "WHERE t.account_id = ? AND t.certificate_id = ? ORDER BY p.policy_name",
        (account_id, certificate_id),
    )
    return [PrincipalPolicy(r[0], int(r[1]), r[2]) for r in rows]


def _version_row(
    conn: sqlite3.Connection, account_id: str, name: str, version_id: int
) -> sqlite3.Row:
    """The row of the policy's version; NOT_FOUND when it has no such version."""
    return lookup(
        conn,
        "SELECT * FROM iot_policy_versions WHERE account_id = ? AND policy_name = ? "
        "AND version_id = ?",
        (account_id, name, version_id),
        f"The policy {name} has no version {version_id}.",
    )


def _version(row: sqlite3.Row, default_version: int) -> PolicyVersion:
    return PolicyVersion(
        policy_name=row["policy_name"],
        version_id=row["version_id"],
        document=row["document"],
        is_default=row["version_id"] == default_version,
        created_at=row["created_at"],
    )
