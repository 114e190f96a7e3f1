"""What a receiver acknowledged lately, to tell a redelivery of it from a message still due.

JetStream may deliver a message again after the receiver completed it: the "+ACK" lost with
a NATS connection, a consumer leader elected on another NATS server that had not learnt of
the acknowledgement, a server coming back with older state. At QoS 2 sending it again would
be a second message to a receiver that completed the flow and forgot the packet id (§4.3.3),
so such a delivery is acknowledged again instead (cluster/consumers.py, cluster/groups.py).

How long to remember is a time, not a count: a redelivery comes within the consumer's ack
wait plus however long a NATS server takes to be replaced, whatever the message rate. So
stream sequences are kept in two generations of ``remember_s / 2`` seconds each (every
sequence is remembered for at least ``remember_s / 2``, at most ``remember_s``): arrays of
8 bytes a sequence, so the memory is the acknowledgement rate times ``remember_s``, at most
``max_entries`` a generation. A redelivery looks its sequence up with a scan (C speed);
redeliveries are rare.
"""

from __future__ import annotations

from array import array

__all__ = ["Completed"]


class Completed:
    __slots__ = ("_current", "_half", "_max_entries", "_previous", "_since", "highest")

    def __init__(self, remember_s: float, max_entries: int = 1_000_000) -> None:
        self._half = remember_s / 2
        self._max_entries = max_entries
        self._current: array[int] = array("Q")
        self._previous: array[int] = array("Q")
        self._since = 0.0
        # The highest sequence remembered: anything above it was never acknowledged here.
        self.highest = 0

    def add(self, sequence: int, now: float) -> None:
        if now - self._since >= self._half or len(self._current) >= self._max_entries:
            self._previous = self._current
            self._current = array("Q")
            self._since = now
        self._current.append(sequence)
        if sequence > self.highest:
            self.highest = sequence

    def __contains__(self, sequence: int) -> bool:
        return sequence <= self.highest and (
            sequence in self._current or sequence in self._previous
        )
