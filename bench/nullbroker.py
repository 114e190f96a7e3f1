"""A "null broker": the least work that still lets the generator run every scenario.

Used only to measure the load generator's own ceiling.  It runs in its own process
(pinned to the broker's core, like a real broker) and:

* answers CONNECT with CONNACK, SUBSCRIBE with SUBACK, PINGREQ with PINGRESP;
* routes PUBLISH by exact topic match, forwarding the *original bytes*: a run of
  consecutive packets with the same topic is forwarded as one slice to every
  subscriber, so single-topic scenarios (fan-in, fan-out, qos1) cost it one write per
  subscriber per read, not per message;
* acknowledges QoS 1 PUBLISH at once and ignores the subscribers' PUBACKs.

No retained messages, wildcards, sessions or queues: if a subscriber's socket backs up
the data simply accumulates in the transport; the generator's credit window bounds it.

Run as ``python -m bench.nullbroker --port P`` (127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import cast


class NullServer:
    def __init__(self) -> None:
        self.subs: dict[bytes, list[NullConn]] = {}


class NullConn(asyncio.Protocol):
    def __init__(self, server: NullServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.topics: list[bytes] = []
        self._buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence a cast.
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport

    def connection_lost(self, exc: Exception | None) -> None:
        for t in self.topics:
            lst = self.server.subs.get(t)
            if lst and self in lst:
                lst.remove(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        subs = self.server.subs
        n = len(data)
        i = 0
        run_topic: bytes | None = None
        run_start = 0
        acks: list[bytes] = []
        out: dict[NullConn, list[bytes]] = {}

        def flush(stop: int) -> None:
            if run_topic is not None and stop > run_start:
                dests = subs.get(run_topic)
                if dests:
                    chunk = data[run_start:stop]
                    for d in dests:
                        out.setdefault(d, []).append(chunk)

        while i + 2 <= n:
            rl = data[i + 1]
            start = i + 2
            if rl >= 0x80:
                rl &= 0x7F
                shift = 7
                while start < n and shift <= 21:
                    b = data[start]
                    start += 1
                    rl |= (b & 0x7F) << shift
                    if b < 0x80:
                        break
                    shift += 7
                else:
                    if shift > 21 and self.transport is not None:
                        self.transport.abort()
                        return
                    break
            end = start + rl
            if end > n:
                break
            b0 = data[i]
            if b0 & 0xF0 == 0x30:
                tlen = data[start] << 8 | data[start + 1]
                topic = data[start + 2 : start + 2 + tlen]
                if b0 & 0x06:
                    p = start + 2 + tlen
                    acks.append(b"\x40\x02" + data[p : p + 2])
                if topic != run_topic:
                    flush(i)
                    run_topic = topic
                    run_start = i
            else:
                flush(i)
                run_topic = None
                self._control(b0, data[start:end], acks)
            i = end
        flush(i)
        if i < n:
            self._buf = data[i:]
        if acks and self.transport is not None:
            self.transport.write(b"".join(acks))
        for dest, parts in out.items():
            if dest.transport is not None:
                dest.transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def _control(self, b0: int, body: bytes, out: list[bytes]) -> None:
        kind = b0 & 0xF0
        if kind == 0x10:  # CONNECT
            out.append(b"\x20\x02\x00\x00")
        elif kind == 0x80:  # SUBSCRIBE: packet id, then (topic, qos) pairs
            granted = bytearray()
            j = 2
            while j + 2 <= len(body):
                tlen = body[j] << 8 | body[j + 1]
                topic = body[j + 2 : j + 2 + tlen]
                qos = min(1, body[j + 2 + tlen]) if j + 2 + tlen < len(body) else 0
                self.server.subs.setdefault(topic, []).append(self)
                self.topics.append(topic)
                granted.append(qos)
                j += 3 + tlen
            out.append(bytes([0x90, 2 + len(granted)]) + body[:2] + bytes(granted))
        elif kind == 0xC0:  # PINGREQ
            out.append(b"\xd0\x00")
        elif kind == 0xE0 and self.transport is not None:  # DISCONNECT
            self.transport.close()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = NullServer()
    srv = await loop.create_server(lambda: NullConn(server), "127.0.0.1", port, backlog=4096)
    stop = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    async with srv:
        await stop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.port))
    except ImportError:
        asyncio.run(serve(args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
