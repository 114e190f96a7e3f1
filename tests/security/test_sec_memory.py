"""Attack: fill the hub's memory through state it keeps for as long as it runs: retained
messages (large payloads on many topics) and subscription filters (long filters, many of
them). Each is bounded in bytes, per account or session and hub-wide; past a bound the
publisher gets MQTT 5 PUBACK 0x97 Quota exceeded (a subscriber SUBACK 0x97), the refusal is
counted on /api/stats, the hub's RSS stays flat, and a bystander client is still served."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import rawmqtt
from sechub import Device, SecHub

pytestmark = pytest.mark.thinghub_only

QUOTA_EXCEEDED = 0x97
PAYLOAD = 100 * 1024
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecHub]:
    running = SecHub(
        tmp_path_factory.mktemp("memory"),
        mqtt_max_retained_bytes=2 * MIB,
        mqtt_max_retained_bytes_total=3 * MIB,
        mqtt_max_subscription_bytes=256 * 1024,
        mqtt_max_subscription_bytes_total=1 * MIB,
        store_backend="memory",
    )
    yield running
    running.stop()


def bystander_round_trip(hub: SecHub) -> None:
    """Other clients publish and receive while the flood is on."""
    name = f"by-{uuid.uuid4().hex[:8]}"
    with hub.raw() as listener, hub.raw() as speaker:
        listener.connect(f"{name}-l")
        assert listener.subscribe(f"{name}/t", qos=1) == [1]
        speaker.connect(f"{name}-s")
        assert speaker.publish_acked(f"{name}/t", b"still here", 1) == 0
        got = listener.expect(rawmqtt.PUBLISH)
        assert got.payload == b"still here"


def test_retained_flood_is_refused_past_the_account_bytes(hub: SecHub) -> None:
    before = hub.rss_bytes()
    accepted = refused = 0
    with hub.raw() as flooder:
        flooder.connect(f"flood-{uuid.uuid4().hex[:8]}")
        for i in range(60):  # 6 MB offered, 2 MiB allowed
            reason = flooder.publish_acked(
                f"flood/{i}", bytes([i]) * PAYLOAD, 1, mid=i + 1, retain=True
            )
            if reason == QUOTA_EXCEEDED:
                refused += 1
            else:
                assert reason in (0x00, 0x10), hex(reason)
                accepted += 1
            if i == 30:
                bystander_round_trip(hub)
    # About 2 MiB of 100 KiB messages (each counted with its topic and overhead) were kept.
    assert 15 <= accepted <= 20, accepted
    assert refused == 60 - accepted
    assert hub.stats()["dropped_retained_full"] >= refused
    assert hub.rss_bytes() - before < 40 * MIB
    # Replacing a retained message with a smaller one, and deleting one, still work.
    with hub.raw() as owner:
        owner.connect(f"owner-{uuid.uuid4().hex[:8]}")
        assert owner.publish_acked("flood/0", b"small", 1, retain=True) in (0x00, 0x10)
        assert owner.publish_acked("flood/1", b"", 1, mid=2, retain=True) in (0x00, 0x10)
        assert owner.publish_acked("flood/59", b"x" * 1000, 1, mid=3, retain=True) in (
            0x00,
            0x10,
        )
    hub.assert_alive()


def test_a_second_account_is_bounded_by_the_hub_wide_total(hub: SecHub) -> None:
    """The root account holds its 2 MiB (filled here if the test above did not run); devices of
    another account can then add only what is left of the 3 MiB hub-wide total."""
    with hub.raw() as root:
        root.connect(f"root-{uuid.uuid4().hex[:8]}")
        for i in range(30):
            root.publish_acked(f"fill/{i}", b"r" * PAYLOAD, 1, mid=i + 1, retain=True)
    key = hub.cli("account", "create", "tenant-b")
    account = str((key[0] if isinstance(key, list) else key)["account_id"])
    created = hub.cli("product", "create", "TenantB", "--account", account)
    product_key = str((created[0] if isinstance(created, list) else created)["product_key"])
    reasons = []
    for n in range(16):
        record = hub.cli("device", "register", product_key, f"dev-{n}", "--account", account)
        secret = str((record[0] if isinstance(record, list) else record)["device_secret"])
        device = Device(hub, product_key, f"dev-{n}", secret)
        client, _ = device.sign_in()
        reasons.append(
            client.publish_acked(device.topic("user/update"), b"b" * PAYLOAD, 1, retain=True)
        )
        client.close()
    accepted = sum(1 for r in reasons if r in (0x00, 0x10))
    # About 1 MiB was left of the total: roughly ten 100 KiB messages, then Quota exceeded.
    assert 5 <= accepted <= 11, reasons
    assert reasons[accepted:] == [QUOTA_EXCEEDED] * (16 - accepted), reasons
    bystander_round_trip(hub)
    hub.assert_alive()


@pytest.mark.parametrize("clients", [5])
def test_long_subscription_filters_are_bounded_per_session_and_hub_wide(
    hub: SecHub, clients: int
) -> None:
    before = hub.rss_bytes()
    filter_bytes = 60_000
    granted_per_client = []
    open_clients = []
    for n in range(clients):
        c = hub.raw()
        open_clients.append(c)
        c.connect(f"subs-{n}-{uuid.uuid4().hex[:8]}")
        granted = 0
        for i in range(40):  # 2.4 MB of filters offered per client
            topic_filter = f"{i}/" + "f" * (filter_bytes - len(f"{i}/"))
            reasons = c.subscribe(topic_filter, qos=1, mid=i + 1)
            if reasons == [1]:
                granted += 1
            else:
                assert reasons == [QUOTA_EXCEEDED], reasons
        granted_per_client.append(granted)
    bystander_round_trip(hub)
    # 256 KiB per session: 4 filters of 60 kB each; 1 MiB hub-wide: 17 filters in all.
    assert all(g <= 4 for g in granted_per_client), granted_per_client
    assert granted_per_client[0] == 4
    assert sum(granted_per_client) <= (1 * MIB) // filter_bytes
    assert hub.rss_bytes() - before < 40 * MIB
    for c in open_clients:
        c.close()
    hub.assert_alive()
