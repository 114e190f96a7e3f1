"""The one message type shared by MQTT, both HTTP dialects, the router and the store.

An MQTT PUBLISH, an Alibaba ``Pub`` and an AWS ``Publish`` all become a ``Message`` and go
through the same ``Broker.publish()``. MQTT 5 publish properties that travel with the message
(payload format, expiry, content type, response topic, correlation data, user properties) are
kept as one ``Properties`` value so they pass through untouched; the per-hop ones (topic alias,
subscription identifiers) are stripped before routing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .mqtt.properties import NO_PROPERTIES, Properties


@dataclass(slots=True, kw_only=True)
class Message:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = NO_PROPERTIES
    # A 63-bit, time-ordered id, assigned when the hub first needs one (persisting it, or
    # answering an HTTP publisher); 0 until then.
    id: int = 0
    # True once a BrokerStore holds this message's body.
    stored: bool = False
    # The account whose topic space the message lives in; "" is the default account.
    account: str = ""
    # Who sent it: an MQTT client id, or "http:<dialect>:<principal>".
    origin: str = ""
    # Message Expiry Interval in seconds as given by the publisher (§3.3.2.3.3); the broker
    # turns it into ``expires_at`` (a monotonic clock reading) when the message is published.
    expiry_interval: int | None = None
    received_at: float = 0.0
    expires_at: float | None = None
    # A queued copy read back from the store is dropped past this clock reading: the store's
    # retention period (7 days by default), which unlike ``expires_at`` is not sent.
    keep_until: float | None = None
    # Encoded PUBLISH bytes cached per (protocol family, qos, retain flag) so a fan-out encodes
    # once (see broker.delivery).
    encoded: dict[tuple[bool, int, bool], bytes] = field(default_factory=dict, repr=False)

    def remaining_expiry(self, now: float) -> int | None:
        """Seconds left of the Message Expiry Interval, as sent on delivery (§3.3.2.3.3)."""
        if self.expires_at is None:
            return None
        return max(0, int(self.expires_at - now + 0.999))

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at
