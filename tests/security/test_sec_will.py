"""Attack: a signed-in device sets a Will on a topic it may not publish to (another device's
topic, another thing's shadow, an RRpc request topic, a topic the operator denies), then
drops its TCP connection so that the hub publishes the Will for it.

The hub checks a Will at CONNECT exactly as it would check a PUBLISH of the same message
(thinghub/broker/admission.py) and refuses the CONNECT: MQTT 5 CONNACK 0x87 Not authorized,
3.1.1 return code 5. Nothing is delivered, retained or applied to a shadow. A Will the device
may publish still works, so the check is not simply "no Wills"."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import rawmqtt
from botocore.exceptions import ClientError
from sechub import SecHub

pytestmark = pytest.mark.thinghub_only

NOT_AUTHORIZED_V5 = 0x87
NOT_AUTHORIZED_V311 = 5


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecHub]:
    running = SecHub(tmp_path_factory.mktemp("will"), mqtt_deny_publish="forbidden/#,ops/+/reboot")
    yield running
    running.stop()


def listener(hub: SecHub, topic_filter: str) -> rawmqtt.RawClient:
    """An anonymous client of the root account (where the products live) watching a filter."""
    watcher = hub.raw()
    watcher.connect(f"watch-{uuid.uuid4().hex[:8]}")
    assert watcher.subscribe(topic_filter, qos=1) == [1]
    return watcher


@pytest.mark.parametrize("version", [5, 4])
@pytest.mark.parametrize(
    "target",
    [
        "other-device-topic",
        "other-thing-shadow",
        "rrpc-request",
    ],
)
def test_a_will_on_a_topic_the_device_may_not_publish_is_refused_at_connect(
    hub: SecHub, target: str, version: int
) -> None:
    pk = hub.product(f"P{uuid.uuid4().hex[:8]}")
    attacker = hub.device(pk, "attacker")
    victim = hub.device(pk, "victim")
    topic = {
        "other-device-topic": victim.topic("user/get"),
        "other-thing-shadow": f"$aws/things/{victim.name}/shadow/update",
        "rrpc-request": f"/sys/{pk}/{victim.name}/rrpc/request/1",
    }[target]
    payload = b'{"state":{"desired":{"door":"open"}}}'
    # The victim is online and subscribed to its own command topic.
    victim_client, _ = victim.sign_in()
    assert victim_client.subscribe(victim.topic("user/get"), qos=1) == [1]
    watcher = listener(hub, "#")

    client, connack = attacker.sign_in(
        version,
        expect=None,
        will=rawmqtt.Will(topic, payload, qos=1, retain=True),
    )
    assert connack.reason == (NOT_AUTHORIZED_V5 if version == 5 else NOT_AUTHORIZED_V311)
    client.expect_closed()
    client.close()

    # Nothing reached anyone: a sentinel published after the attack is the first message the
    # victim and a wildcard watcher see; no retained message is there for a new subscriber
    # (PINGRESP comes first); the retained store and the shadow are empty.
    iot = hub.iot_data()
    iot.publish(topic=victim.topic("user/get"), qos=1, payload=b"sentinel")
    assert victim_client.collect(until=b"sentinel") == []
    assert watcher.collect(until=b"sentinel") == []
    late = listener(hub, topic if not topic.startswith("$") else "$aws/#")
    late.ping()
    with pytest.raises(ClientError) as missing:
        iot.get_retained_message(topic=topic)
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
    with pytest.raises(ClientError) as no_shadow:
        iot.get_thing_shadow(thingName=victim.name)
    assert no_shadow.value.response["Error"]["Code"] == "ResourceNotFoundException"
    for c in (victim_client, watcher, late):
        c.close()


def test_a_will_on_a_denied_topic_is_refused_even_for_an_anonymous_client(hub: SecHub) -> None:
    watcher = listener(hub, "forbidden/#")
    client = hub.raw()
    connack = client.connect(
        f"anon-{uuid.uuid4().hex[:8]}",
        expect_reason=None,
        will=rawmqtt.Will("forbidden/door", b"open", qos=1),
    )
    assert connack.reason == NOT_AUTHORIZED_V5
    client.expect_closed()
    client.close()
    hub.iot_data().publish(topic="forbidden-not/x", qos=0, payload=b"unrelated")
    watcher.ping()  # a Will delivered at the close would have come before the PINGRESP
    watcher.close()


def test_a_will_the_device_may_publish_is_still_delivered(hub: SecHub) -> None:
    pk = hub.product(f"P{uuid.uuid4().hex[:8]}")
    device = hub.device(pk, "honest")
    watcher = listener(hub, device.topic("user/update"))
    client, _ = device.sign_in(will=rawmqtt.Will(device.topic("user/update"), b"gone", qos=1))
    client.close()  # no DISCONNECT: the connection is lost, so the Will is published
    will = watcher.expect(rawmqtt.PUBLISH)
    assert (will.topic, will.payload) == (device.topic("user/update"), b"gone")
    watcher.close()


def test_a_retained_publish_to_an_rrpc_or_system_topic_is_refused(hub: SecHub) -> None:
    """The memory attack's first half: devices may publish RRpc answers and /sys topics, but
    nothing there may be retained (mqtt.unretainable_topics)."""
    pk = hub.product(f"P{uuid.uuid4().hex[:8]}")
    device = hub.device(pk, "rrpc")
    client, _ = device.sign_in()
    for mid, topic in enumerate(
        [
            f"/sys/{pk}/{device.name}/rrpc/response/1",
            f"/ext/rrpc/1/{pk}/{device.name}/user/get",
        ],
        start=1,
    ):
        reason = client.publish_acked(topic, b"x" * 200_000, 1, mid=mid, retain=True)
        assert reason == NOT_AUTHORIZED_V5
        with pytest.raises(ClientError):
            hub.iot_data().get_retained_message(topic=topic)
    # The same answer without the retain flag is fine (the RRpc flow).
    ok = client.publish_acked(f"/sys/{pk}/{device.name}/rrpc/response/2", b"pong", 1, mid=9)
    assert ok in (0x00, 0x10)
    client.close()
    hub.assert_alive()


def test_the_hub_refuses_the_will_before_any_state_changes_on_a_direct_drop(
    tmp_path: Path,
) -> None:
    """A Will refused at CONNECT leaves no session behind: the next CONNECT with the same id
    and Clean Start 0 finds none (Session Present 0)."""
    hub = SecHub(tmp_path / "d")
    try:
        pk = hub.product("Solo")
        device = hub.device(pk, "dev1")
        refused, connack = device.sign_in(
            expect=NOT_AUTHORIZED_V5,
            will=rawmqtt.Will(f"/{pk}/someone-else/user/get", b"x"),
            clean=False,
            properties={"session_expiry_interval": 3600},
        )
        assert connack.reason == NOT_AUTHORIZED_V5
        refused.expect_closed()
        refused.close()
        again, connack = device.sign_in(clean=False, properties={"session_expiry_interval": 60})
        assert not connack.session_present
        again.close()
    finally:
        hub.stop()
