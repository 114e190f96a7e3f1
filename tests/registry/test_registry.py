"""thinghub.registry: the store, tenancy, every operation and every validation error."""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from thinghub.registry import (
    ConflictError,
    DeviceStatus,
    InvalidParameterError,
    NodeType,
    NotFoundError,
    Operation,
    QuotaExceededError,
    Registry,
    RegistryError,
    RegistryStore,
    SchemaVersionError,
)
from thinghub.registry.store import FILE_NAME, MIGRATIONS


class FakeClock:
    def __init__(self, now: int = 1_700_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RegistryStore]:
    s = RegistryStore.open(tmp_path) if request.param == "file" else RegistryStore.in_memory()
    yield s
    s.close()


@pytest.fixture
def reg(store: RegistryStore, clock: FakeClock) -> Registry:
    return Registry(store, clock=clock)


@pytest.fixture
def acct(reg: Registry) -> str:
    return reg.create_account("alice").account_id


def code_of(excinfo: pytest.ExceptionInfo[RegistryError]) -> str:
    return excinfo.value.code


# ===== store ==================================================================================


def test_store_file_is_wal_with_schema_version(tmp_path: Path) -> None:
    store = RegistryStore.open(tmp_path / "data")
    try:
        assert (tmp_path / "data" / FILE_NAME).exists()
        assert store.schema_version == len(MIGRATIONS)
        with store.read() as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    finally:
        store.close()


def test_store_refuses_newer_schema_and_leaves_file_alone(tmp_path: Path) -> None:
    RegistryStore.open(tmp_path).close()
    path = tmp_path / FILE_NAME
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaVersionError, match="newer ThingHub"):
        RegistryStore.open(tmp_path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1
    conn.close()


def test_store_applies_pending_migrations_in_order(tmp_path: Path) -> None:
    RegistryStore(tmp_path / "r.db", migrations=MIGRATIONS).close()
    extra = (*MIGRATIONS, ("CREATE TABLE later (x INTEGER)",))
    store = RegistryStore(tmp_path / "r.db", migrations=extra)
    try:
        assert store.schema_version == len(extra)
        with store.read() as conn:
            conn.execute("SELECT x FROM later").fetchall()
    finally:
        store.close()


def test_store_failed_migration_keeps_previous_version(tmp_path: Path) -> None:
    RegistryStore(tmp_path / "r.db").close()
    broken = (*MIGRATIONS, ("CREATE TABLE ok (x)", "THIS IS NOT SQL"))
    with pytest.raises(sqlite3.OperationalError):
        RegistryStore(tmp_path / "r.db", migrations=broken)
    store = RegistryStore(tmp_path / "r.db")
    try:
        assert store.schema_version == len(MIGRATIONS)
        with store.read() as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert "ok" not in tables
    finally:
        store.close()


def test_store_write_rolls_back_on_error(store: RegistryStore) -> None:
    with pytest.raises(RuntimeError), store.write() as conn:
        conn.execute("INSERT INTO meta (key, value) VALUES ('k', 1)")
        raise RuntimeError
    assert store.get_meta("k") is None
    store.set_meta("k", 5)
    store.set_meta("k", 6)
    assert store.get_meta("k") == 6


def test_reopen_persists_everything(tmp_path: Path, clock: FakeClock) -> None:
    store = RegistryStore.open(tmp_path)
    reg = Registry(store, clock=clock)
    account = reg.create_account("alice")
    key = reg.create_access_key(account.account_id, description="ci")
    instance = reg.create_instance(account.account_id, "enterprise")
    product = reg.create_product(account.account_id, "Lamp_01", 0)
    in_instance = reg.create_product(
        account.account_id, "Meter_01", 1, instance_id=instance.instance_id
    )
    device = reg.register_device(account.account_id, product.product_key, "lamp-1")
    reg.set_device_online(product.product_key, "lamp-1", ip_address="10.0.0.7")
    topic = reg.create_topic_category(account.account_id, product.product_key, "data/+", "SUB")
    apply = reg.batch_register(account.account_id, product.product_key, count=3)
    store.save_id_lease(1234)
    store.close()

    store = RegistryStore.open(tmp_path)
    reg = Registry(store, clock=clock)
    try:
        assert reg.get_account(account.account_id) == account
        assert reg.lookup_access_key(key.access_key_id) == key
        assert reg.list_instances(account.account_id) == [instance]
        again = reg.query_product(account.account_id, product.product_key)
        assert again.product_secret == product.product_secret
        assert again.device_count == 4
        assert (
            reg.query_product(
                account.account_id, in_instance.product_key, instance_id=instance.instance_id
            ).node_type
            is NodeType.GATEWAY
        )
        found = reg.lookup_device(product.product_key, "lamp-1")
        assert found is not None
        assert found.device_secret == device.device_secret
        assert found.status is DeviceStatus.ONLINE
        assert found.ip_address == "10.0.0.7"
        assert topic in reg.list_topic_categories(account.account_id, product.product_key)
        page = reg.query_page_by_apply_id(account.account_id, apply.apply_id, page_size=50)
        assert page.total == 3
        assert store.load_id_lease() == 1234
    finally:
        store.close()


def test_registry_is_usable_from_threads(reg: Registry, acct: str) -> None:
    product = reg.create_product(acct, "Threaded", 0)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                reg.register_device(acct, product.product_key, f"t{n}-dev{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert reg.query_product(acct, product.product_key).device_count == 80


# ===== accounts and access keys ===============================================================


def test_access_keys(reg: Registry, acct: str, clock: FakeClock) -> None:
    key = reg.create_access_key(acct, description="app")
    assert re.fullmatch(r"LTAI[A-Za-z0-9]{20}", key.access_key_id)
    assert re.fullmatch(r"[A-Za-z0-9]{30}", key.secret)
    assert key.enabled and key.account_id == acct and key.created_at == clock.now
    second = reg.create_access_key(acct)
    assert reg.list_access_keys(acct) == [key, second] or reg.list_access_keys(acct) == sorted(
        [key, second], key=lambda k: k.access_key_id
    )
    disabled = reg.disable_access_key(key.access_key_id)
    assert not disabled.enabled
    assert reg.lookup_access_key(key.access_key_id) == disabled  # still found: "Inactive"
    assert reg.enable_access_key(key.access_key_id).enabled
    assert reg.lookup_access_key("LTAInope") is None
    with pytest.raises(NotFoundError) as exc:
        reg.disable_access_key("LTAInope")
    assert code_of(exc) == "InvalidAccessKeyId.NotFound"
    with pytest.raises(NotFoundError) as exc:
        reg.create_access_key("no-such-account")
    assert code_of(exc) == "thinghub.NotExistedAccount"


def test_accounts(reg: Registry) -> None:
    a = reg.create_account("a")
    assert re.fullmatch(r"[1-9]\d{15}", a.account_id)
    b = reg.create_account("b", account_id="fixed")
    assert {x.account_id for x in reg.list_accounts()} == {a.account_id, "fixed"}
    assert reg.get_account("fixed") == b
    with pytest.raises(ConflictError):
        reg.create_account("again", account_id="fixed")
    with pytest.raises(InvalidParameterError):
        reg.create_account("")
    with pytest.raises(NotFoundError):
        reg.get_account("nobody")


def test_ensure_root_key_is_idempotent_and_takes_new_secret(reg: Registry) -> None:
    first = reg.ensure_root_key("rootid", "s3cret")
    assert first.account_id == "root" and first.enabled
    assert reg.ensure_root_key("rootid", "s3cret") == first
    reg.disable_access_key("rootid")
    changed = reg.ensure_root_key("rootid", "other")
    assert changed.secret == "other" and changed.enabled
    assert len(reg.list_access_keys("root")) == 1
    assert reg.ensure_root_account().account_id == "root"


def test_ensure_root_key_refuses_a_key_of_another_account(reg: Registry, acct: str) -> None:
    key = reg.create_access_key(acct)
    with pytest.raises(ConflictError) as exc:
        reg.ensure_root_key(key.access_key_id, "x")
    assert code_of(exc) == "thinghub.AccessKeyIdInUse"
    for bad_id, bad_secret in [("", "x"), ("has space", "x"), ("ok", ""), ("k" * 129, "x")]:
        with pytest.raises(InvalidParameterError):
            reg.ensure_root_key(bad_id, bad_secret)


# ===== products ===============================================================================


def test_create_product_generates_keys_and_default_topics(
    reg: Registry, acct: str, clock: FakeClock
) -> None:
    product = reg.create_product(acct, "Lamp_01", "0", description="a lamp")
    assert re.fullmatch(r"a1[A-Za-z0-9]{9}", product.product_key)
    assert re.fullmatch(r"[A-Za-z0-9]{16}", product.product_secret)
    assert product.node_type is NodeType.DEVICE
    assert (product.data_format, product.auth_type, product.aliyun_commodity_code) == (
        1,
        "secret",
        "iothub",
    )
    assert product.created_at == clock.now and product.device_count == 0
    topics = reg.list_topic_categories(acct, product.product_key)
    pk = product.product_key
    assert [(t.template, t.operation, t.operation.wire_code) for t in topics] == [
        (f"/{pk}/${{deviceName}}/user/update", Operation.PUB, "0"),
        (f"/{pk}/${{deviceName}}/user/update/error", Operation.PUB, "0"),
        (f"/{pk}/${{deviceName}}/user/get", Operation.SUB, "1"),
    ]


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("", "iot.prod.NullProductName"),
        (None, "iot.prod.NullProductName"),
        ("abc", "iot.prod.InvalidFormattedProductName"),  # 3 < 4
        ("a" * 31, "iot.prod.InvalidFormattedProductName"),
        ("lamp-01", "iot.prod.InvalidFormattedProductName"),  # '-' not allowed
        ("lamp 01", "iot.prod.InvalidFormattedProductName"),
        ("灯" * 16, "iot.prod.InvalidFormattedProductName"),  # 32 weighted
    ],
)
def test_product_name_rules(reg: Registry, acct: str, name: str | None, code: str) -> None:
    with pytest.raises(InvalidParameterError) as exc:
        reg.create_product(acct, name, 0)
    assert code_of(exc) == code


@pytest.mark.parametrize("name", ["abcd", "a" * 30, "灯泡", "灯" * 15, "Lamp_灯1"])
def test_product_name_accepted(reg: Registry, acct: str, name: str) -> None:
    assert reg.create_product(acct, name, 1).name == name


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"node_type": 2}, "iot.prod.InvalidNodeType"),
        ({"node_type": None}, "iot.prod.InvalidNodeType"),
        ({"node_type": "x"}, "iot.prod.InvalidNodeType"),
        ({"data_format": 3}, "iot.common.InvalidFormattedParameter"),
        ({"data_format": "json"}, "iot.common.InvalidFormattedParameter"),
        ({"auth_type": "password"}, "iot.common.InvalidFormattedParameter"),
        ({"aliyun_commodity_code": "gold"}, "iot.prod.InvalidAliyunCommodityCode"),
        ({"description": "d" * 101}, "iot.prod.LongProductDesc"),
        ({"instance_id": "iot-nope"}, "iot.Sre.IotInstanceNotFound"),
    ],
)
def test_create_product_parameter_errors(
    reg: Registry, acct: str, kwargs: dict[str, object], code: str
) -> None:
    args: dict[str, object] = {"node_type": 0, **kwargs}
    node_type = args.pop("node_type")
    with pytest.raises(RegistryError) as exc:
        reg.create_product(acct, "Valid_1", node_type, **args)  # type: ignore[arg-type]
    assert code_of(exc) == code
    assert reg.list_products(acct).total == 0


def test_product_name_unique_per_account(reg: Registry, acct: str) -> None:
    reg.create_product(acct, "Same_name", 0)
    with pytest.raises(ConflictError) as exc:
        reg.create_product(acct, "Same_name", 0)
    assert code_of(exc) == "iot.prod.AlreadyExistedProductName"
    other = reg.create_account("bob").account_id
    reg.create_product(other, "Same_name", 0)  # another account may use it


def test_product_count_limit(store: RegistryStore, clock: FakeClock) -> None:
    reg = Registry(store, clock=clock, max_products_per_account=2)
    acct = reg.create_account("a").account_id
    reg.create_product(acct, "One_1", 0)
    reg.create_product(acct, "Two_2", 0)
    with pytest.raises(QuotaExceededError) as exc:
        reg.create_product(acct, "Three", 0)
    assert code_of(exc) == "iot.prod.ProductCountExceedMax"


def test_list_products_pages_newest_first(reg: Registry, acct: str) -> None:
    keys = [reg.create_product(acct, f"Prod_{i}", 0).product_key for i in range(5)]
    reg.create_product(acct, "Senior", 0, aliyun_commodity_code="iothub_senior")
    page = reg.list_products(acct, page=1, page_size=4)
    assert page.total == 6 and page.page_count == 2
    assert [p.name for p in page.items] == ["Senior", "Prod_4", "Prod_3", "Prod_2"]
    second = reg.list_products(acct, page="2", page_size="4")
    assert [p.product_key for p in second.items] == keys[1::-1]
    assert reg.list_products(acct, page=3, page_size=4).items == ()
    only = reg.list_products(acct, aliyun_commodity_code="iothub_senior")
    assert [p.name for p in only.items] == ["Senior"]
    with pytest.raises(InvalidParameterError) as exc:
        reg.list_products(acct, aliyun_commodity_code="gold")
    assert code_of(exc) == "iot.prod.InvalidAliyunCommodityCode"


@pytest.mark.parametrize(
    ("page", "size"), [(0, 10), (1, 0), (1, 201), ("x", 10), (1, "ten"), (-1, 5)]
)
def test_list_products_page_errors(reg: Registry, acct: str, page: object, size: object) -> None:
    with pytest.raises(InvalidParameterError) as exc:
        reg.list_products(acct, page=page, page_size=size)  # type: ignore[arg-type]
    assert code_of(exc) == "iot.common.InvalidPageParams"


def test_update_product(reg: Registry, acct: str) -> None:
    product = reg.create_product(acct, "Before", 0, description="old")
    updated = reg.update_product(acct, product.product_key, name="After")
    assert (updated.name, updated.description) == ("After", "old")
    updated = reg.update_product(acct, product.product_key, name="After", description="new")
    assert updated.description == "new"
    reg.create_product(acct, "Taken", 0)
    with pytest.raises(ConflictError) as exc:
        reg.update_product(acct, product.product_key, name="Taken")
    assert code_of(exc) == "iot.prod.AlreadyExistedProductName"
    with pytest.raises(InvalidParameterError) as exc_0:
        reg.update_product(acct, product.product_key, name="x")
    assert code_of(exc_0) == "iot.prod.InvalidFormattedProductName"
    with pytest.raises(InvalidParameterError) as exc_1:
        reg.update_product(acct, product.product_key, name="Fine", description="d" * 101)
    assert code_of(exc_1) == "iot.prod.LongProductDesc"
    assert reg.query_product(acct, product.product_key).name == "After"


def test_delete_product(reg: Registry, acct: str) -> None:
    product = reg.create_product(acct, "Doomed", 0)
    reg.register_device(acct, product.product_key, "dev-1")
    with pytest.raises(ConflictError) as exc:
        reg.delete_product(acct, product.product_key)
    assert code_of(exc) == "iot.prod.ProductHasDevices"
    reg.delete_device(acct, product_key=product.product_key, device_name="dev-1")
    reg.delete_product(acct, product.product_key)
    with pytest.raises(NotFoundError) as exc_2:
        reg.query_product(acct, product.product_key)
    assert code_of(exc_2) == "iot.prod.NotExistedProduct"
    assert reg.topic_categories_for_product(product.product_key) == ()
    # The name is free again.
    reg.create_product(acct, "Doomed", 0)


@pytest.mark.parametrize(
    ("key", "code"),
    [
        ("", "iot.prod.NullProductKey"),
        (None, "iot.prod.NullProductKey"),
        ("a1/bad", "iot.prod.InvalidFormattedProductkey"),
        ("k" * 65, "iot.prod.InvalidFormattedProductkey"),
        ("a1NoSuchKey", "iot.prod.NotExistedProduct"),
    ],
)
def test_product_key_errors(reg: Registry, acct: str, key: str | None, code: str) -> None:
    with pytest.raises(RegistryError) as exc:
        reg.query_product(acct, key)
    assert code_of(exc) == code


# ===== tenancy ================================================================================


def test_tenancy_products_devices_topics_are_invisible_to_other_accounts(reg: Registry) -> None:
    a = reg.create_account("a").account_id
    b = reg.create_account("b").account_id
    product = reg.create_product(a, "Secret_lamp", 0)
    pk = product.product_key
    device = reg.register_device(a, pk, "lamp-1")
    topic = reg.create_topic_category(a, pk, "cmd", "SUB")
    apply = reg.batch_register(a, pk, count=1)

    def not_found(code: str, call: object) -> None:
        assert callable(call)
        with pytest.raises(NotFoundError) as exc:
            call()
        assert code_of(exc) == code

    prod = "iot.prod.NotExistedProduct"
    dev = "iot.device.NotExistedDevice"
    top = "iot.messagebroker.TopicTemplateIsNotFound"
    not_found(prod, lambda: reg.query_product(b, pk))
    not_found(prod, lambda: reg.update_product(b, pk, name="Stolen"))
    not_found(prod, lambda: reg.delete_product(b, pk))
    not_found(prod, lambda: reg.register_device(b, pk, "intruder"))
    not_found(prod, lambda: reg.batch_register(b, pk, count=2))
    not_found(prod, lambda: reg.list_devices(b, pk))
    not_found(prod, lambda: reg.list_topic_categories(b, pk))
    not_found(prod, lambda: reg.create_topic_category(b, pk, "x", "SUB"))
    not_found(prod, lambda: reg.get_device(b, product_key=pk, device_name="lamp-1"))
    not_found(dev, lambda: reg.get_device(b, iot_id=device.iot_id))
    not_found(dev, lambda: reg.query_device_detail(b, iot_id=device.iot_id))
    not_found(dev, lambda: reg.delete_device(b, iot_id=device.iot_id))
    not_found(dev, lambda: reg.disable_device(b, iot_id=device.iot_id))
    not_found(dev, lambda: reg.enable_device(b, iot_id=device.iot_id))
    not_found(dev, lambda: reg.batch_get_device_states(b, iot_ids=[device.iot_id]))
    not_found(top, lambda: reg.get_topic_category(b, topic.id))
    not_found(top, lambda: reg.update_topic_category(b, topic.id, "y", "SUB"))
    not_found(top, lambda: reg.delete_topic_category(b, topic.id))
    not_found(
        "iot.device.DeviceApplyIsNotFound",
        lambda: reg.query_page_by_apply_id(b, apply.apply_id),
    )
    not_found("iot.device.DeviceApplyIsNotFound", lambda: reg.query_apply(b, apply.apply_id))
    assert reg.list_products(b).total == 0
    # Nothing changed for A.
    assert reg.query_product(a, pk).name == "Secret_lamp"
    assert reg.get_device(a, iot_id=device.iot_id).status is DeviceStatus.UNACTIVE
    assert reg.query_product(a, pk).device_count == 2


def test_tenancy_instances(reg: Registry) -> None:
    a = reg.create_account("a").account_id
    b = reg.create_account("b").account_id
    inst = reg.create_instance(a, "ent").instance_id
    assert re.fullmatch(r"iot-[a-z0-9]{12}", inst)
    in_inst = reg.create_product(a, "In_instance", 0, instance_id=inst)
    public = reg.create_product(a, "Public_one", 0)
    # Another instance of the same account, or no instance: not found.
    with pytest.raises(NotFoundError) as exc:
        reg.query_product(a, in_inst.product_key)
    assert code_of(exc) == "iot.prod.NotExistedProduct"
    with pytest.raises(NotFoundError):
        reg.query_product(a, public.product_key, instance_id=inst)
    assert [p.name for p in reg.list_products(a, instance_id=inst).items] == ["In_instance"]
    assert [p.name for p in reg.list_products(a).items] == ["Public_one"]
    # Another account's instance id is an unknown instance.
    with pytest.raises(NotFoundError) as exc:
        reg.list_products(b, instance_id=inst)
    assert code_of(exc) == "iot.Sre.IotInstanceNotFound"
    device = reg.register_device(a, in_inst.product_key, "inst-dev", instance_id=inst)
    assert device.instance_id == inst
    with pytest.raises(NotFoundError):
        reg.get_device(a, iot_id=device.iot_id)
    assert reg.get_device(a, iot_id=device.iot_id, instance_id=inst) == device


# ===== devices ================================================================================


def test_register_device(reg: Registry, acct: str, clock: FakeClock) -> None:
    product = reg.create_product(acct, "Lamp_01", 0)
    device = reg.register_device(acct, product.product_key, "lamp:1@home.a_b-c", nickname="灯泡1")
    assert device.device_name == "lamp:1@home.a_b-c"
    assert re.fullmatch(r"[A-Za-z0-9]{32}", device.device_secret)
    assert re.fullmatch(r"[A-Za-z0-9]{20}0010[0-9a-f]{2}", device.iot_id)
    assert device.status is DeviceStatus.UNACTIVE
    assert (device.created_at, device.activated_at, device.last_online_at) == (
        clock.now,
        None,
        None,
    )
    assert device.nickname == "灯泡1" and device.account_id == acct
    generated = reg.register_device(acct, product.product_key)
    assert re.fullmatch(r"[A-Za-z0-9]{20}", generated.device_name)
    with pytest.raises(ConflictError) as exc:
        reg.register_device(acct, product.product_key, "lamp:1@home.a_b-c")
    assert code_of(exc) == "iot.device.AlreadyExistedDeviceName"
    # Same name in another product is fine.
    other = reg.create_product(acct, "Other_1", 0)
    reg.register_device(acct, other.product_key, "lamp:1@home.a_b-c")


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("abc", "iot.device.InvalidFormattedDeviceName"),
        ("a" * 33, "iot.device.InvalidFormattedDeviceName"),
        ("bad/name", "iot.device.InvalidFormattedDeviceName"),
        ("bad name", "iot.device.InvalidFormattedDeviceName"),
        ("plus+", "iot.device.InvalidFormattedDeviceName"),
        ("hash#", "iot.device.InvalidFormattedDeviceName"),
        ("amp&er", "iot.device.InvalidFormattedDeviceName"),
        ("设备名称", "iot.device.InvalidFormattedDeviceName"),
    ],
)
def test_device_name_rules(reg: Registry, acct: str, name: str, code: str) -> None:
    product = reg.create_product(acct, "Lamp_01", 0)
    with pytest.raises(InvalidParameterError) as exc:
        reg.register_device(acct, product.product_key, name)
    assert code_of(exc) == code
    assert reg.query_product(acct, product.product_key).device_count == 0


@pytest.mark.parametrize("nickname", ["abc", "n" * 65, "bad-nick", "灯"])
def test_nickname_rules(reg: Registry, acct: str, nickname: str) -> None:
    product = reg.create_product(acct, "Lamp_01", 0)
    with pytest.raises(InvalidParameterError) as exc:
        reg.register_device(acct, product.product_key, "dev-1", nickname=nickname)
    assert code_of(exc) == "iot.common.InvalidFormattedParameter"


def test_device_lookups_and_identity_errors(reg: Registry, acct: str) -> None:
    product = reg.create_product(acct, "Lamp_01", 0)
    pk = product.product_key
    device = reg.register_device(acct, pk, "lamp-1")
    detail = reg.query_device_detail(acct, product_key=pk, device_name="lamp-1")
    assert detail.device == device and detail.product.name == "Lamp_01"
    assert detail.product.device_count == 1
    assert reg.get_device(acct, iot_id=device.iot_id) == device
    # IotId wins over ProductKey + DeviceName.
    assert reg.get_device(acct, iot_id=device.iot_id, product_key=pk, device_name="zzzz") == device
    cases: list[tuple[dict[str, str | None], str]] = [
        ({}, "iot.common.InvalidFormattedParameter"),
        ({"product_key": pk}, "iot.device.NullDeviceName"),
        ({"device_name": "lamp-1"}, "iot.prod.NullProductKey"),
        ({"product_key": pk, "device_name": "x"}, "iot.device.InvalidFormattedDeviceName"),
        ({"product_key": pk, "device_name": "lamp-2"}, "iot.device.NotExistedDevice"),
        ({"iot_id": "bad/id"}, "iot.device.InvalidIoTId"),
        ({"iot_id": "NoSuchIotId0010ab"}, "iot.device.NotExistedDevice"),
    ]
    for kwargs, code in cases:
        with pytest.raises(RegistryError) as exc:
            reg.query_device_detail(acct, **kwargs)
        assert code_of(exc) == code, kwargs


def test_list_devices_pages(reg: Registry, acct: str) -> None:
    pk = reg.create_product(acct, "Lamp_01", 0).product_key
    for i in range(12):
        reg.register_device(acct, pk, f"dev-{i:02}")
    first = reg.list_devices(acct, pk)
    assert (first.total, first.page_size, first.page_count) == (12, 10, 2)
    assert first.items[0].device_name == "dev-11"
    second = reg.list_devices(acct, pk, page=2)
    assert [d.device_name for d in second.items] == ["dev-01", "dev-00"]
    with pytest.raises(InvalidParameterError) as exc:
        reg.list_devices(acct, pk, page_size=51)
    assert code_of(exc) == "iot.common.InvalidPageParams"


def test_delete_device(reg: Registry, acct: str) -> None:
    pk = reg.create_product(acct, "Lamp_01", 0).product_key
    device = reg.register_device(acct, pk, "lamp-1")
    assert reg.delete_device(acct, iot_id=device.iot_id) == device
    assert reg.lookup_device(pk, "lamp-1") is None
    with pytest.raises(NotFoundError) as exc:
        reg.delete_device(acct, iot_id=device.iot_id)
    assert code_of(exc) == "iot.device.NotExistedDevice"
    # The name can be registered again, with new secrets.
    again = reg.register_device(acct, pk, "lamp-1")
    assert again.iot_id != device.iot_id and again.device_secret != device.device_secret


def test_status_lifecycle(reg: Registry, acct: str, clock: FakeClock) -> None:
    pk = reg.create_product(acct, "Lamp_01", 0).product_key
    device = reg.register_device(acct, pk, "lamp-1")
    assert device.status is DeviceStatus.UNACTIVE
    clock.now += 1000
    online = reg.set_device_online(pk, "lamp-1", ip_address="192.0.2.1")
    assert online.status is DeviceStatus.ONLINE
    assert online.activated_at == online.last_online_at == online.status_changed_at == clock.now
    first_activation = clock.now
    clock.now += 1000
    assert reg.set_device_offline(pk, "lamp-1")
    assert not reg.set_device_offline(pk, "lamp-1")  # already offline
    off = reg.get_device(acct, iot_id=device.iot_id)
    assert off.status is DeviceStatus.OFFLINE and off.status_changed_at == clock.now
    clock.now += 1000
    again = reg.set_device_online(pk, "lamp-1")
    assert again.activated_at == first_activation and again.last_online_at == clock.now
    # Disable: offline, refused online, then enable back to OFFLINE.
    disabled = reg.disable_device(acct, product_key=pk, device_name="lamp-1")
    assert disabled.status is DeviceStatus.DISABLE
    assert reg.disable_device(acct, iot_id=device.iot_id).status is DeviceStatus.DISABLE
    with pytest.raises(ConflictError) as exc:
        reg.set_device_online(pk, "lamp-1")
    assert code_of(exc) == "thinghub.DeviceDisabled"
    enabled = reg.enable_device(acct, iot_id=device.iot_id)
    assert enabled.status is DeviceStatus.OFFLINE
    assert reg.enable_device(acct, iot_id=device.iot_id).status is DeviceStatus.OFFLINE
    # A never-activated device goes back to UNACTIVE.
    fresh = reg.register_device(acct, pk, "lamp-2")
    reg.disable_device(acct, iot_id=fresh.iot_id)
    assert reg.enable_device(acct, iot_id=fresh.iot_id).status is DeviceStatus.UNACTIVE
    with pytest.raises(NotFoundError):
        reg.set_device_online(pk, "ghost")


def test_offline_with_stale_epoch_is_ignored(reg: Registry, acct: str) -> None:
    pk = reg.create_product(acct, "Lamp_01", 0).product_key
    reg.register_device(acct, pk, "lamp-1")
    old = reg.set_device_online(pk, "lamp-1")
    new = reg.set_device_online(pk, "lamp-1")  # take-over by a second connection
    assert new.online_epoch == old.online_epoch + 1
    assert not reg.set_device_offline(pk, "lamp-1", online_epoch=old.online_epoch)
    assert reg.get_device(acct, product_key=pk, device_name="lamp-1").status.value == "ONLINE"
    assert reg.set_device_offline(pk, "lamp-1", online_epoch=new.online_epoch)


def test_mark_all_offline(reg: Registry, acct: str) -> None:
    pk = reg.create_product(acct, "Lamp_01", 0).product_key
    for name in ("dev-1", "dev-2", "dev-3"):
        reg.register_device(acct, pk, name)
    reg.set_device_online(pk, "dev-1")
    reg.set_device_online(pk, "dev-2")
    assert reg.mark_all_offline() == 2
    states = reg.batch_get_device_states(acct, product_key=pk, device_names=["dev-1", "dev-3"])
    assert [d.status for d in states] == [DeviceStatus.OFFLINE, DeviceStatus.UNACTIVE]


def test_batch_get_device_states(reg: Registry, acct: str) -> None:
    pk = reg.create_product(acct, "Lamp_01", 0).product_key
    devices = [reg.register_device(acct, pk, f"dev-{i}") for i in range(3)]
    reg.set_device_online(pk, "dev-2")
    by_name = reg.batch_get_device_states(acct, product_key=pk, device_names=["dev-2", "dev-0"])
    assert [(d.device_name, d.status) for d in by_name] == [
        ("dev-2", DeviceStatus.ONLINE),
        ("dev-0", DeviceStatus.UNACTIVE),
    ]
    by_id = reg.batch_get_device_states(acct, iot_ids=[d.iot_id for d in devices])
    assert [d.device_name for d in by_id] == ["dev-0", "dev-1", "dev-2"]
    with pytest.raises(NotFoundError) as exc:
        reg.batch_get_device_states(acct, product_key=pk, device_names=["dev-0", "dev-9"])
    assert code_of(exc) == "iot.device.NotExistedDevice"
    with pytest.raises(InvalidParameterError) as exc_3:
        reg.batch_get_device_states(acct, product_key=pk, device_names=[])
    assert code_of(exc_3) == "iot.device.NoneDeviceNameElement"
    with pytest.raises(InvalidParameterError) as exc_4:
        reg.batch_get_device_states(acct, product_key=pk, device_names=["dev-0"] * 51)
    assert code_of(exc_4) == "iot.common.InvalidFormattedParameter"


def test_lookup_device_is_global_for_sign_in(reg: Registry) -> None:
    a = reg.create_account("a").account_id
    pk = reg.create_product(a, "Lamp_01", 0).product_key
    device = reg.register_device(a, pk, "lamp-1")
    assert reg.lookup_device(pk, "lamp-1") == device
    assert reg.lookup_device(pk, "lamp-2") is None
    assert reg.lookup_device("a1nothere00", "lamp-1") is None


# ===== batch registration =====================================================================


def test_batch_register_and_query_page_by_apply_id(reg: Registry, acct: str) -> None:
    pk = reg.create_product(acct, "Lamp_01", 0).product_key
    apply = reg.batch_register(acct, pk, count="7")
    assert apply.count == 7 and apply.product_key == pk and apply.status == "CREATE_SUCCESS"
    assert reg.query_apply(acct, str(apply.apply_id)) == apply
    page1 = reg.query_page_by_apply_id(acct, apply.apply_id, page=1, page_size=5)
    page2 = reg.query_page_by_apply_id(acct, apply.apply_id, page=2, page_size=5)
    assert (page1.total, page1.page_count, len(page1.items), len(page2.items)) == (7, 2, 5, 2)
    names = [d.device_name for d in page1.items + page2.items]
    assert len(set(names)) == 7
    for applied in page1.items:
        device = reg.lookup_device(pk, applied.device_name)
        assert device is not None
        assert (device.iot_id, device.device_secret) == (applied.iot_id, applied.device_secret)
    named = reg.batch_register(acct, pk, device_names=["n-0001", "n-0002"])
    listed = reg.query_page_by_apply_id(acct, named.apply_id)
    assert [d.device_name for d in listed.items] == ["n-0001", "n-0002"]
    assert reg.query_product(acct, pk).device_count == 9


def test_batch_register_errors_change_nothing(store: RegistryStore, clock: FakeClock) -> None:
    reg = Registry(store, clock=clock, max_batch_register=10)
    acct = reg.create_account("a").account_id
    pk = reg.create_product(acct, "Lamp_01", 0).product_key
    reg.register_device(acct, pk, "taken")
    cases: list[tuple[dict[str, object], str]] = [
        ({"count": 0}, "iot.common.InvalidFormattedParameter"),
        ({"count": "many"}, "iot.common.InvalidFormattedParameter"),
        ({}, "iot.common.InvalidFormattedParameter"),
        ({"count": 11}, "iot.device.DeviceCountExceeded"),
        ({"device_names": []}, "iot.device.NoneDeviceNameElement"),
        ({"device_names": ["good-1", "bad"]}, "iot.device.InvalidFormattedDeviceName"),
        ({"device_names": ["good-1", "good-1"]}, "iot.device.AlreadyExistedDeviceName"),
        ({"device_names": ["good-1", "taken"]}, "iot.device.AlreadyExistedDeviceName"),
    ]
    for kwargs, code in cases:
        with pytest.raises(RegistryError) as exc:
            reg.batch_register(acct, pk, **kwargs)  # type: ignore[arg-type]
        assert code_of(exc) == code, kwargs
    assert reg.query_product(acct, pk).device_count == 1
    for bad, code in [
        (None, "iot.device.NullApplyId"),
        ("", "iot.device.NullApplyId"),
        ("x1", "iot.device.DeviceApplyIsNotFound"),
        (0, "iot.device.DeviceApplyIsNotFound"),
        (999, "iot.device.DeviceApplyIsNotFound"),
    ]:
        with pytest.raises(RegistryError) as exc:
            reg.query_page_by_apply_id(acct, bad)
        assert code_of(exc) == code, bad


def test_default_batch_limit_is_1000(reg: Registry, acct: str) -> None:
    pk = reg.create_product(acct, "Lamp_01", 0).product_key
    with pytest.raises(QuotaExceededError):
        reg.batch_register(acct, pk, count=1001)


# ===== topic categories =======================================================================


def test_topic_category_crud(reg: Registry, acct: str) -> None:
    pk = reg.create_product(acct, "Lamp_01", 0).product_key
    created = reg.create_topic_category(acct, pk, "data/+/temp", "SUB", description="temps")
    assert created.template == f"/{pk}/${{deviceName}}/user/data/+/temp"
    assert created.topic_for("lamp-1") == f"/{pk}/lamp-1/user/data/+/temp"
    assert reg.get_topic_category(acct, str(created.id)) == created
    # The full template form is accepted and stored short.
    full = reg.create_topic_category(acct, pk, f"/{pk}/${{deviceName}}/user/cmd", "1")
    assert (full.topic_short_name, full.operation) == ("cmd", Operation.SUB)
    updated = reg.update_topic_category(acct, created.id, "data/#", "SUB")
    assert (updated.topic_short_name, updated.description) == ("data/#", "temps")
    updated = reg.update_topic_category(acct, created.id, "report", "all", description="both")
    assert (updated.operation, updated.description) == (Operation.ALL, "both")
    assert reg.topic_categories_for_product(pk)[-2] == updated  # cache refreshed
    with pytest.raises(ConflictError) as exc:
        reg.update_topic_category(acct, created.id, "get", "SUB")
    assert code_of(exc) == "iot.messagebroker.TopicAlreadyFound"
    assert reg.delete_topic_category(acct, created.id) == updated
    assert updated not in reg.topic_categories_for_product(pk)
    with pytest.raises(NotFoundError) as exc_5:
        reg.delete_topic_category(acct, created.id)
    assert code_of(exc_5) == "iot.messagebroker.TopicTemplateIsNotFound"


@pytest.mark.parametrize(
    ("short", "op", "code"),
    [
        ("", "SUB", "iot.messagebroker.NullTopicName"),
        (None, "SUB", "iot.messagebroker.NullTopicName"),
        ("ok", "", "iot.messagebroker.NullTopicTemplateOperation"),
        ("ok", None, "iot.messagebroker.NullTopicTemplateOperation"),
        ("ok", "READ", "iot.messagebroker.InvalidTopicTemplateOperationValue"),
        ("ok", "3", "iot.messagebroker.InvalidTopicTemplateOperationValue"),
        ("a/+", "PUB", "iot.messagebroker.InvalidTopicTemplateOperationValue"),
        ("a/#", "ALL", "iot.messagebroker.InvalidTopicTemplateOperationValue"),
        ("a/#/b", "SUB", "iot.messagebroker.InvalidFormattedTopicName"),
        ("a+/b", "SUB", "iot.messagebroker.InvalidFormattedTopicName"),
        ("a-b", "SUB", "iot.messagebroker.InvalidFormattedTopicName"),
        ("a//b", "SUB", "iot.messagebroker.InvalidFormattedTopicName"),
        ("/a", "SUB", "iot.messagebroker.InvalidFormattedTopicName"),
        ("a/", "SUB", "iot.messagebroker.InvalidFormattedTopicName"),
        ("温度", "SUB", "iot.messagebroker.InvalidFormattedTopicName"),
        ("a/b/c/d/e", "SUB", "iot.messagebroker.InvalidFormattedTopicName"),  # > 7 slashes
        ("x" * 78, "SUB", "iot.messagebroker.InvalidFormattedTopicName"),  # > 128 bytes
        ("/other/${deviceName}/user/x", "SUB", "iot.messagebroker.InvalidFormattedTopicName"),
    ],
)
def test_topic_category_validation(
    reg: Registry, acct: str, short: str | None, op: str | None, code: str
) -> None:
    pk = reg.create_product(acct, "Lamp_01", 0).product_key
    with pytest.raises(InvalidParameterError) as exc:
        reg.create_topic_category(acct, pk, short, op)
    assert code_of(exc) == code
    assert len(reg.list_topic_categories(acct, pk)) == 3


def test_topic_category_limits_and_duplicates(store: RegistryStore, clock: FakeClock) -> None:
    reg = Registry(store, clock=clock, max_topic_categories_per_product=5)
    acct = reg.create_account("a").account_id
    pk = reg.create_product(acct, "Lamp_01", 0).product_key
    with pytest.raises(ConflictError) as exc:
        reg.create_topic_category(acct, pk, "update", "PUB")  # a default one
    assert code_of(exc) == "iot.messagebroker.TopicAlreadyFound"
    reg.create_topic_category(acct, pk, "a_1", "PUB")
    reg.create_topic_category(acct, pk, "a/b/c/d", "ALL")  # 4 levels: exactly 7 slashes
    with pytest.raises(QuotaExceededError) as exc_6:
        reg.create_topic_category(acct, pk, "a_3", "PUB")
    assert code_of(exc_6) == "iot.messagebroker.TopicTemplateCountExceedMax"
    with pytest.raises(InvalidParameterError) as exc_7:
        reg.create_topic_category(acct, pk, "fine", "SUB", description="d" * 101)
    assert code_of(exc_7) == "iot.common.InvalidFormattedParameter"


@pytest.mark.parametrize(
    ("topic_id", "code"),
    [
        (None, "iot.messagebroker.NullTopicTemplateId"),
        ("", "iot.messagebroker.NullTopicTemplateId"),
        ("abc", "iot.messagebroker.TopicTemplateIsNotFound"),
        ("-1", "iot.messagebroker.TopicTemplateIsNotFound"),
        (True, "iot.messagebroker.TopicTemplateIsNotFound"),
        (2**63, "iot.messagebroker.TopicTemplateIsNotFound"),
        (424242, "iot.messagebroker.TopicTemplateIsNotFound"),
    ],
)
def test_topic_id_errors(reg: Registry, acct: str, topic_id: object, code: str) -> None:
    with pytest.raises(RegistryError) as exc:
        reg.get_topic_category(acct, topic_id)  # type: ignore[arg-type]
    assert code_of(exc) == code


def test_topic_categories_for_product_unknown_is_empty(reg: Registry) -> None:
    assert reg.topic_categories_for_product("a1nothere00") == ()
