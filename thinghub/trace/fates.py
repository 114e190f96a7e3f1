"""What can happen to one copy of a message on its way to one session: the events a delivery
trace records, as small ints (a tuple of ints per event is what the hot path can afford), and
the stable names the trace's JSON shows for them (docs/architecture.md, *Delivery trace*).

The events follow the session queue's life of a copy (thinghub/broker/queue.py): a QoS 0 copy
is SENT or dropped at once; a QoS 1/2 copy is SENT at once or QUEUED (window full, client
offline, others ahead of it), then SENT, RESENT after a reconnect (DUP, §4.4), RECEIVED
(QoS 2 PUBREC, §4.3.3) and ACKNOWLEDGED (PUBACK, or PUBCOMP), unless it is dropped on the way.
"""

from __future__ import annotations

from typing import Final

SENT: Final = 0  # the PUBLISH was written to the client's connection (first transmission)
QUEUED: Final = 1  # kept for later: in memory or on disk
RESENT: Final = 2  # sent again after a reconnect: PUBLISH with DUP, or PUBREL (§4.4)
RECEIVED: Final = 3  # QoS 2: PUBREC received, PUBREL sent, PUBCOMP awaited (§4.3.3)
ACKNOWLEDGED: Final = 4  # PUBACK (QoS 1) or PUBCOMP (QoS 2): the flow is complete
# Drops: nothing more will happen to the copy.
QUEUE_FULL: Final = 5  # the session's queue was at mqtt.max_queued_messages/_bytes
SLOW_CONSUMER: Final = 6  # QoS 0 and the connection's write buffer past mqtt.max_write_buffer
OFFLINE_QOS0: Final = 7  # QoS 0 and the session had no connection (QoS 0 is not kept, §4.1)
TOO_LARGE: Final = 8  # bigger than the client's Maximum Packet Size [MQTT-3.1.2-25]
EXPIRED: Final = 9  # its Message Expiry Interval (§3.3.2.3.3) or the store's retention passed
SESSION_ENDED: Final = 10  # the session ended (expired, clean start, taken over) first
# The topic is hidden from subscribers (mqtt.deny_subscribe), or the client may not receive it
# (its policy: AWS IoT's iot:Receive).
NOT_AUTHORIZED: Final = 11
REFUSED: Final = 12  # the receiver refused it: PUBREC with a reason code >= 0x80 (§3.5.2.1)

#: JSON names, by event
NAMES: Final = (
    "sent",
    "queued",
    "resent",
    "received",
    "acknowledged",
    "queue_full",
    "slow_consumer",
    "offline_qos0",
    "too_large",
    "expired",
    "session_ended",
    "not_authorized",
    "refused_by_receiver",
)
COUNT: Final = len(NAMES)
FIRST_DROP: Final = QUEUE_FULL

#: what each drop means, for people (the command line's report)
DROP_TEXT: Final = {
    QUEUE_FULL: "the session's queue was full (mqtt.max_queued_messages / max_queued_bytes)",
    SLOW_CONSUMER: "QoS 0 to a slow consumer: its write buffer was past mqtt.max_write_buffer",
    OFFLINE_QOS0: "QoS 0 and the session was offline: QoS 0 messages are not kept",
    TOO_LARGE: "larger than the Maximum Packet Size the client accepts",
    EXPIRED: "its Message Expiry Interval (or the store's retention) passed before it was sent",
    SESSION_ENDED: "the session ended before the message was delivered",
    NOT_AUTHORIZED: "not authorised: the topic is hidden from subscribers (mqtt.deny_subscribe) "
    "or the client's policy does not let it receive it",
    REFUSED: "the client refused it (PUBREC with an error reason code)",
}


def is_drop(event: int) -> bool:
    return event >= FIRST_DROP
