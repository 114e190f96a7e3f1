"""Accounts, access keys (AccessKeyId/Secret, like RAM users) and instances (``IotInstanceId``)."""

from __future__ import annotations

import secrets
import time

from . import errors as e
from ._base import (
    _ALNUM,
    _LOWER_ALNUM,
    RegistryBase,
    _access_key,
    _exists,
    _random,
)
from .errors import (
    ConflictError,
    InvalidParameterError,
    NotFoundError,
)
from .models import (
    AccessKey,
    Account,
    Instance,
)

ROOT_ACCOUNT_ID = "root"


class AccountsMixin(RegistryBase):
    """Accounts, access keys and instances."""

    def create_account(self, name: str, *, account_id: str | None = None) -> Account:
        """A new account. Account ids are opaque; generated ones are 16 digits, like Alibaba
        UIDs. An explicit ``account_id`` that is taken gets ``ConflictError``."""
        if not name:
            raise InvalidParameterError(e.INVALID_PARAMETER, "The account name cannot be empty.")
        now = self._clock()
        with self.store.write() as conn:
            if account_id is None:
                account_id = str(secrets.randbelow(9 * 10**15) + 10**15)
                while _exists(conn, "accounts", "account_id", account_id):
                    account_id = str(secrets.randbelow(9 * 10**15) + 10**15)
            elif _exists(conn, "accounts", "account_id", account_id):
                raise ConflictError(e.INVALID_PARAMETER, f"Account {account_id} already exists.")
            conn.execute(
                "INSERT INTO accounts (account_id, name, created_at) VALUES (?, ?, ?)",
                (account_id, name, now),
            )
        return Account(account_id, name, now)

    def get_account(self, account_id: str) -> Account:
        with self.store.read() as conn:
            row = conn.execute(
                "SELECT * FROM accounts WHERE account_id = ?", (account_id,)
            ).fetchone()
        if row is None:
            raise NotFoundError(e.NOT_EXISTED_ACCOUNT, f"Account {account_id} does not exist.")
        return Account(row["account_id"], row["name"], row["created_at"])

    def list_accounts(self) -> list[Account]:
        with self.store.read() as conn:
            rows = conn.execute("SELECT * FROM accounts ORDER BY created_at, account_id")
            return [Account(r["account_id"], r["name"], r["created_at"]) for r in rows]

    def ensure_root_account(self) -> Account:
        """The root account (id ``"root"``), created on first use."""
        try:
            return self.get_account(ROOT_ACCOUNT_ID)
        except NotFoundError:
            pass
        try:
            return self.create_account("root", account_id=ROOT_ACCOUNT_ID)
        except ConflictError:
            # Created meanwhile by another writer (nodes of a shared registry starting
            # together, pg_store.py): read where it was written.
            with self.store.write() as conn:
                row = conn.execute(
                    "SELECT * FROM accounts WHERE account_id = ?", (ROOT_ACCOUNT_ID,)
                ).fetchone()
            return Account(row["account_id"], row["name"], row["created_at"])

    def create_access_key(self, account_id: str, *, description: str = "") -> AccessKey:
        """A new enabled key: AccessKeyId ``LTAI`` + 20 alphanumerics (24 characters, the
        cloud's form), a 30-character secret."""
        now = self._clock()
        secret = _random(_ALNUM, 30)
        with self.store.write() as conn:
            self._require_account(conn, account_id)
            key_id = "LTAI" + _random(_ALNUM, 20)
            while _exists(conn, "access_keys", "access_key_id", key_id):
                key_id = "LTAI" + _random(_ALNUM, 20)
            conn.execute(
                "INSERT INTO access_keys (access_key_id, secret, account_id, enabled, "
                "created_at, description) VALUES (?, ?, ?, 1, ?, ?)",
                (key_id, secret, account_id, now, description),
            )
        return AccessKey(key_id, secret, account_id, True, now, description)

    def lookup_access_key(self, access_key_id: str) -> AccessKey | None:
        """The key, enabled or not (the gateway answers ``InvalidAccessKeyId.Inactive`` for a
        disabled one, reference §1.4), or None. Not scoped: this is how a call finds its
        account."""
        now = time.monotonic()
        cached = self._key_cache.get(access_key_id)
        if cached is not None and now - cached[0] < self.cache_ttl_s:
            return cached[1]
        with self.store.read() as conn:
            row = conn.execute(
                "SELECT * FROM access_keys WHERE access_key_id = ?", (access_key_id,)
            ).fetchone()
        key = None if row is None else _access_key(row)
        if len(self._key_cache) >= 100_000:
            self._key_cache.clear()  # bounded; unknown ids from a flood must not grow it
        self._key_cache[access_key_id] = (now, key)
        return key

    def list_access_keys(self, account_id: str) -> list[AccessKey]:
        with self.store.read() as conn:
            self._require_account(conn, account_id)
            rows = conn.execute(
                "SELECT * FROM access_keys WHERE account_id = ? ORDER BY created_at, access_key_id",
                (account_id,),
            )
            return [_access_key(r) for r in rows]

    def disable_access_key(self, access_key_id: str) -> AccessKey:
        return self._set_key_enabled(access_key_id, False)

    def enable_access_key(self, access_key_id: str) -> AccessKey:
        return self._set_key_enabled(access_key_id, True)

    def _set_key_enabled(self, access_key_id: str, enabled: bool) -> AccessKey:
        self._key_cache.pop(access_key_id, None)
        with self.store.write() as conn:
            updated = conn.execute(
                "UPDATE access_keys SET enabled = ? WHERE access_key_id = ?",
                (int(enabled), access_key_id),
            ).rowcount
            if not updated:
                raise NotFoundError(e.NOT_EXISTED_ACCESS_KEY, "Specified access key is not found.")
            row = conn.execute(
                "SELECT * FROM access_keys WHERE access_key_id = ?", (access_key_id,)
            ).fetchone()
        return _access_key(row)

    def ensure_root_key(self, access_key_id: str, secret: str) -> AccessKey:
        """Make ``access_key_id``/``secret`` an enabled key of the root account
        (``THINGHUB_ROOT_ACCESS_KEY_ID``/``_SECRET``). Idempotent; if the key exists with
        another secret, the given secret wins (the environment is the operator's intent). A key
        id that belongs to another account gets ``ConflictError``."""
        self._key_cache.pop(access_key_id, None)
        if not access_key_id or not access_key_id.isprintable() or " " in access_key_id:
            raise InvalidParameterError(
                e.INVALID_PARAMETER, "The AccessKeyId must be non-empty printable text."
            )
        if len(access_key_id) > 128 or not secret or len(secret) > 256:
            raise InvalidParameterError(
                e.INVALID_PARAMETER, "The AccessKeyId or secret is empty or too long."
            )
        root = self.ensure_root_account()
        now = self._clock()
        with self.store.write() as conn:
            row = conn.execute(
                "SELECT * FROM access_keys WHERE access_key_id = ?", (access_key_id,)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO access_keys (access_key_id, secret, account_id, enabled, "
                    "created_at, description) VALUES (?, ?, ?, 1, ?, ?)",
                    (access_key_id, secret, root.account_id, now, "root key from environment"),
                )
            elif row["account_id"] != root.account_id:
                raise ConflictError(
                    e.ACCESS_KEY_IN_USE,
                    f"AccessKeyId {access_key_id} belongs to another account.",
                )
            else:
                conn.execute(
                    "UPDATE access_keys SET secret = ?, enabled = 1 WHERE access_key_id = ?",
                    (secret, access_key_id),
                )
            row = conn.execute(
                "SELECT * FROM access_keys WHERE access_key_id = ?", (access_key_id,)
            ).fetchone()
        return _access_key(row)

    # ===== instances ==========================================================================

    def create_instance(self, account_id: str, name: str) -> Instance:
        """A new instance; ids look like the cloud's (``iot-`` and 12 characters)."""
        if not name:
            raise InvalidParameterError(e.INVALID_PARAMETER, "The instance name cannot be empty.")
        now = self._clock()
        with self.store.write() as conn:
            self._require_account(conn, account_id)
            instance_id = "iot-" + _random(_LOWER_ALNUM, 12)
            while _exists(conn, "instances", "instance_id", instance_id):
                instance_id = "iot-" + _random(_LOWER_ALNUM, 12)
            conn.execute(
                "INSERT INTO instances (instance_id, account_id, name, created_at) "
                "VALUES (?, ?, ?, ?)",
                (instance_id, account_id, name, now),
            )
        return Instance(instance_id, account_id, name, now)

    def list_instances(self, account_id: str) -> list[Instance]:
        with self.store.read() as conn:
            rows = conn.execute(
                "SELECT * FROM instances WHERE account_id = ? ORDER BY created_at, instance_id",
                (account_id,),
            )
            return [
                Instance(r["instance_id"], r["account_id"], r["name"], r["created_at"])
                for r in rows
            ]
