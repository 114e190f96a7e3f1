"""A bug in a hook must cost one connection, never the hub."""

from __future__ import annotations

import pytest
from harness import V5, InMemoryHub

from thinghub.broker.auth import ClientInfo, Decision
from thinghub.mqtt.packets import Disconnect
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
