"""Fuzzing the decoder: whatever the bytes, only MQTTError subclasses may escape (never
IndexError, struct.error, UnicodeDecodeError, ...)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from thinghub.mqtt.codec import Decoder, decode_packet, encode
from thinghub.mqtt.errors import MQTTError
from thinghub.mqtt.packets import (
    ConnAck,
    Connect,
    Disconnect,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
    Will,
)
from thinghub.mqtt.properties import Properties
from thinghub.mqtt.types import ProtocolVersion

VERSIONS = st.sampled_from([None, ProtocolVersion.V31, ProtocolVersion.V311, ProtocolVersion.V5])

SEEDS = [
    (
        encode(
            Connect(
                protocol_version=v,
                client_id="client",
                username="u",
                password=b"p",
                will=Will(
                    topic="w/t",
                    payload=b"bye",
                    qos=1,
                    properties=Properties(will_delay_interval=3, content_type="c")
                    if v == ProtocolVersion.V5
                    else Properties(),
                ),
                properties=Properties(receive_maximum=5, user_properties=(("a", "b"),))
                if v == ProtocolVersion.V5
                else Properties(),
                protocol_name="MQIsdp" if v == ProtocolVersion.V31 else "MQTT",
            ),
            v,
        ),
        v,
    )
    for v in ProtocolVersion
]
for _v in (ProtocolVersion.V311, ProtocolVersion.V5):
    _props = (
        Properties(topic_alias=3, subscription_identifiers=(7,), correlation_data=b"x")
        if _v == ProtocolVersion.V5
        else Properties()
    )
    SEEDS += [
        (
            encode(Publish(topic="a/b", payload=b"xyz", qos=1, packet_id=9, properties=_props), _v),
            _v,
        ),
        (encode(Publish(topic="a", payload=b"q"), _v), _v),
        (
            encode(
                Subscribe(
                    packet_id=2,
                    subscriptions=(Subscription(topic_filter="a/#", qos=1),),
                ),
                _v,
            ),
            _v,
        ),
        (encode(SubAck(packet_id=2, reason_codes=(0, 1)), _v), _v),
        (encode(ConnAck(session_present=True), _v), _v),
        (encode(Disconnect(reason_code=0x8E if _v == ProtocolVersion.V5 else 0), _v), _v),
    ]


def _feed(version: ProtocolVersion | None, data: bytes, max_size: int = 1 << 16) -> None:
    d = Decoder(max_size)
    d.version = version
    try:
        d.feed(data)
    except MQTTError:
        pass


@settings(max_examples=2000, deadline=None)
@given(version=VERSIONS, data=st.binary(max_size=200))
def test_fuzz_random_bytes(version: ProtocolVersion | None, data: bytes) -> None:
    _feed(version, data)


@settings(max_examples=2000, deadline=None)
@given(
    version=VERSIONS.filter(lambda v: v is not None),
    first=st.integers(0, 255),
    body=st.binary(max_size=100),
)
def test_fuzz_decode_packet_bodies(version: ProtocolVersion, first: int, body: bytes) -> None:
    try:
        decode_packet(first, body, version)
    except MQTTError:
        pass


@settings(max_examples=3000, deadline=None)
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 10_000),
)
def test_fuzz_mutated_valid_packets(
    seed: tuple[bytes, ProtocolVersion], edits: list[tuple[int, int]], cut: int
) -> None:
    wire, version = seed
    data = bytearray(wire)
    for where, value in edits:
        data[where % len(data)] = value
    start_version = None if data[0] >> 4 == 1 else version
    # Mutate the body while keeping the header honest too, so the body decoders are reached.
    _feed(start_version, bytes(data))
    body = bytes(data[2:])[: cut % (len(data) + 1)]
    try:
        decode_packet(data[0], body, version)
    except MQTTError:
        pass
