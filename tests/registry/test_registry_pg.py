"""The registry's operations (``test_registry.py``, every test that takes the ``reg`` or
``store`` fixture) run again on the PostgreSQL registry (registry/pg_store.py, a real
PostgreSQL: tests/cluster/pgserver.py), so that every statement the registry writes with goes
through the adapter (registry/pg_sql.py); plus the adapter's own translations, and the
PostgreSQL schema compared with the SQLite one column by column."""

from __future__ import annotations

import inspect
import json
import queue
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))
import pgserver
import test_registry

from thinghub.registry import RegistryStore
from thinghub.registry.pg_schema import REPLICATED
from thinghub.registry.pg_sql import to_pg

pytestmark = pytest.mark.thinghub_only

_SHARED = ("reg", "store", "acct")
# SQLite's own: the meta table stays in each node's local file on PostgreSQL (pg_store.py).
_SQLITE_ONLY = {"test_store_write_rolls_back_on_error"}

# Every test of test_registry.py that runs on a store, collected here again with the store
# fixture below.
for _name, _test in inspect.getmembers(test_registry, inspect.isfunction):
    if (
        _name.startswith("test_")
        and _name not in _SQLITE_ONLY
        and any(p in inspect.signature(_test).parameters for p in _SHARED)
    ):
        globals()[_name] = _test

clock = test_registry.clock
reg = test_registry.reg
acct = test_registry.acct


@pytest.fixture(scope="module")
def pg() -> Iterator[pgserver.PgServer]:
    if not pgserver.available():
        pytest.skip(f"PostgreSQL 15 is not installed in {pgserver.BIN}")
    server = pgserver.PgServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def store(pg: pgserver.PgServer, tmp_path: Path) -> Iterator[RegistryStore]:
    from thinghub.registry.pg_store import PgRegistryStore

    s = PgRegistryStore(pg.url, tmp_path / "replica.db", node="test")
    yield s
    s.close()
    tables = ", ".join([*REPLICATED, "shadows"])
    pg.psql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE", as_hub=True)


# ===== the adapter ============================================================================


_DIALECT = [
    (
        "SELECT 1 FROM t WHERE a = ? AND b IS ?",
        "SELECT 1 FROM t WHERE a = %s AND b IS NOT DISTINCT FROM %s",
    ),
    ("SELECT 1 FROM t WHERE b IS NOT ?", "SELECT 1 FROM t WHERE b IS DISTINCT FROM %s"),
    (
        "SELECT '?', 'a%b' FROM t WHERE c LIKE '%' || ?",
        "SELECT '?', 'a%%b' FROM t WHERE c LIKE '%%' || %s",
    ),
    (
        "INSERT OR IGNORE INTO accounts (account_id) VALUES (?)",
        "INSERT INTO accounts (account_id) VALUES (%s) ON CONFLICT DO NOTHING",
    ),
    (
        "INSERT INTO devices (iot_id) VALUES (?)",
        "INSERT INTO devices (iot_id) VALUES (%s) RETURNING seq",
    ),
    (
        "DELETE FROM devices WHERE apply_id IN (SELECT value FROM json_each(?))",
        "DELETE FROM devices WHERE apply_id IN "
        "(SELECT value::bigint FROM json_array_elements_text(%s::json) AS value)",
    ),
    (
        "INSERT INTO iot_thing_principals (account_id, thing_name, certificate_id) "
        "VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET exclusive = excluded.exclusive",
        "INSERT INTO iot_thing_principals (account_id, thing_name, certificate_id) "
        "VALUES (%s, %s, %s) ON CONFLICT (account_id, thing_name, certificate_id) "
        "DO UPDATE SET exclusive = excluded.exclusive",
    ),
]


@pytest.mark.parametrize(("sqlite", "postgres"), _DIALECT)
def test_statements_in_postgresql_dialect(sqlite: str, postgres: str) -> None:
    assert to_pg(sqlite) == postgres


def test_statements_it_cannot_carry_are_refused() -> None:
    with pytest.raises(ValueError, match="no PostgreSQL form"):
        to_pg("SELECT json_extract(x, '$.a') FROM t")
    with pytest.raises(ValueError, match="no PostgreSQL form"):
        to_pg("INSERT OR REPLACE INTO accounts (account_id) VALUES (?)")


# ===== the schema =============================================================================


def test_postgresql_schema_has_the_sqlite_columns(pg: pgserver.PgServer, tmp_path: Path) -> None:
    """Each copied table has the SQLite schema's columns in PostgreSQL (the copy selects
    them by name), and the shadows table too."""
    from thinghub.registry.pg_store import PgRegistryStore

    PgRegistryStore(pg.url, tmp_path / "replica.db", node="test").close()
    local = RegistryStore.in_memory()
    try:
        for table in [*REPLICATED, "shadows"]:
            with local.read() as conn:
                wanted = {str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")}
            found = pg.psql(
                "SELECT string_agg(column_name, ',') FROM information_schema.columns "
                f"WHERE table_name = '{table}'",
                as_hub=True,
            )
            assert wanted <= set(found.split(",")), table
    finally:
        local.close()


def test_a_newer_postgresql_schema_is_refused(pg: pgserver.PgServer, tmp_path: Path) -> None:
    from thinghub.registry import SchemaVersionError
    from thinghub.registry.pg_schema import PG_MIGRATIONS
    from thinghub.registry.pg_store import PgRegistryStore

    PgRegistryStore(pg.url, tmp_path / "a.db", node="test").close()
    pg.psql(f"UPDATE thinghub_schema SET version = {len(PG_MIGRATIONS) + 1}", as_hub=True)
    try:
        with pytest.raises(SchemaVersionError, match="newer ThingHub"):
            PgRegistryStore(pg.url, tmp_path / "b.db", node="test")
    finally:
        pg.psql(f"UPDATE thinghub_schema SET version = {len(PG_MIGRATIONS)}", as_hub=True)


# ===== identities =============================================================================


def test_identities_are_written_to_postgresql_and_read_from_the_copy(
    store: RegistryStore, tmp_path: Path
) -> None:
    """The AWS IoT identity writes (identity/: things, certificates, policies) run on
    PostgreSQL through the adapter, and their reads see them in the node's copy."""
    from thinghub.identity.ca import HubCA
    from thinghub.identity.models import CertificateStatus
    from thinghub.identity.service import IdentityService
    from thinghub.registry import Registry

    account = Registry(store).create_account("aws").account_id
    identity = IdentityService(store, HubCA.load_or_create(tmp_path))
    identity.things.create(account, "lamp", attributes={"room": "hall"})
    identity.things.update(account, "lamp", attributes={"floor": "1"}, merge=True)
    certificate, _keys = identity.certificates.create_keys_and_certificate(account, active=True)
    cert_id = certificate.certificate_id
    identity.things.attach_principal(account, "lamp", cert_id)
    document = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}],
    }
    text = json.dumps(document)
    identity.policies.create(account, "connect", text)
    identity.policies.create_version(account, "connect", text, set_default=True)
    identity.policies.attach(account, "connect", cert_id)

    thing = identity.reader.thing(account, "lamp")
    assert thing is not None and dict(thing.attributes) == {"room": "hall", "floor": "1"}
    assert [(p.name, p.version_id) for p in identity.reader.policies(account, cert_id)] == [
        ("connect", 2)
    ]
    signed = identity.reader.sign_in(cert_id)
    assert signed is not None
    assert identity.certificates.update(account, cert_id, CertificateStatus.INACTIVE)
    identity.policies.detach(account, "connect", cert_id)
    identity.things.detach_principal(account, "lamp", cert_id)
    identity.certificates.delete(account, cert_id)
    assert identity.reader.certificate(cert_id) is None
    assert identity.things.delete(account, "lamp")
    assert identity.reader.thing(account, "lamp") is None


def test_bulk_import_and_its_withdrawal_run_on_postgresql(store: RegistryStore) -> None:
    """``thinghub device import`` (registry/bulk.py): its batches, its name checks over a
    JSON array, and its undo by ApplyId."""
    from thinghub.registry import NodeType, Registry
    from thinghub.registry.bulk import DeviceRow, register_devices, withdraw

    registry = Registry(store)
    account = registry.create_account("bulk").account_id
    key = registry.create_product(account, "meters", NodeType.DEVICE).product_key
    rows = [DeviceRow(i + 2, key, f"meter-{i}") for i in range(30)]
    result = register_devices(registry, account, rows[:10], batch_size=4)
    assert len(result.registered) == 10
    again = register_devices(registry, account, rows, skip_existing=True, batch_size=7)
    assert len(again.skipped) == 10 and len(again.registered) == 20
    assert registry.lookup_sign_in(key, "meter-29") is not None
    withdraw(registry, again)
    assert registry.lookup_sign_in(key, "meter-29") is None
    assert registry.lookup_sign_in(key, "meter-0") is not None


def test_another_writers_changes_reach_the_copy_and_are_told(
    store: RegistryStore, pg: pgserver.PgServer, tmp_path: Path
) -> None:
    """A second store (another node) hears the first one's writes (LISTEN/NOTIFY): a device
    disabled (its right to sign in: ``data_version`` moves), its presence (no reason to look
    again), a certificate revoked (its connections are to be closed)."""
    from thinghub.identity.ca import HubCA
    from thinghub.identity.models import CertificateStatus
    from thinghub.identity.service import IdentityService
    from thinghub.registry import NodeType, Registry
    from thinghub.registry.pg_store import PgRegistryStore
    from thinghub.registry.store import RegistryChange

    other = PgRegistryStore(pg.url, tmp_path / "other.db", node="other")
    heard: queue.SimpleQueue[RegistryChange] = queue.SimpleQueue()
    other.add_change_listener(heard.put)
    other.start_listening()
    try:
        here, there = Registry(store), Registry(other)
        account = here.create_account("acme").account_id
        key = here.create_product(account, "lamps", NodeType.DEVICE).product_key
        device = here.register_device(account, key, "lamp-1")

        def told(check: Callable[[RegistryChange], bool]) -> RegistryChange:
            deadline = time.monotonic() + 5
            while True:
                change = heard.get(timeout=max(0.0, deadline - time.monotonic()))
                if check(change):
                    return change

        told(lambda c: bool(c.credentials) and (key, "lamp-1") in c.credentials)
        assert there.lookup_sign_in(key, "lamp-1") is not None
        version = other.data_version()
        here.set_device_online(key, "lamp-1", ip_address="10.0.0.1")
        change = told(lambda c: bool(c.devices) and (key, "lamp-1") in c.devices)
        assert not change.credentials  # presence: the sign-in cache keeps the device
        assert other.data_version() == version
        assert there.get_device(account, iot_id=device.iot_id).status.name == "ONLINE"
        here.disable_device(account, iot_id=device.iot_id)
        told(lambda c: bool(c.credentials) and (key, "lamp-1") in c.credentials)
        assert other.data_version() > version
        assert there.lookup_sign_in(key, "lamp-1").status.name == "DISABLE"

        identity = IdentityService(store, HubCA.load_or_create(tmp_path / "ca"))
        certificate, _keys = identity.certificates.create_keys_and_certificate(account, active=True)
        told(lambda c: "iot_certificates" in c.tables)  # in the copy: it could sign in there
        identity.certificates.update(account, certificate.certificate_id, CertificateStatus.REVOKED)
        told(lambda c: (account, certificate.certificate_id) in c.certificates)
    finally:
        other.close()
