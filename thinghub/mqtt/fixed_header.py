"""What the first byte of a packet decides on its own, and the order in which a received
packet's errors are decided.

MQTT 5 names two errors for a bad packet (§1.2): a *Malformed Packet* (0x81) "cannot be parsed
according to this specification", a *Protocol Error* (0x82) "is detected after the packet has
been parsed and found to contain data that is not allowed by the protocol or is inconsistent
with the state of the Client or Server". A packet can be wrong in several ways at once (a
CONNACK from a client with reserved flags set and a short body), so the answer depends on the
order of the checks. The server decides in this order; the first rule that applies wins:

==== ===================== ============================================================ ======
step decided from          rule (server side, after the CONNECT)                         v5
==== ===================== ============================================================ ======
1    type nibble           type 0: reserved, "Forbidden" (§2.1.2 table 2-1). Like every  0x81
                           other reserved value (flags §2.1.3, CONNECT flag
                           [MQTT-3.1.2-3], subscription options [MQTT-3.8.3-5]) it makes
                           a Malformed Packet; it names no packet that could be
                           "unexpected". 3.1.1 reserves type 15 as well (3.1.1 §2.2.1).
1    type nibble           a second CONNECT ([MQTT-3.1.0-2])                             0x82
1    type nibble           CONNACK, SUBACK, UNSUBACK, PINGRESP: table 2-1 says they      0x82
                           flow Server to Client only
1    type nibble           AUTH when the CONNECT carried no Authentication Method        0x82
                           ([MQTT-4.12.0-7]: the Client MUST NOT send it). The hub
                           refuses every Authentication Method (CONNACK 0x8C), so after
                           a successful CONNECT this is every AUTH.
2    flags nibble          flags other than table 2-2 lists ([MQTT-2.1.3-1]: "If         0x81
                           invalid flags are received it is a Malformed Packet";
                           [MQTT-3.15.1-1] for AUTH); PUBLISH with QoS 3
                           ([MQTT-3.3.1-4]) or DUP with QoS 0 ([MQTT-3.3.1-2])
3    remaining length      more than 4 bytes or not minimally encoded (§1.5.5)           0x81
3    remaining length      the packet exceeds the Maximum Packet Size (§3.1.2.11.4)      0x95
4    body                  does not parse: a field cut short, bytes left over, a length  0x81
                           that contradicts the packet, ill-formed UTF-8 or U+0000
                           (§1.5.4), an unknown property or one the packet may not
                           carry (§2.2.2.2), reserved subscription option bits
5    parsed values         not allowed: packet identifier 0 ([MQTT-2.2.1-3]), a reason   0x82
                           code the packet does not define, a property out of range or   or the
                           repeated, a SUBSCRIBE / UNSUBSCRIBE without filters, ...;     code
                           a topic name with wildcards (0x90), Topic Alias 0 (0x94)      named
6    connection state      Topic Alias above the maximum or unknown (0x94 / 0x82),       (see
                           Receive Maximum exceeded (0x93), a Subscription Identifier    left)
                           from a client: ``connection.ServerConnection``
7    session state         everything the broker checks (``thinghub/broker/client.py``)
==== ===================== ============================================================ ======

Why the type comes first: the rules of step 1 do not depend on the body at all, so a body
that would also fail step 2 or 4 changes nothing about what is wrong. The server does not even
wait for that body: it answers as soon as the first byte arrives, and it never buffers a
packet it must refuse. Steps 1 and 2 are both read from the first byte; steps 4 and 5 are
kept apart by the codec, which notes the errors of step 5 while it parses and raises the first
of them only once the whole body has parsed (``codec.decode_packet``).

On MQTT 5 the answer is a DISCONNECT with the code (§4.13.1; CONNACK for an error in the
CONNECT); on 3.1.1 the same order decides the error, and the connection is just closed (3.1.1
§4.8). Before the CONNECT, anything but a CONNECT is a Protocol Error ([MQTT-3.1.0-1]) that is
answered with nothing.
"""

from __future__ import annotations

from typing import Final

from .errors import MalformedPacket, MQTTError, ProtocolError
from .types import PacketType, ProtocolVersion

__all__ = [
    "BEFORE_CONNECT",
    "PERMISSIVE",
    "REQUIRED_FLAGS",
    "Verdict",
    "Verdicts",
    "flags_error",
    "server_verdicts",
]

_T = PacketType

# §2.1.3 table 2-2: the fixed header flags of every packet type but PUBLISH.
REQUIRED_FLAGS: Final[dict[int, int]] = {
    _T.PUBREL: 0b0010,
    _T.SUBSCRIBE: 0b0010,
    _T.UNSUBSCRIBE: 0b0010,
}

# §2.1.2 table 2-1, direction "Client to Server" or both. AUTH is added when the CONNECT
# carried an Authentication Method (§4.12).
_SERVER_RECEIVES: Final = frozenset(
    {
        _T.PUBLISH,
        _T.PUBACK,
        _T.PUBREC,
        _T.PUBREL,
        _T.PUBCOMP,
        _T.SUBSCRIBE,
        _T.UNSUBSCRIBE,
        _T.PINGREQ,
        _T.DISCONNECT,
    }
)

# An error class and its message; instantiated only when raised, so each raise gets its own
# exception and traceback.
Verdict = tuple[type[MQTTError], str]
# One entry per possible first byte: None when the byte is acceptable.
Verdicts = tuple[Verdict | None, ...]


def flags_error(first: int) -> str | None:
    """Why the flags of this first byte are invalid for its type (§2.1.3), or None."""
    ptype = first >> 4
    flags = first & 0x0F
    if ptype == _T.PUBLISH:
        qos = (flags >> 1) & 0x03
        if qos == 3:
            return "PUBLISH with QoS 3 ([MQTT-3.3.1-4])"
        if flags & 0x08 and not qos:
            return "PUBLISH with DUP set and QoS 0 ([MQTT-3.3.1-2])"
        return None
    if flags != REQUIRED_FLAGS.get(ptype, 0):
        return f"invalid flags 0x{flags:x} for packet type {ptype} ([MQTT-2.1.3-1])"
    return None


def _refusal(ptype: int, version: ProtocolVersion, auth_method: bool) -> Verdict | None:
    """Step 1 of the table for a server after the CONNECT."""
    if ptype == 0 or (ptype == _T.AUTH and version != ProtocolVersion.V5):
        return MalformedPacket, f"packet type {ptype} is reserved"
    if ptype == _T.CONNECT:
        return ProtocolError, "second CONNECT on one connection ([MQTT-3.1.0-2])"
    if ptype == _T.AUTH:
        if auth_method:
            return None
        return ProtocolError, "AUTH without an Authentication Method in CONNECT ([MQTT-4.12.0-7])"
    if ptype not in _SERVER_RECEIVES:
        name = PacketType(ptype).name
        return ProtocolError, f"a client may not send {name} (§2.1.2: Server to Client only)"
    return None


def _verdict(first: int, refusal: Verdict | None) -> Verdict | None:
    if refusal is not None:
        return refusal
    reason = flags_error(first)
    return None if reason is None else (MalformedPacket, reason)


def _server_table(version: ProtocolVersion, auth_method: bool) -> Verdicts:
    refusals = [_refusal(ptype, version, auth_method) for ptype in range(16)]
    return tuple(_verdict(first, refusals[first >> 4]) for first in range(256))


_SERVER_TABLES: Final = {
    (version, auth_method): _server_table(version, auth_method)
    for version in ProtocolVersion
    for auth_method in (False, True)
}


def server_verdicts(version: ProtocolVersion, *, auth_method: bool) -> Verdicts:
    """Steps 1 and 2 for every first byte, for a server whose client sent a CONNECT of
    ``version`` (with an Authentication Method, or not)."""
    return _SERVER_TABLES[version, auth_method]


def _before_connect(first: int) -> Verdict | None:
    ptype = first >> 4
    if ptype != _T.CONNECT:
        # [MQTT-3.1.0-1]: the first packet must be CONNECT; which protocol family the rest
        # follows is not even known yet.
        return ProtocolError, f"packet type {ptype} before CONNECT ([MQTT-3.1.0-1])"
    return _verdict(first, None)


def _permissive(first: int) -> Verdict | None:
    if not first >> 4:
        return MalformedPacket, "packet type 0 is reserved"
    return _verdict(first, None)


# Before any CONNECT (either role): only a CONNECT with flags 0.
BEFORE_CONNECT: Final[Verdicts] = tuple(_before_connect(first) for first in range(256))
# A decoder that plays no role (a client's, a test's): every defined type, with valid flags.
PERMISSIVE: Final[Verdicts] = tuple(_permissive(first) for first in range(256))
