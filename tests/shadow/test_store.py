"""Shadows in registry.db (thinghub/shadow/store.py) and the registry migration that adds
their table: an older registry.db is migrated in place, nothing in it is lost."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from thinghub.registry.registry import Registry
from thinghub.registry.store import FILE_NAME, MIGRATIONS, RegistryStore
from thinghub.shadow.document import Shadow
from thinghub.shadow.names import CLASSIC
from thinghub.shadow.store import SCHEMA_VERSION, ShadowKey, ShadowStore, ShadowStoreError

DOC = Shadow({"desired": {"a": 1}}, {"desired": {"a": {"timestamp": 5}}}, 3)


@pytest.fixture
def store(tmp_path: Path) -> ShadowStore:
    RegistryStore.open(tmp_path).close()
    return ShadowStore.open(tmp_path)


def test_a_version_1_registry_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    old = RegistryStore(path, migrations=MIGRATIONS[:1])
    account = Registry(old).create_account("before-shadows")
    old.close()
    with pytest.raises(ShadowStoreError, match="schema version 1"):
        ShadowStore(path)
    migrated = RegistryStore(path)
    assert migrated.schema_version == len(MIGRATIONS) >= SCHEMA_VERSION
    assert Registry(migrated).get_account(account.account_id).name == "before-shadows"
    migrated.close()
    shadows = ShadowStore(path)
    key = ShadowKey(account.account_id, "t1", CLASSIC)
    with shadows.transaction():
        shadows.save(key, DOC, 10)
    shadows.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM shadows").fetchone()[0] == 1
    conn.close()


def test_save_load_and_survive_a_reopen(tmp_path: Path, store: ShadowStore) -> None:
    key = ShadowKey("acct", "thing", CLASSIC)
    assert store.load(key) is None
    with store.transaction():
        store.save(key, DOC, 10)
    store.close()
    again = ShadowStore.open(tmp_path)
    stored = again.load(key)
    assert stored is not None
    assert (stored.shadow, stored.version, stored.updated_at) == (DOC, 3, 10)
    again.close()


def test_delete_keeps_a_tombstone_with_the_version_until_purged(store: ShadowStore) -> None:
    key = ShadowKey("acct", "thing", "named")
    with store.transaction():
        store.save(key, DOC, 10)
        store.delete(key, 3, 20)
    stored = store.load(key)
    assert stored is not None
    assert (stored.shadow, stored.version, stored.updated_at) == (None, 3, 20)
    with store.transaction():
        assert store.purge_tombstones(20) == 0  # deleted at 20: not before 20
        assert store.purge_tombstones(21) == 1
    assert store.load(key) is None


def test_list_names_is_ordered_paged_per_thing_and_account(store: ShadowStore) -> None:
    with store.transaction():
        for name in ("b", "a", "c", "$x"):
            store.save(ShadowKey("acct", "thing", name), DOC, 1)
        store.save(ShadowKey("acct", "thing", CLASSIC), DOC, 1)
        store.save(ShadowKey("acct", "other-thing", "z"), DOC, 1)
        store.save(ShadowKey("other-acct", "thing", "y"), DOC, 1)
        store.save(ShadowKey("acct", "thing", "d"), DOC, 1)
        store.delete(ShadowKey("acct", "thing", "d"), 3, 2)
    assert store.list_names("acct", "thing", None, 10) == ["$x", "a", "b", "c"]
    assert store.list_names("acct", "thing", None, 2) == ["$x", "a"]
    assert store.list_names("acct", "thing", "a", 10) == ["b", "c"]
    assert store.list_names("other-acct", "thing", None, 10) == ["y"]
    assert store.list_names("nobody", "thing", None, 10) == []


def test_a_failed_savepoint_undoes_only_itself(store: ShadowStore) -> None:
    kept, undone = ShadowKey("a", "t", "kept"), ShadowKey("a", "t", "undone")
    with store.transaction():
        store.save(kept, DOC, 1)
        with pytest.raises(RuntimeError), store.savepoint():
            store.save(undone, DOC, 1)
            raise RuntimeError("this request failed")
    assert store.load(kept) is not None
    assert store.load(undone) is None
