"""Things (the AWS IoT registry's devices): names, attributes, versions, and the certificates
attached to them as principals.

Rules (the AWS IoT API reference and the model's shapes; botocore checks none of the
patterns, so they are checked here):

=======================  =====================================================================
thing name               1..128 of ``[a-zA-Z0-9:_-]``
attribute name           1..128 of ``[a-zA-Z0-9_.,@/:#-]``
attribute value          0..800 of ``[a-zA-Z0-9_.,@/:#=\\[\\]-]``; an empty value removes the
                         attribute (UpdateThing: "To remove an attribute, call UpdateThing with
                         an empty attribute value"), and is never stored
attributes per thing     at most ``MAX_ATTRIBUTES`` (50, AWS IoT's quota)
CreateThing again        with the same type and attributes: success, the existing thing; with
                         others: ResourceAlreadyExistsException (AWS IoT's documented rule)
UpdateThing              replaces the attributes, or merges them (``merge``); raises the
                         version by one; ``expectedVersion`` must be the current version
                         (VersionConflictException)
DeleteThing              of a thing that does not exist: success (AWS IoT's documented
                         answer); refused while principals are attached
                         (InvalidRequestException, as AWS IoT answers)
thing types              ThingHub has none: naming one is ResourceNotFoundException
principals               certificates of the same account; ``EXCLUSIVE_THING`` attaches a
                         certificate to this thing only
=======================  =====================================================================
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Mapping

from .errors import IdentityError, Problem, invalid, matching
from .models import Page, Thing
from .paging import fetch_page, key_page
from .store import IdentityStore, thing_row

__all__ = [
    "MAX_ATTRIBUTES",
    "Things",
    "attributes_of",
    "check_attribute_name",
    "check_thing_name",
    "thing_of",
]

MAX_ATTRIBUTES = 50
_PRINCIPALS = "iot_thing_principals"
_THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_ATTRIBUTE_NAME = re.compile(r"[a-zA-Z0-9_.,@/:#-]{1,128}")
_ATTRIBUTE_VALUE = re.compile(r"[a-zA-Z0-9_.,@/:#=\[\]-]{0,800}")


def check_thing_name(name: object) -> str:
    return matching(
        _THING_NAME, name, "thing name", "1 to 128 characters of a-z, A-Z, 0-9, ':', '_' and '-'."
    )


def check_attribute_name(name: object) -> str:
    return matching(
        _ATTRIBUTE_NAME, name, "attribute name", "1 to 128 characters of a-z, A-Z, 0-9 and _.,@/:#-"
    )


def check_attribute_value(value: object) -> str:
    return matching(
        _ATTRIBUTE_VALUE,
        value,
        "attribute value",
        "up to 800 characters of a-z, A-Z, 0-9 and _.,@/:#=[]-",
    )


def check_attributes(raw: object) -> dict[str, str]:
    """A map of attribute names to values (empty values kept: they mean "remove")."""
    if not isinstance(raw, Mapping):
        raise invalid("attributes must be a map of names to string values.")
    return {check_attribute_name(k): check_attribute_value(v) for k, v in raw.items()}


def _bounded(attributes: dict[str, str]) -> dict[str, str]:
    kept = {name: value for name, value in attributes.items() if value}
    if len(kept) > MAX_ATTRIBUTES:
        raise invalid(f"A thing may have at most {MAX_ATTRIBUTES} attributes, not {len(kept)}.")
    return kept


def _no_types(type_name: str | None) -> None:
    if type_name is not None:
        raise IdentityError(Problem.NOT_FOUND, f"The thing type {type_name} does not exist.")


class Things(IdentityStore):
    # ------------------------------------------------------------------ reads

    def describe(self, account_id: str, name: str) -> Thing:
        with self.store.read() as conn:
            thing = thing_of(conn, account_id, name)
        if thing is None:
            raise IdentityError(Problem.NOT_FOUND, f"The thing {name} does not exist.")
        return thing

    def listing(
        self,
        account_id: str,
        *,
        after: str | None,
        limit: int,
        attribute_name: str | None = None,
        attribute_value: str | None = None,
        prefix: bool = False,
        type_name: str | None = None,
    ) -> Page[Thing]:
        """Things in name order after ``after``; with ``attribute_name``, only those that have
        that attribute (with ``attribute_value``: equal to it, or starting with it when
        ``prefix``)."""
        if attribute_value is not None and attribute_name is None:
            raise invalid("attributeValue needs an attributeName.")
        if type_name is not None:
            return Page((), None)  # no thing has a type here
        sql = "SELECT * FROM iot_things t WHERE t.account_id = ? AND t.thing_name > ?"
        args: list[object] = [account_id, after or ""]
        if attribute_name is not None:
            sql += (
                " AND EXISTS (SELECT 1 FROM iot_thing_attributes a WHERE a.account_id = "
                "t.account_id AND a.thing_name = t.thing_name AND a.name = ?"
            )
            args.append(attribute_name)
            if attribute_value is not None:
                if prefix:
                    sql += " AND substr(a.value, 1, ?) = ?"
                    args += [len(attribute_value), attribute_value]
                else:
                    sql += " AND a.value = ?"
                    args.append(attribute_value)
            sql += ")"
        sql += " ORDER BY t.thing_name"
        with self.store.read() as conn:
            rows, more = fetch_page(conn, sql, args, limit)
            attributes = attributes_of(conn, account_id, [r["thing_name"] for r in rows])
        things = tuple(thing_row(r, attributes.get(r["thing_name"], {})) for r in rows)
        return Page(things, things[-1].name if more and things else None)

    def principals(self, account_id: str, name: str, *, after: str | None, limit: int) -> Page[str]:
        """Ids of the certificates attached to the thing, in id order."""
        with self.store.read() as conn:
            self._require_thing(conn, account_id, name)
            scope = {"account_id": account_id, "thing_name": name}
            return key_page(conn, _PRINCIPALS, "certificate_id", scope, after=after, limit=limit)

    def principal_things(
        self, account_id: str, certificate_id: str, *, after: str | None, limit: int
    ) -> Page[str]:
        """Names of the things a certificate is attached to, in name order."""
        with self.store.read() as conn:
            self._certificate(conn, account_id, certificate_id)
            scope = {"account_id": account_id, "certificate_id": certificate_id}
            return key_page(conn, _PRINCIPALS, "thing_name", scope, after=after, limit=limit)

    # ------------------------------------------------------------------ writes

    def create(
        self,
        account_id: str,
        name: str,
        *,
        type_name: str | None = None,
        attributes: dict[str, str] | None = None,
    ) -> Thing:
        """A new thing, or the existing one if it has exactly this configuration."""
        check_thing_name(name)
        _no_types(type_name)
        wanted = _bounded(attributes or {})
        now = self.now_ms()
        with self._write() as conn:
            existing = thing_of(conn, account_id, name)
            if existing is not None:
                if dict(existing.attributes) == wanted and existing.type_name is None:
                    return existing
                raise IdentityError(
                    Problem.ALREADY_EXISTS,
                    f"The thing {name} already exists with a different configuration.",
                    resource_id=existing.thing_id,
                    resource_arn=self.arns.thing(account_id, name),
                )
            thing_id = str(uuid.uuid4())
            conn.execute(
                "INSERT INTO iot_things (account_id, thing_name, thing_id, thing_type_name, "
                "version, created_at, modified_at) VALUES (?, ?, ?, NULL, 1, ?, ?)",
                (account_id, name, thing_id, now, now),
            )
            _write_attributes(conn, account_id, name, wanted)
        return Thing(account_id, name, thing_id, None, wanted, 1, now, now)

    def update(
        self,
        account_id: str,
        name: str,
        *,
        attributes: dict[str, str] | None = None,
        merge: bool = False,
        expected_version: int | None = None,
        type_name: str | None = None,
    ) -> Thing:
        """Change the attributes (replace them, or ``merge``: add, change, and remove those
        given empty), raising the version by one."""
        check_thing_name(name)
        _no_types(type_name)
        now = self.now_ms()
        with self._write() as conn:
            thing = thing_of(conn, account_id, name)
            if thing is None:
                raise IdentityError(Problem.NOT_FOUND, f"The thing {name} does not exist.")
            if expected_version is not None and expected_version != thing.version:
                raise IdentityError(
                    Problem.VERSION_CONFLICT,
                    f"The expected version {expected_version} of thing {name} is not its "
                    f"current version {thing.version}.",
                )
            current = dict(thing.attributes)
            if attributes is None:
                wanted = current
            elif merge:
                wanted = _bounded({**current, **attributes})
            else:
                wanted = _bounded(attributes)
            conn.execute(
                "UPDATE iot_things SET version = version + 1, modified_at = ? "
                "WHERE account_id = ? AND thing_name = ?",
                (now, account_id, name),
            )
            conn.execute(
                "DELETE FROM iot_thing_attributes WHERE account_id = ? AND thing_name = ?",
                (account_id, name),
            )
            _write_attributes(conn, account_id, name, wanted)
        return Thing(
            account_id,
            name,
            thing.thing_id,
            None,
            wanted,
            thing.version + 1,
            thing.created_at,
            now,
        )

    def delete(self, account_id: str, name: str, *, expected_version: int | None = None) -> bool:
        """Delete the thing; False when there was none (which is no error)."""
        check_thing_name(name)
        with self._write() as conn:
            row = conn.execute(
                "SELECT version FROM iot_things WHERE account_id = ? AND thing_name = ?",
                (account_id, name),
            ).fetchone()
            if row is None:
                return False
            if expected_version is not None and expected_version != row[0]:
                raise IdentityError(
                    Problem.VERSION_CONFLICT,
                    f"The expected version {expected_version} of thing {name} is not its "
                    f"current version {row[0]}.",
                )
            attached = conn.execute(
                "SELECT 1 FROM iot_thing_principals WHERE account_id = ? AND thing_name = ? "
                "LIMIT 1",
                (account_id, name),
            ).fetchone()
            if attached is not None:
                raise invalid(
                    f"Cannot delete. Thing {name} is still attached to one or more principals."
                )
            conn.execute(
                "DELETE FROM iot_things WHERE account_id = ? AND thing_name = ?",
                (account_id, name),
            )
        return True

    def attach_principal(
        self, account_id: str, name: str, certificate_id: str, *, exclusive: bool = False
    ) -> None:
        check_thing_name(name)
        now = self.now_ms()
        with self._write() as conn:
            self._require_thing(conn, account_id, name)
            self._certificate(conn, account_id, certificate_id)
            others = conn.execute(
                "SELECT thing_name, exclusive FROM iot_thing_principals WHERE account_id = ? "
                "AND certificate_id = ? AND thing_name != ?",
                (account_id, certificate_id, name),
            ).fetchall()
            if exclusive and others:
                raise invalid(
                    f"The principal is attached to other things ({others[0][0]}); it cannot "
                    f"be attached to {name} exclusively."
                )
            held = [r[0] for r in others if r[1]]
            if held:
                raise invalid(
                    f"The principal is attached exclusively to thing {held[0]}; detach it "
                    "there first."
                )
            conn.execute(
                "INSERT INTO iot_thing_principals (account_id, thing_name, certificate_id, "
                "exclusive, created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                "exclusive = excluded.exclusive",
                (account_id, name, certificate_id, int(exclusive), now),
            )

    def detach_principal(self, account_id: str, name: str, certificate_id: str) -> None:
        """Detach; detaching what is not attached is no error, but the thing must exist."""
        check_thing_name(name)
        with self._write() as conn:
            self._require_thing(conn, account_id, name)
            conn.execute(
                "DELETE FROM iot_thing_principals WHERE account_id = ? AND thing_name = ? AND "
                "certificate_id = ?",
                (account_id, name, certificate_id),
            )


def thing_of(conn: sqlite3.Connection, account_id: str, name: str) -> Thing | None:
    """The account's thing of that name with its attributes, or None."""
    row = conn.execute(
        "SELECT * FROM iot_things WHERE account_id = ? AND thing_name = ?",
        (account_id, name),
    ).fetchone()
    if row is None:
        return None
    return thing_row(row, attributes_of(conn, account_id, [name]).get(name, {}))


def attributes_of(
    conn: sqlite3.Connection, account_id: str, names: list[str]
) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    if not names:
        return found
    marks = ",".join("?" * len(names))
    rows = conn.execute(
        f"SELECT thing_name, name, value FROM iot_thing_attributes WHERE account_id = ? "
        f"AND thing_name IN ({marks}) ORDER BY thing_name, name",
        (account_id, *names),
    )
    for thing, name, value in rows:
        found.setdefault(thing, {})[name] = value
    return found


def _write_attributes(
    conn: sqlite3.Connection, account_id: str, name: str, attributes: Mapping[str, str]
) -> None:
    conn.executemany(
        "INSERT INTO iot_thing_attributes (account_id, thing_name, name, value) "
        "VALUES (?, ?, ?, ?)",
        [(account_id, name, k, v) for k, v in attributes.items()],
    )
