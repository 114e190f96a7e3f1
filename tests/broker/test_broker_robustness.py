"""A bug in a hook must cost one connection, never the hub."""

from __future__ import annotations

import pytest
from harness import V5, InMemoryHub

from thinghub.broker.auth import ClientInfo, Decision
from thinghub.mqtt.packets import ConnAck, Connect, Disconnect, Will
from thinghub.mqtt.types import ReasonCode


class BrokenAuthorizer:
    def may_publish(self, client: ClientInfo, topic: str) -> Decision:
        if topic == "boom":
            raise RuntimeError("a bug in a hook")
        return Decision.allow()

    def may_subscribe(self, client: ClientInfo, topic_filter: str) -> Decision:
        return Decision.allow()


def test_internal_error_closes_that_connection_only(caplog: pytest.LogCaptureFixture) -> None:
    hub = InMemoryHub()
    hub.broker.authorizer = BrokenAuthorizer()
    watcher = hub.connect("watcher", V5)
    watcher.subscribe("#", qos=1)
    victim = hub.connect("victim", V5)
    victim.publish("boom", b"x", 0)
    closed = victim.expect(Disconnect)
    assert closed.reason_code == ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR
    assert "internal error while serving victim" in caplog.text
    hub.settle()
    other = hub.connect("other", V5)
    other.publish("fine", b"ok", 1)
    assert watcher.expect_publish("fine", b"ok").payload == b"ok"


def test_connects_beyond_the_turn_budget_wait_for_the_next_turn_while_traffic_flows() -> None:
    """``mqtt.connects_per_turn``: a fleet signing in at once is served a few per turn of the
    loop, in arrival order; messages of established clients in the same turn are not held
    behind the sign-ins."""
    hub = InMemoryHub(connects_per_turn=2)
    subscriber = hub.connect("sub")
    subscriber.subscribe("t")
    publisher = hub.connect("pub")
    hub.advance(0)  # a new turn: those two used this one's budget
    late = [hub.client(V5) for _ in range(5)]
    for n, client in enumerate(late):
        client.send(Connect(protocol_version=V5, client_id=f"late-{n}", clean_start=True))
    # An established client's message in the same turn goes through at once.
    publisher.publish("t", b"now")
    assert [p.payload for p in subscriber.publishes()] == [b"now"]
    answered = [bool(c.received()) for c in late]
    assert answered == [True, True, False, False, False]
    # The next turns serve the rest (the test clock runs every turn due now at once).
    hub.advance(0)
    assert all(c.expect(ConnAck).reason_code == 0 for c in late[2:])
    assert all(hub.broker.session_of("", f"late-{n}") is not None for n in range(5))


def test_a_client_waiting_for_its_connect_turn_cannot_send_unbounded_data() -> None:
    hub = InMemoryHub(connects_per_turn=1, max_packet_size=1024)
    hub.connect("first")
    waiting = hub.client(V5)
    waiting.send(Connect(protocol_version=V5, client_id="waiting", clean_start=True))
    assert waiting.received() == []
    waiting.send_bytes(b"\x30" + b"\x7f" + b"x" * 2000)  # more than a CONNECT can be
    assert waiting.closed
    hub.advance(0)
    assert hub.broker.session_of("", "waiting") is None


def test_connection_ends_beyond_the_turn_budget_are_wound_down_in_the_next_turns() -> None:
    """``mqtt.disconnects_per_turn``: a fleet dropping at once has its sessions wound down a
    few per turn (wills, expiry, observers), in order, and none is forgotten."""
    hub = InMemoryHub(disconnects_per_turn=2)
    watcher = hub.connect("watcher")
    watcher.subscribe("wills/#")
    devices = [
        hub.connect(f"dev-{n}", will=Will(topic=f"wills/{n}", payload=b"gone")) for n in range(5)
    ]
    hub.advance(0)
    for device in devices:
        device.drop()
    hub.settle()  # every connection_lost arrives in this one turn
    assert [p.topic for p in watcher.publishes()] == ["wills/0", "wills/1"]
    assert hub.broker.session_of("", "dev-4") is not None  # not wound down yet
    hub.advance(0)  # the next turns (the test clock runs every turn due now at once)
    assert [p.topic for p in watcher.publishes()] == ["wills/2", "wills/3", "wills/4"]
    assert all(hub.broker.session_of("", f"dev-{n}") is None for n in range(5))


def test_a_client_back_before_its_old_connection_was_wound_down_takes_the_session_over() -> None:
    hub = InMemoryHub(disconnects_per_turn=1)
    other = hub.connect("other")
    old = hub.connect("dev", session_expiry=60)
    old.subscribe("t")
    hub.advance(0)
    other.drop()
    old.drop()
    hub.settle()  # "other" used this turn's budget: "dev" waits for the next turn
    session = hub.broker.session_of("", "dev")
    assert session is not None and session.client is old.server  # not wound down yet
    back = hub.client(V5)
    ack = back.connect("dev", clean_start=False, session_expiry=60)
    assert ack.session_present
    hub.advance(0)  # the old connection's late wind-down does not end the resumed session
    session = hub.broker.session_of("", "dev")
    assert session is not None and session.client is not None
    publisher = hub.connect("pub")
    publisher.publish("t", b"still subscribed", qos=1)
    assert [p.payload for p in back.publishes()] == [b"still subscribed"]
