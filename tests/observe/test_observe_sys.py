"""The ``$SYS/broker/...`` topics on a real ``thinghub serve``: an allowed client receives
them (retained, then updated every ``mqtt.sys_interval``); a subscription to ``#`` never sees
them (MQTT 4.7.2); a signed-in device is refused unless ``mqtt.sys_readers`` names it, and a
device of another account is refused whatever its name; nobody may publish there; with
``sys_interval = 0`` there are none, also none left over from an earlier run."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "security"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scenarios"))

import rawmqtt
from sechub import TIMEOUT, Device, SecHub

pytestmark = pytest.mark.thinghub_only

NOT_AUTHORIZED = 0x87
FAILURE_V3 = 0x80
TOPICS = (
    "$SYS/broker/version",
    "$SYS/broker/uptime",
    "$SYS/broker/clients/connected",
    "$SYS/broker/clients/total",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/load/messages/received/1min",
    "$SYS/broker/load/messages/sent/15min",
    "$SYS/broker/subscriptions/count",
    "$SYS/broker/retained messages/count",
    "$SYS/broker/store/messages/count",
    "$SYS/broker/store/messages/bytes",
)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecHub]:
    running = SecHub(
        tmp_path_factory.mktemp("sys"),
        mqtt_sys_interval=0.5,
        mqtt_sys_readers="anonymous,client:*.sysreader",
    )
    yield running
    running.stop()


def sys_values(client: rawmqtt.RawClient, wanted: tuple[str, ...]) -> dict[str, str]:
    """Read PUBLISHes until every topic of ``wanted`` has come; their latest values."""
    values: dict[str, str] = {}
    deadline = time.monotonic() + TIMEOUT
    while not set(wanted) <= set(values):
        assert time.monotonic() < deadline, f"missing {set(wanted) - set(values)}"
        packet = client.expect(rawmqtt.PUBLISH)
        values[packet.topic] = packet.payload.decode()
    return values


def next_value(client: rawmqtt.RawClient, topic: str) -> str:
    """The next PUBLISH of ``topic`` (a later round), skipping the others."""
    while True:
        packet = client.expect(rawmqtt.PUBLISH)
        if packet.topic == topic:
            return str(packet.payload.decode())


def test_an_allowed_client_receives_the_sys_topics(hub: SecHub) -> None:
    with hub.raw() as reader:
        reader.connect(unique("ops"))
        assert reader.subscribe("$SYS/#") == [0]
        values = sys_values(reader, TOPICS)
        assert values["$SYS/broker/version"].startswith("ThingHub ")
        assert values["$SYS/broker/uptime"].endswith(" seconds")
        assert float(values["$SYS/broker/load/messages/received/1min"]) >= 0
        # The rounds go on: the uptime is published again (only what changed is), and a
        # round after this client connected counts it.
        first = int(values["$SYS/broker/uptime"].split()[0])
        while int(values["$SYS/broker/uptime"].split()[0]) <= first:
            packet = reader.expect(rawmqtt.PUBLISH)
            values[packet.topic] = packet.payload.decode()
        assert int(values["$SYS/broker/clients/connected"]) >= 1
        reader.disconnect()


def test_a_shared_subscription_reads_them_too(hub: SecHub) -> None:
    with hub.raw() as reader:
        reader.connect(unique("ops"))
        assert reader.subscribe("$share/ops/$SYS/broker/uptime") == [0]
        assert next_value(reader, "$SYS/broker/uptime").endswith(" seconds")
        reader.disconnect()


def test_hash_never_matches_sys(hub: SecHub) -> None:
    """MQTT 4.7.2: ``#`` and ``+/...`` do not match topics that begin with ``$``, neither the
    retained ones nor the rounds published while subscribed."""
    topic = unique("obs/sys")
    with hub.raw() as everything, hub.raw() as reader:
        everything.connect(unique("all"))
        assert everything.subscribe([("#", 0), ("+/broker/#", 0)]) == [0, 0]
        reader.connect(unique("ops"))
        assert reader.subscribe("$SYS/broker/uptime") == [0]
        # Two rounds after the subscription: the second one was published while subscribed.
        next_value(reader, "$SYS/broker/uptime")
        next_value(reader, "$SYS/broker/uptime")
        everything.publish(topic, b"sentinel")
        seen = everything.collect(until=b"sentinel")
        assert not [p.topic for p in seen if p.topic.startswith("$")], seen
        everything.disconnect()
        reader.disconnect()


@pytest.mark.parametrize(("version", "refusal"), [(5, NOT_AUTHORIZED), (4, FAILURE_V3)])
def test_a_signed_in_device_is_refused(hub: SecHub, version: int, refusal: int) -> None:
    product_key = hub.product(unique("SysDev").replace("-", "_"))
    device = hub.device(product_key, f"plain-{version}")
    client, _ = device.sign_in(version)
    try:
        assert client.subscribe("$SYS/#", mid=1) == [refusal]
        assert client.subscribe("$share/g/$SYS/broker/#", mid=2) == [refusal]
        assert client.subscribe("$SYS/broker/uptime", mid=3) == [refusal]
        client.ping()  # still connected: a refused filter is not a protocol error
    finally:
        client.close()


def test_a_device_named_by_sys_readers_reads(hub: SecHub) -> None:
    product_key = hub.product(unique("SysRd").replace("-", "_"))
    device = hub.device(product_key, "sysreader")
    client, _ = device.sign_in()
    try:
        assert client.subscribe("$SYS/broker/version") == [0]
        packet = client.expect(rawmqtt.PUBLISH)
        assert packet.topic == "$SYS/broker/version" and packet.retain
    finally:
        client.close()


def test_another_accounts_device_is_refused_whatever_its_name(hub: SecHub) -> None:
    """The figures are the whole hub's: only the root account's clients may read them."""
    key = hub.cli("account", "create", unique("tenant"))
    account = str((key[0] if isinstance(key, list) else key)["account_id"])
    created = hub.cli("product", "create", unique("Ten").replace("-", "_"), "--account", account)
    product_key = str((created[0] if isinstance(created, list) else created)["product_key"])
    record = hub.cli("device", "register", product_key, "sysreader", "--account", account)
    secret = str((record[0] if isinstance(record, list) else record)["device_secret"])
    client, _ = Device(hub, product_key, "sysreader", secret).sign_in()
    try:
        assert client.subscribe("$SYS/#") == [NOT_AUTHORIZED]
    finally:
        client.close()


def test_nobody_publishes_to_sys(hub: SecHub) -> None:
    with hub.raw() as forger, hub.raw() as reader:
        forger.connect(unique("forger"))
        reason = forger.publish_acked("$SYS/broker/version", b"forged", 1, retain=True)
        assert reason == NOT_AUTHORIZED
        forger.publish("$SYS/broker/uptime", b"forged", retain=True)  # QoS 0: dropped
        forger.ping()
        reader.connect(unique("ops"))
        assert reader.subscribe([("$SYS/broker/version", 0), ("$SYS/broker/uptime", 0)]) == [0, 0]
        values = sys_values(reader, ("$SYS/broker/version", "$SYS/broker/uptime"))
        assert values["$SYS/broker/version"].startswith("ThingHub ")
        assert values["$SYS/broker/uptime"] != "forged"
        forger.disconnect()
        reader.disconnect()


def test_off_means_none_not_even_from_an_earlier_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    earlier = SecHub(data, mqtt_sys_interval=0.5)
    try:
        with earlier.raw() as reader:
            reader.connect(unique("ops"))
            assert reader.subscribe("$SYS/broker/version") == [0]
            assert reader.expect(rawmqtt.PUBLISH).topic == "$SYS/broker/version"
            reader.disconnect()
    finally:
        assert earlier.stop() == 0
    later = SecHub(data, mqtt_sys_interval=0)
    try:
        with later.raw() as reader:
            reader.connect(unique("ops"))
            assert reader.subscribe([("$SYS/#", 0), ("obs/off", 0)]) == [0, 0]
            # Retained messages come right after the SUBACK, before this sentinel.
            reader.publish("obs/off", b"sentinel")
            assert reader.collect(until=b"sentinel") == []
            reader.disconnect()
    finally:
        assert later.stop() == 0
