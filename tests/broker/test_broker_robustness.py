"""A bug in a hook must cost one connection, never the hub."""

from __future__ import annotations

import pytest
from harness import V5, InMemoryHub

from thinghub.broker.auth import ClientInfo, Decision
from thinghub.mqtt.packets import ConnAck, Connect, Disconnect
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
