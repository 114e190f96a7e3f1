"""Broker sessions (MQTT 5.0 §3.1, §4.1; 3.1.1 §3.1): clean start, session present, session
expiry and its DISCONNECT override, takeover, assigned client ids, keep alive, connect
timeout, connection limits and refused CONNECTs, server shutdown."""

from __future__ import annotations

import pytest
from harness import V5, V311, InMemoryHub, TestClient, both_versions

from thinghub.broker.auth import Decision
from thinghub.mqtt.codec import encode
from thinghub.mqtt.packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    PubAck,
    SubAck,
    Subscribe,
    Subscription,
)
from thinghub.mqtt.properties import Properties
from thinghub.mqtt.types import ConnackReturnCode, ProtocolVersion, ReasonCode


def persistent(
    hub: InMemoryHub, client_id: str, version: ProtocolVersion, expiry: int = 100
) -> TestClient:
    """A connection with a session that outlives it (v5: Session Expiry ``expiry``)."""
    return hub.connect(client_id, version, clean_start=False, session_expiry=expiry)


def reconnect(
    hub: InMemoryHub, client_id: str, version: ProtocolVersion, expiry: int = 100
) -> tuple[TestClient, ConnAck]:
    client = hub.client(version)
    ack = client.connect(client_id, clean_start=False, session_expiry=expiry)
    assert ack.reason_code == 0
    return client, ack


# ---------------------------------------------------------------------------- session present


@both_versions
def test_first_connect_has_no_session(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    _, ack = reconnect(hub, "dev", version)
    assert ack.session_present is False


@both_versions
def test_session_present_and_subscriptions_kept(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    sub = persistent(hub, "sub", version)
    sub.subscribe("a/b", qos=1)
    sub.disconnect()
    again, ack = reconnect(hub, "sub", version)
    assert ack.session_present is True
    pub = hub.connect("pub", version)
    pub.publish("a/b", b"x", qos=1)
    again.expect_publish("a/b", b"x", qos=1)


@both_versions
def test_clean_start_discards_session(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    sub = persistent(hub, "sub", version)
    sub.subscribe("a/b", qos=1)
    sub.disconnect()
    pub = hub.connect("pub", version)
    pub.publish("a/b", b"queued", qos=1)
    clean = hub.client(version)
    ack = clean.connect("sub", clean_start=True)
    assert ack.session_present is False  # [MQTT-3.2.2-2]
    pub.publish("a/b", b"later", qos=1)
    clean.assert_nothing_pending()  # neither the queued message nor the subscription survive


@both_versions
def test_clean_session_ends_with_the_connection(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", version, clean_start=True)
    sub.subscribe("a/b", qos=1)
    sub.drop()
    again, ack = reconnect(hub, "sub", version)
    assert ack.session_present is False
    hub.connect("pub", version).publish("a/b", b"x", qos=1)
    again.assert_nothing_pending()


def test_v3_persistent_session_is_capped_by_max_session_expiry() -> None:
    hub = InMemoryHub(max_session_expiry=50)
    sub = persistent(hub, "sub", V311)
    sub.subscribe("t", qos=1)
    sub.drop()
    hub.advance(49)
    again, ack = reconnect(hub, "sub", V311)
    assert ack.session_present is True
    again.drop()
    hub.advance(50)
    _, ack = reconnect(hub, "sub", V311)
    assert ack.session_present is False


def test_v3_session_can_last_forever_when_allowed() -> None:
    hub = InMemoryHub(max_session_expiry=0xFFFFFFFF)
    sub = persistent(hub, "sub", V311)
    sub.drop()
    hub.advance(10 * 365 * 24 * 3600)
    assert not hub.clock.pending()
    _, ack = reconnect(hub, "sub", V311)
    assert ack.session_present is True


# ---------------------------------------------------------------------------- session expiry


@pytest.mark.parametrize("ended_by", ["drop", "disconnect"])
def test_session_expires_after_the_interval(ended_by: str) -> None:
    hub = InMemoryHub()
    sub = persistent(hub, "sub", V5, expiry=30)
    sub.subscribe("t", qos=1)
    sub.drop() if ended_by == "drop" else sub.disconnect()
    pub = hub.connect("pub", V5)
    pub.publish("t", b"m", qos=1)
    hub.advance(30)
    again, ack = reconnect(hub, "sub", V5)
    assert ack.session_present is False
    again.assert_nothing_pending()  # the queued message went with the session
    ack2 = pub.publish("t", b"n", qos=1)
    assert isinstance(ack2, PubAck) and ack2.reason_code == ReasonCode.NO_MATCHING_SUBSCRIBERS


def test_session_resumed_before_expiry_with_queued_messages() -> None:
    hub = InMemoryHub()
    sub = persistent(hub, "sub", V5, expiry=30)
    sub.subscribe("t", qos=1)
    sub.drop()
    pub = hub.connect("pub", V5)
    for i in range(3):
        pub.publish("t", b"m%d" % i, qos=1)
    pub.publish("t", b"qos0", qos=0)  # not kept for an offline session
    hub.advance(29.5)
    again, ack = reconnect(hub, "sub", V5, expiry=30)
    assert ack.session_present is True
    assert [p.payload for p in again.publishes()] == [b"m0", b"m1", b"m2"]


def test_session_expiry_restarts_on_each_disconnect() -> None:
    hub = InMemoryHub()
    sub = persistent(hub, "sub", V5, expiry=30)
    sub.drop()
    hub.advance(20)
    again, _ = reconnect(hub, "sub", V5, expiry=30)
    hub.advance(100)  # connected: the session does not expire
    again.drop()
    hub.advance(29)
    _, ack = reconnect(hub, "sub", V5, expiry=30)
    assert ack.session_present is True


def test_requested_expiry_above_maximum_is_capped_and_announced() -> None:
    hub = InMemoryHub(max_session_expiry=60)
    client = hub.client(V5)
    ack = client.connect("c", clean_start=False, session_expiry=0xFFFFFFFF)
    assert ack.properties.session_expiry_interval == 60  # §3.2.2.3.2
    client.drop()
    hub.advance(60)
    _, ack = reconnect(hub, "c", V5)
    assert ack.session_present is False


def test_accepted_expiry_is_not_echoed() -> None:
    hub = InMemoryHub()
    ack = hub.client(V5).connect("c", session_expiry=60)
    assert ack.properties.session_expiry_interval is None


def test_disconnect_extends_session_expiry() -> None:
    hub = InMemoryHub()
    sub = persistent(hub, "sub", V5, expiry=10)
    sub.disconnect(properties=Properties(session_expiry_interval=100))
    hub.advance(99)
    _, ack = reconnect(hub, "sub", V5)
    assert ack.session_present is True


def test_disconnect_shortens_session_expiry_to_zero() -> None:
    hub = InMemoryHub()
    sub = persistent(hub, "sub", V5, expiry=100)
    sub.subscribe("t", qos=1)
    sub.disconnect(properties=Properties(session_expiry_interval=0))
    _, ack = reconnect(hub, "sub", V5)
    assert ack.session_present is False


def test_disconnect_session_expiry_is_capped() -> None:
    hub = InMemoryHub(max_session_expiry=50)
    sub = persistent(hub, "sub", V5, expiry=10)
    sub.disconnect(properties=Properties(session_expiry_interval=1000))
    hub.advance(50)
    _, ack = reconnect(hub, "sub", V5)
    assert ack.session_present is False


def test_disconnect_nonzero_expiry_after_zero_is_protocol_error() -> None:
    hub = InMemoryHub()
    client = hub.connect("c", V5, session_expiry=0)
    client.send(Disconnect(properties=Properties(session_expiry_interval=60)))
    client.expect_closed(ReasonCode.PROTOCOL_ERROR)  # [MQTT-3.14.2-2], §4.13
    assert hub.stats.protocol_errors == 1
    _, ack = reconnect(hub, "c", V5)
    assert ack.session_present is False  # the session still ended with the connection


# ---------------------------------------------------------------------------- takeover


@both_versions
def test_takeover_closes_the_old_connection(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    old = persistent(hub, "dev", version)
    old.subscribe("t", qos=1)
    new, ack = reconnect(hub, "dev", version)
    assert ack.session_present is True
    old.expect_closed(ReasonCode.SESSION_TAKEN_OVER)  # [MQTT-3.1.4-3]
    hub.connect("pub", version).publish("t", b"x", qos=1)
    new.expect_publish("t", b"x")
    assert old.link.writes_after_close == 0


@both_versions
def test_takeover_with_clean_start_gives_fresh_session(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    old = persistent(hub, "dev", version)
    old.subscribe("t", qos=1)
    new = hub.client(version)
    ack = new.connect("dev", clean_start=True)
    assert ack.session_present is False
    old.expect_closed(ReasonCode.SESSION_TAKEN_OVER)
    hub.connect("pub", version).publish("t", b"x", qos=1)
    new.assert_nothing_pending()


@both_versions
def test_takeover_of_clean_session_does_not_resume_it(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    old = hub.connect("dev", version, clean_start=True)
    old.subscribe("t", qos=1)
    new, ack = reconnect(hub, "dev", version)
    old.expect_closed(ReasonCode.SESSION_TAKEN_OVER)
    assert ack.session_present is False
    hub.connect("pub", version).publish("t", b"x", qos=1)
    new.assert_nothing_pending()


def test_connection_without_connect_is_not_taken_over() -> None:
    # A connection that has not sent CONNECT has no client id: a new "dev" is no takeover.
    hub = InMemoryHub()
    silent = hub.client(V5)
    hub.connect("dev", V5)
    assert not silent.closed


# ---------------------------------------------------------------------------- client ids


def test_v5_empty_client_id_is_assigned() -> None:
    hub = InMemoryHub()
    one = hub.client(V5)
    ack = one.connect("")
    assigned = ack.properties.assigned_client_identifier
    assert assigned  # [MQTT-3.2.2-16]
    two = hub.client(V5)
    other = two.connect("").properties.assigned_client_identifier
    assert other and other != assigned
    assert not one.closed  # distinct ids: no takeover


def test_v5_assigned_id_can_resume_its_session() -> None:
    hub = InMemoryHub()
    client = hub.client(V5)
    ack = client.connect("", clean_start=False, session_expiry=60)
    assigned = ack.properties.assigned_client_identifier
    assert assigned is not None
    client.subscribe("t", qos=1)
    client.drop()
    _, ack = reconnect(hub, assigned, V5)
    assert ack.session_present is True


def test_v3_empty_client_id_with_clean_session() -> None:
    hub = InMemoryHub()
    client = hub.client(V311)
    ack = client.connect("", clean_start=True)
    assert ack.reason_code == ConnackReturnCode.ACCEPTED
    assert ack.properties.assigned_client_identifier is None  # 3.1.1 cannot tell the client
    client.subscribe("t")
    hub.connect("pub", V311).publish("t", b"x")
    client.expect_publish("t", b"x")


def test_v3_empty_client_id_without_clean_session_is_rejected() -> None:
    hub = InMemoryHub()
    client = hub.client(V311)
    ack = client.connect("", clean_start=False)
    assert ack.reason_code == ConnackReturnCode.IDENTIFIER_REJECTED  # [MQTT-3.1.3-8]
    client.expect_closed()
    assert hub.stats.connections_refused == 1


@both_versions
def test_client_id_too_long_is_rejected(version: ProtocolVersion) -> None:
    hub = InMemoryHub(max_client_id_length=8)
    client = hub.client(version)
    ack = client.connect("x" * 9)
    if version == V5:
        assert ack.reason_code == ReasonCode.CLIENT_IDENTIFIER_NOT_VALID
        assert ack.properties.reason_string
    else:
        assert ack.reason_code == ConnackReturnCode.IDENTIFIER_REJECTED
    client.expect_closed()
    assert hub.connect("x" * 8, version)


# ---------------------------------------------------------------------------- keep alive


@both_versions
def test_keep_alive_enforced_at_one_and_a_half_times(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    client = hub.connect("c", version, keep_alive=10)
    hub.advance(14)
    assert not client.closed
    hub.advance(1)
    client.expect_closed(ReasonCode.KEEP_ALIVE_TIMEOUT)  # [MQTT-3.1.2-22]
    assert client.lost


@both_versions
def test_keep_alive_reset_by_any_packet(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    client = hub.connect("c", version, keep_alive=10)
    hub.advance(10)
    client.send(PingReq())
    client.expect(PingResp)
    hub.advance(14)  # 24 s after CONNECT, 14 s after the PINGREQ
    assert not client.closed
    hub.advance(1)
    client.expect_closed(ReasonCode.KEEP_ALIVE_TIMEOUT)


@both_versions
def test_keep_alive_zero_never_times_out(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    client = hub.connect("c", version, keep_alive=0)
    hub.advance(7 * 24 * 3600)
    assert not client.closed


def test_server_keep_alive_overrides_the_client() -> None:
    hub = InMemoryHub(server_keep_alive=10)
    client = hub.client(V5)
    ack = client.connect("c", keep_alive=600)
    assert ack.properties.server_keep_alive == 10  # §3.2.2.3.14, [MQTT-3.1.2-21]
    hub.advance(14.9)
    assert not client.closed
    hub.advance(0.1)
    client.expect_closed(ReasonCode.KEEP_ALIVE_TIMEOUT)


def test_no_server_keep_alive_property_unless_configured() -> None:
    ack = InMemoryHub().client(V5).connect("c", keep_alive=30)
    assert ack.properties.server_keep_alive is None


def test_v3_keeps_its_own_keep_alive_despite_server_keep_alive() -> None:
    # 3.1.1 has no way to tell the client, so its own value stands.
    hub = InMemoryHub(server_keep_alive=10)
    client = hub.connect("c", V311, keep_alive=100)
    hub.advance(149)
    assert not client.closed
    hub.advance(1)
    client.expect_closed()


def test_closed_connection_has_no_timers_left() -> None:
    hub = InMemoryHub()
    client = hub.connect("c", V5, keep_alive=10)
    client.disconnect()
    assert hub.clock.pending() == []


# ---------------------------------------------------------------------------- connect timeout


@both_versions
def test_connect_timeout(version: ProtocolVersion) -> None:
    hub = InMemoryHub(connect_timeout=5)
    client = hub.client(version)
    hub.advance(4.9)
    assert not client.closed
    hub.advance(0.1)
    client.expect_closed()  # nothing to say: no CONNECT, no protocol version
    assert client.link.chunks == []


def test_partial_connect_does_not_stop_the_connect_timeout() -> None:
    hub = InMemoryHub(connect_timeout=5)
    client = hub.client(V5)
    data = encode(Connect(protocol_version=V5, client_id="slowloris"), V5)
    client.send_bytes(data[:5])
    hub.advance(5)
    assert client.closed


def test_connect_in_time_cancels_the_timeout() -> None:
    hub = InMemoryHub(connect_timeout=5)
    client = hub.connect("c", V5)
    hub.advance(100)
    assert not client.closed
    assert hub.clock.pending() == []


# ---------------------------------------------------------------------------- limits, refusals


@both_versions
def test_max_connections(version: ProtocolVersion) -> None:
    hub = InMemoryHub(max_connections=2)
    hub.connect("a", version)
    hub.connect("b", version)
    third = hub.client(version)
    ack = third.connect("c")
    if version == V5:
        assert ack.reason_code == ReasonCode.SERVER_BUSY
    else:
        assert ack.reason_code == ConnackReturnCode.SERVER_UNAVAILABLE
    third.expect_closed()
    assert hub.stats.connections_refused == 1
    hub.clients[0].disconnect()
    assert hub.connect("c", version)  # a slot is free again


@both_versions
def test_anonymous_refused_when_disabled(version: ProtocolVersion) -> None:
    hub = InMemoryHub(allow_anonymous=False)
    client = hub.client(version)
    ack = client.connect("c")
    expected = ReasonCode.NOT_AUTHORIZED if version == V5 else ConnackReturnCode.NOT_AUTHORIZED
    assert ack.reason_code == expected
    client.expect_closed()
    assert hub.client(version).connect("c2", username="u").reason_code == 0


@both_versions
def test_custom_authenticator_reason(version: ProtocolVersion) -> None:
    class Banned:
        def authenticate(self, connect: Connect, peer: str) -> Decision:
            return Decision.deny(ReasonCode.BANNED)

    hub = InMemoryHub()
    hub.broker.authenticator = Banned()
    ack = hub.client(version).connect("c")
    expected = ReasonCode.BANNED if version == V5 else ConnackReturnCode.NOT_AUTHORIZED
    assert ack.reason_code == expected


def test_v5_authentication_method_refused() -> None:
    hub = InMemoryHub()
    client = hub.client(V5)
    ack = client.connect("c", properties=Properties(authentication_method="SCRAM-SHA-1"))
    assert ack.reason_code == ReasonCode.BAD_AUTHENTICATION_METHOD
    client.expect_closed()


def test_v5_connack_announces_limits() -> None:
    hub = InMemoryHub(receive_maximum=20, max_packet_size=4096, topic_alias_maximum=3)
    ack = hub.client(V5).connect("c")
    assert ack.properties.receive_maximum == 20
    assert ack.properties.maximum_packet_size == 4096
    assert ack.properties.topic_alias_maximum == 3
    assert ack.properties.maximum_qos is None  # 2 is the default and is not sent
    assert ack.properties.retain_available is None


def test_v5_connack_retain_not_available() -> None:
    hub = InMemoryHub(retain_available=False, topic_alias_maximum=0, receive_maximum=65535)
    ack = hub.client(V5).connect("c")
    assert ack.properties.retain_available == 0
    assert ack.properties.topic_alias_maximum is None
    assert ack.properties.receive_maximum is None


def test_v3_connack_has_no_properties() -> None:
    ack = InMemoryHub(max_qos=1).client(V311).connect("c")
    assert ack == ConnAck(session_present=False, reason_code=0)


# ---------------------------------------------------------------------------- protocol errors


@both_versions
def test_second_connect_is_a_protocol_error(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    client = hub.connect("c", version)
    client.send(Connect(protocol_version=version, client_id="c"))
    client.expect_closed(ReasonCode.PROTOCOL_ERROR)  # [MQTT-3.1.0-2]
    assert hub.stats.protocol_errors == 1


@both_versions
def test_packet_before_connect_closes_silently(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    client = hub.client(version)
    client.send(PingReq())
    client.expect_closed()  # [MQTT-3.1.0-1]
    assert client.link.chunks == []


def test_server_packet_from_client_is_a_protocol_error() -> None:
    hub = InMemoryHub()
    client = hub.connect("c", V5)
    client.send(PingResp())
    client.expect_closed(ReasonCode.PROTOCOL_ERROR)


def test_auth_packet_without_method_is_a_protocol_error() -> None:
    hub = InMemoryHub()
    client = hub.connect("c", V5)
    client.send(Auth(reason_code=ReasonCode.RE_AUTHENTICATE))
    client.expect_closed(ReasonCode.PROTOCOL_ERROR)


def test_data_after_close_is_ignored() -> None:
    hub = InMemoryHub()
    client = hub.connect("c", V5)
    client.send(Connect(protocol_version=V5, client_id="c"))
    client.expect_closed(ReasonCode.PROTOCOL_ERROR)
    client.server.data_received(b"\xc0\x00")  # a PINGREQ the transport still had
    assert client.link.chunks == []


def test_subscribe_is_handled_after_connect_in_the_same_read() -> None:
    hub = InMemoryHub()
    client = hub.client(V5)
    client.send(
        Connect(protocol_version=V5, client_id="c"),
        Subscribe(packet_id=1, subscriptions=(Subscription(topic_filter="t"),)),
    )
    client.expect(ConnAck)
    assert client.expect(SubAck).reason_codes == (0,)


# ---------------------------------------------------------------------------- shutdown


@both_versions
def test_close_all_disconnects_everyone(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    one = hub.connect("one", version)
    two = hub.connect("two", version)
    waiting = hub.client(version)  # no CONNECT yet: closed without a DISCONNECT
    hub.broker.close_all()
    hub.settle()
    one.expect_closed(ReasonCode.SERVER_SHUTTING_DOWN)
    two.expect_closed(ReasonCode.SERVER_SHUTTING_DOWN)
    waiting.expect_closed()
    assert hub.broker.clients == set()


def test_close_all_twice_sends_one_disconnect() -> None:
    hub = InMemoryHub()
    client = hub.connect("c", V5)
    hub.broker.close_all()
    hub.broker.close_all()  # a second signal before the transports reported the close
    hub.settle()
    client.expect_closed(ReasonCode.SERVER_SHUTTING_DOWN)
    assert client.link.close_calls == 1


def test_taken_over_connection_keep_alive_is_stopped() -> None:
    hub = InMemoryHub()
    old = hub.connect("dev", V5, keep_alive=10, clean_start=False, session_expiry=60)
    new = hub.client(V5)
    new.connect("dev", clean_start=False, session_expiry=60, keep_alive=0)
    old.expect_closed(ReasonCode.SESSION_TAKEN_OVER)
    assert hub.clock.pending() == []  # neither the old keep alive nor a session expiry
    hub.advance(100)
    assert not new.closed
