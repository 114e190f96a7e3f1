"""What persistent sessions keep across a broker restart through the store interface (§4.1:
subscriptions, queued and in-flight QoS 1/2 messages, inbound QoS 2 state; retained messages
§4.1 too), and acknowledgements that wait for the store's commit."""

from __future__ import annotations

from collections.abc import Callable

from harness import V5, V311, InMemoryHub, TestClient, both_versions

from thinghub.broker.admission import API_CALLER
from thinghub.broker.queue import SessionQueue
from thinghub.message import Message
from thinghub.mqtt.packets import (
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
)
from thinghub.mqtt.properties import Properties
from thinghub.mqtt.types import ProtocolVersion, ReasonCode
from thinghub.store.base import QueuedDelivery
from thinghub.store.memory import MemoryStore


def persistent(hub: InMemoryHub, client_id: str, version: ProtocolVersion) -> TestClient:
    return hub.connect(client_id, version, clean_start=False, session_expiry=100)


def resume(hub: InMemoryHub, client_id: str, version: ProtocolVersion) -> TestClient:
    client = hub.client(version)
    ack = client.connect(client_id, clean_start=False, session_expiry=100)
    assert ack.session_present, "the session did not survive"
    return client


@both_versions
def test_subscriptions_survive_restart(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    sub = persistent(hub, "sub", version)
    sub.subscribe("a/+", qos=1)
    sub.subscribe(Subscription(topic_filter="$share/g/jobs", qos=1))
    hub.restart()
    again = resume(hub, "sub", version)
    pub = hub.connect("pub", version)
    pub.publish("a/b", b"x", 1)
    pub.publish("jobs", b"j", 1)
    assert [(p.topic, p.qos) for p in again.publishes()] == [("a/b", 1), ("jobs", 1)]


def test_subscription_options_survive_restart() -> None:
    hub = InMemoryHub()
    sub = persistent(hub, "sub", V5)
    sub.subscribe(Subscription(topic_filter="t", no_local=True, retain_as_published=True))
    sub.subscribe("u", subscription_id=9)
    hub.restart()
    again = resume(hub, "sub", V5)
    again.publish("t", b"own")  # no local
    other = hub.connect("other", V5)
    other.publish("t", b"theirs", retain=True)
    other.publish("u", b"u")
    got = again.publishes()
    assert [(p.payload, p.retain) for p in got] == [(b"theirs", True), (b"u", False)]
    assert got[1].properties.subscription_identifiers == (9,)


@both_versions
def test_clean_sessions_do_not_survive_restart(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    hub.connect("sub", version, clean_start=True).subscribe("t", qos=1)
    hub.restart()
    ack = hub.client(version).connect("sub", clean_start=False)
    assert not ack.session_present


def test_session_ended_by_disconnect_does_not_survive_restart() -> None:
    hub = InMemoryHub()
    sub = persistent(hub, "sub", V5)
    sub.subscribe("t", qos=1)
    sub.disconnect(properties=Properties(session_expiry_interval=0))
    hub.restart()
    assert not hub.client(V5).connect("sub", clean_start=False).session_present


@both_versions
def test_queued_messages_survive_restart_in_order(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    sub = persistent(hub, "sub", version)
    sub.subscribe("t", qos=2)
    sub.drop()
    pub = hub.connect("pub", version)
    pub.publish("t", b"1", 1)
    pub.publish_qos2("t", b"2")
    pub.publish("t", b"3", 1)
    hub.restart()
    again = resume(hub, "sub", version)
    got = again.publishes()
    assert [(p.payload, p.qos) for p in got] == [(b"1", 1), (b"2", 2), (b"3", 1)]
    for p in got:
        again.ack(p)
    again.drop()
    hub.restart()
    resume(hub, "sub", version).assert_nothing_pending()  # acknowledged ones are gone


@both_versions
def test_inflight_messages_survive_restart(version: ProtocolVersion) -> None:
    hub = InMemoryHub(max_inflight=2)
    sub = persistent(hub, "sub", version)
    sub.subscribe("t", qos=2)
    pub = hub.connect("pub", version)
    pub.publish_qos2("t", b"released")
    pub.publish("t", b"sent", 1)
    pub.publish("t", b"queued", 1)
    first, second = sub.publishes()
    assert first.packet_id is not None
    sub.send(PubRec(packet_id=first.packet_id))
    sub.expect(PubRel)
    hub.restart()
    again = resume(hub, "sub", version)
    assert again.expect(PubRel).packet_id == first.packet_id
    dup = again.expect_publish("t", b"sent")
    assert dup.dup and dup.packet_id == second.packet_id
    again.send(PubComp(packet_id=first.packet_id))
    again.expect_publish("t", b"queued")


@both_versions
def test_inbound_qos2_state_survives_restart(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", version)
    sub.subscribe("t", qos=2)
    pub = persistent(hub, "pub", version)
    pub.publish("t", b"once", 2, packet_id=4)
    sub.ack(sub.expect_publish("t", b"once"))
    hub.restart()
    sub = hub.connect("sub", version)
    sub.subscribe("t", qos=2)
    again = resume(hub, "pub", version)
    again.publish("t", b"once", 2, packet_id=4, dup=True)
    assert again.release(4).reason_code == 0  # the id was known: PUBCOMP without error
    sub.assert_nothing_pending()  # not routed twice


@both_versions
def test_retained_messages_survive_restart(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    pub = hub.connect("pub", version)
    pub.publish("r/1", b"1", retain=True)
    pub.publish("r/2", b"2", retain=True)
    pub.publish("r/2", b"", retain=True)
    hub.restart()
    sub = hub.connect("sub", version)
    sub.subscribe("r/#")
    assert [(p.topic, p.payload) for p in sub.publishes()] == [("r/1", b"1")]


def test_restored_session_still_expires() -> None:
    hub = InMemoryHub()
    sub = persistent(hub, "sub", V5)
    sub.drop()
    hub.restart()
    hub.advance(100)
    assert not hub.client(V5).connect("sub", clean_start=False).session_present


def test_restored_session_without_expiry_stays() -> None:
    hub = InMemoryHub(max_session_expiry=0xFFFFFFFF)
    sub = persistent(hub, "sub", V311)
    sub.drop()
    hub.restart()
    assert not hub.clock.pending()
    resume(hub, "sub", V311)


# ---------------------------------------------------------------------------- queues on disk
# A persistent session keeps at most a page of its queue in memory while connected, none while
# offline; the rest is read back from the store a page at a time ("memory does not
# grow with queue length").


def session(hub: InMemoryHub, client_id: str) -> SessionQueue:
    """The delivery state of the client's session."""
    found = hub.broker.session_of("", client_id)
    assert found is not None
    return found.delivery


def drain(client: TestClient, count: int, hub: InMemoryHub, page: int) -> list[bytes]:
    """Take and acknowledge ``count`` messages, checking the memory bound as they come."""
    got: list[bytes] = []
    while len(got) < count:
        batch = client.publishes()
        assert batch, f"stuck after {len(got)} of {count}"
        for p in batch:
            assert session(hub, client.client_id).in_memory <= page
            got.append(p.payload)
            client.ack(p)
    client.assert_nothing_pending()
    return got


@both_versions
def test_an_offline_queue_waits_on_disk_and_comes_back_in_order(version: ProtocolVersion) -> None:
    hub = InMemoryHub(queue_page_messages=5)
    sub = persistent(hub, "sub", version)
    sub.subscribe("t", qos=2)
    pub = hub.connect("pub", version)
    pub.publish("t", b"0", 1)  # in flight when the connection breaks: resent first
    sub.drop()
    sent = [str(i).encode() for i in range(23)]
    for i, payload in enumerate(sent[1:]):
        if i % 3:
            pub.publish("t", payload, 1)
        else:
            pub.publish_qos2("t", payload)
    state = session(hub, "sub")
    assert (len(state.inflight), state.in_memory, state.spilled) == (1, 0, 22)
    assert state.queued_bytes == sum(len(p) + 1 for p in sent[1:])
    again = resume(hub, "sub", version)
    assert drain(again, 23, hub, page=5) == sent
    assert (session(hub, "sub").spilled, session(hub, "sub").queued_bytes) == (0, 0)


def test_a_slow_consumer_keeps_one_page_in_memory() -> None:
    hub = InMemoryHub(queue_page_messages=4)
    sub = persistent(hub, "sub", V5)
    sub.disconnect()
    sub = hub.client(V5)
    sub.connect("sub", clean_start=False, session_expiry=100, receive_maximum=2)
    sub.subscribe("t", qos=1)
    pub = hub.connect("pub", V5)
    sent = [str(i).encode() for i in range(15)]
    for payload in sent:
        pub.publish("t", payload, 1)
    state = session(hub, "sub")
    assert (len(state.inflight), state.in_memory, state.spilled) == (2, 4, 9)
    assert [p.payload for p in sub.publishes()] == sent[:2]
    sub.drop()  # offline: its memory queue goes to disk too
    assert (len(state.inflight), state.in_memory, state.spilled) == (2, 0, 13)
    again = hub.client(V5)
    assert again.connect(
        "sub", clean_start=False, session_expiry=100, receive_maximum=2
    ).session_present
    assert drain(again, 15, hub, page=4) == sent


@both_versions
def test_queued_messages_on_disk_survive_restart_behind_those_in_flight(
    version: ProtocolVersion,
) -> None:
    hub = InMemoryHub(queue_page_messages=3, max_inflight=2)
    sub = persistent(hub, "sub", version)
    sub.subscribe("t", qos=1)
    pub = hub.connect("pub", version)
    sent = [str(i).encode() for i in range(12)]
    for payload in sent:
        pub.publish("t", payload, 1)
    first = sub.publishes()
    assert [p.payload for p in first] == sent[:2]  # in flight, never acknowledged
    hub.restart()
    state = session(hub, "sub")
    assert (len(state.inflight), state.in_memory, state.spilled) == (2, 0, 10)
    again = resume(hub, "sub", version)
    assert drain(again, 12, hub, page=3) == sent
    again.drop()
    hub.restart()
    resume(hub, "sub", version).assert_nothing_pending()


def test_the_queue_limit_counts_messages_on_disk() -> None:
    hub = InMemoryHub(queue_page_messages=3, max_queued_messages=10)
    sub = persistent(hub, "sub", V5)
    sub.subscribe("t", qos=1)
    sub.drop()
    pub = hub.connect("pub", V5)
    for i in range(15):
        pub.publish("t", str(i).encode(), 1)
    assert hub.stats.dropped_queue_full == 5
    again = resume(hub, "sub", V5)
    assert drain(again, 10, hub, page=3) == [str(i).encode() for i in range(10)]


def test_a_direct_message_on_disk_still_reports_its_acknowledgement() -> None:
    hub = InMemoryHub(queue_page_messages=2)
    sub = hub.client(V5)
    sub.connect("sub", clean_start=False, session_expiry=100, receive_maximum=1)
    sub.subscribe("t", qos=1)
    pub = hub.connect("pub", V5)
    for i in range(4):
        pub.publish("t", str(i).encode(), 1)  # 1 in flight, 2 in memory, 1 on disk
    acked: list[str] = []
    direct = Message(topic="direct", payload=b"d", qos=1)
    assert hub.broker.send_direct("", "sub", direct, API_CALLER, lambda: acked.append("d"))
    assert session(hub, "sub").spilled == 2
    assert drain(sub, 5, hub, page=2) == [b"0", b"1", b"2", b"3", b"d"]
    assert acked == ["d"]


# ---------------------------------------------------------------------------- commit barrier


class DeferredStore(MemoryStore):
    """A store whose commits happen when the test says so, like a batching durable store."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Callable[[], None]] = []

    def after_commit(self, callback: Callable[[], None]) -> None:
        self.waiting.append(callback)

    def read_queued(
        self, session_key: str, limit: int, callback: Callable[[list[QueuedDelivery]], None]
    ) -> None:
        # Read after the commit, as the SQLite store does.
        self.waiting.append(lambda: MemoryStore.read_queued(self, session_key, limit, callback))

    def commit(self) -> None:
        waiting, self.waiting = self.waiting, []
        for callback in waiting:
            callback()


@both_versions
def test_ack_waits_for_the_store_when_the_message_was_stored(version: ProtocolVersion) -> None:
    store = DeferredStore()
    hub = InMemoryHub(store=store)
    sub = persistent(hub, "sub", version)
    subscribe_committed(sub, store, "stored", 1)
    sub.drop()
    pub = hub.connect("pub", version)
    pub.send(Publish(topic="stored", payload=b"x", qos=1, packet_id=10))
    pub.assert_nothing_pending()  # acknowledged means stored
    store.commit()
    assert pub.expect(PubAck).packet_id == 10
    assert pub.publish("ephemeral", b"y", 1) is not None  # nothing stored: answered at once


def test_ack_not_written_when_the_connection_closed_before_commit() -> None:
    store = DeferredStore()
    hub = InMemoryHub(store=store)
    sub = persistent(hub, "sub", V5)
    subscribe_committed(sub, store, "t", 1)
    sub.drop()
    pub = hub.connect("pub", V5)
    pub.send(Publish(topic="t", payload=b"x", qos=1, packet_id=10))
    pub.drop()
    store.commit()
    assert pub.link.chunks == [] and pub.link.writes_after_close == 0


def subscribe_committed(client: TestClient, store: DeferredStore, topic: str, qos: int) -> None:
    """SUBSCRIBE on a persistent session: the SUBACK comes once the store committed it."""
    client.send(Subscribe(packet_id=1, subscriptions=(Subscription(topic_filter=topic, qos=qos),)))
    client.assert_nothing_pending()
    store.commit()
    assert client.expect(SubAck).reason_codes == (qos,)


@both_versions
def test_acks_keep_their_order_when_one_waits_for_the_store(version: ProtocolVersion) -> None:
    """[MQTT-4.6.0-2]: PUBACKs in the order of the PUBLISHes, even when the first one waits
    for the store and the second would not need to."""
    store = DeferredStore()
    hub = InMemoryHub(store=store)
    sub = persistent(hub, "sub", version)
    subscribe_committed(sub, store, "stored", 1)
    sub.drop()
    pub = hub.connect("pub", version)
    pub.send(Publish(topic="stored", payload=b"x", qos=1, packet_id=10))
    pub.send(Publish(topic="nobody", payload=b"y", qos=1, packet_id=11))
    pub.assert_nothing_pending()
    store.commit()
    assert [a.packet_id for a in pub.received()] == [10, 11]


@both_versions
def test_qos2_to_a_persistent_session_is_sent_only_once_stored(version: ProtocolVersion) -> None:
    """Exactly once across a crash: a QoS 2 copy leaves only after the commit, so a crash
    before it cannot let the publisher's retry produce a second copy."""
    store = DeferredStore()
    hub = InMemoryHub(store=store)
    sub = persistent(hub, "sub", version)
    subscribe_committed(sub, store, "q2", 2)
    pub = hub.connect("pub", version)
    pub.send(Publish(topic="q2", payload=b"once", qos=2, packet_id=7))
    sub.assert_nothing_pending()
    pub.assert_nothing_pending()
    store.commit()  # the message and the publisher's PUBREC state are stored
    assert pub.expect(PubRec).packet_id == 7
    sub.assert_nothing_pending()  # its packet id towards the subscriber is not, yet
    store.commit()
    assert sub.expect_publish("q2", b"once", qos=2).payload == b"once"


class FullStore(MemoryStore):
    """A store past its limits (disk full, writer behind): it accepts no new work."""

    accepting = False


def test_v5_publish_refused_with_quota_exceeded_when_the_store_is_full() -> None:
    hub = InMemoryHub(store=FullStore())
    watcher = hub.connect("watcher", V5)
    watcher.subscribe("t", qos=1)
    pub = hub.connect("pub", V5)
    ack = pub.publish("t", b"x", 1)
    assert isinstance(ack, PubAck) and ack.reason_code == ReasonCode.QUOTA_EXCEEDED
    pub.publish("t", b"qos 0 still flows", 0)
    assert watcher.expect_publish("t").payload == b"qos 0 still flows"


def test_v311_publisher_is_disconnected_when_the_store_is_full() -> None:
    """3.1.1 has no negative PUBACK: the client is disconnected unacknowledged, and sends
    the message again when it reconnects."""
    hub = InMemoryHub(store=FullStore())
    pub = hub.connect("pub", V311)
    pub.send(Publish(topic="t", payload=b"x", qos=1, packet_id=3))
    assert pub.closed
    assert pub.received() == []
