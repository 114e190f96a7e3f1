"""The ``$SYS/broker/...`` topics, as mosquitto publishes them (a useful subset).

Every ``mqtt.sys_interval`` seconds (10; 0: never) the hub publishes its figures as retained
QoS 0 messages in the root account's topic space, through ``Broker.publish`` like any other
message (publisher ``HUB_SERVICE``), only the topics whose value changed since the last round.
Who may read them is ``sysaccess.py``'s business; why hub-wide figures live in the root
account only is said there too.

=============================================  ==============================================
topic                                          value
=============================================  ==============================================
``$SYS/broker/version``                        ``ThingHub <version>``
``$SYS/broker/uptime``                         ``<n> seconds``
``$SYS/broker/clients/connected``              clients connected now
``$SYS/broker/clients/disconnected``           sessions whose client is not connected
``$SYS/broker/clients/total``                  sessions, connected or not
``$SYS/broker/messages/received``              messages accepted since the start (every way
                                               in; the hub's own ``$SYS`` messages not counted)
``$SYS/broker/messages/sent``                  copies written to subscribers since the start
``$SYS/broker/publish/messages/dropped``       messages or copies dropped since the start
``$SYS/broker/load/messages/received/1min``    messages received per minute, moving average
                                               over 1 minute (also ``5min``, ``15min``)
``$SYS/broker/load/messages/sent/1min``        the same for copies sent
``$SYS/broker/subscriptions/count``            subscriptions of all sessions
``$SYS/broker/retained messages/count``        retained messages of all accounts
``$SYS/broker/store/messages/count``           QoS 1/2 copies queued for sessions
``$SYS/broker/store/messages/bytes``           their bytes
=============================================  ==============================================

The loads are mosquitto's exponentially damped averages: at each round the rate of the last
interval, in messages per minute, is blended in with the weight ``1 - exp(-interval/period)``.

The retained values survive a restart in ``broker.db`` like any retained message; the first
round after a start replaces them, and :meth:`SysTopics.forget_stale` removes ``$SYS``
topics no longer published (all of them when ``sys_interval`` is 0).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from .. import __version__
from ..broker.admission import HUB_SERVICE, PublishRefused
from ..broker.broker import Broker
from ..message import Message
from .figures import broker_figures
from .sysaccess import is_sys_topic

__all__ = ["SysTopics"]

log = logging.getLogger("thinghub.sys")

_PREFIX = "$SYS/broker/"
_PERIODS = (("1min", 60.0), ("5min", 300.0), ("15min", 900.0))


class SysTopics:
    """Publishes the ``$SYS`` topics of one broker in ``account`` (the root account)."""

    def __init__(self, broker: Broker, account: str, interval: float, started: float) -> None:
        """``started``: ``time.monotonic()`` when the hub started (the uptime's origin)."""
        self._broker = broker
        self._account = account
        self._interval = interval
        self._started = started
        self._timer: asyncio.TimerHandle | None = None
        # The value last published per topic: only changes are published again.
        self._last: dict[str, str] = {}
        # Messages this publisher sent (left out of messages/received).
        self.published = 0
        self._refused_logged = False
        # For the loads: the previous round's time and counts, and the averages.
        self._round_at: float | None = None
        self._counts = (0, 0)
        self._loads: dict[str, float] = {}

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Publish now, then every interval."""
        self.publish_round()
        self._timer = loop.call_later(self._interval, self._tick, loop)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self.publish_round()
        except Exception:
            log.exception("publishing the $SYS topics failed")
        self._timer = loop.call_later(self._interval, self._tick, loop)

    def values(self, *, advance: bool = True) -> dict[str, str]:
        """Every topic and its value now; ``advance``: count this as a round of the loads."""
        broker = self._broker
        stats = broker.stats
        figures = broker_figures(broker)
        now = time.monotonic()
        received = stats.messages_received - self.published
        sent = stats.messages_delivered
        if advance:
            self._advance_loads(now, received, sent)
        found = {
            "version": f"ThingHub {__version__}",
            "uptime": f"{int(now - self._started)} seconds",
            "clients/connected": str(figures.connected),
            "clients/disconnected": str(figures.sessions - figures.connected),
            "clients/total": str(figures.sessions),
            "messages/received": str(received),
            "messages/sent": str(sent),
            "publish/messages/dropped": str(sum(stats.drops().values())),
            "subscriptions/count": str(figures.subscriptions),
            "retained messages/count": str(figures.retained),
            "store/messages/count": str(figures.queued),
            "store/messages/bytes": str(figures.queued_bytes),
        }
        for kind in ("received", "sent"):
            for period, _seconds in _PERIODS:
                load = self._loads.get(f"{kind}/{period}", 0.0)
                found[f"load/messages/{kind}/{period}"] = f"{load:.2f}"
        return {_PREFIX + topic: value for topic, value in found.items()}

    def _advance_loads(self, now: float, received: int, sent: int) -> None:
        last = self._round_at
        self._round_at = now
        previous, self._counts = self._counts, (received, sent)
        if last is None or now <= last:
            return
        elapsed = now - last
        for kind, count, before in (
            ("received", received, previous[0]),
            ("sent", sent, previous[1]),
        ):
            per_minute = (count - before) * 60.0 / elapsed
            for period, seconds in _PERIODS:
                weight = math.exp(-elapsed / seconds)
                key = f"{kind}/{period}"
                self._loads[key] = per_minute + weight * (self._loads.get(key, 0.0) - per_minute)

    def publish_round(self) -> None:
        for topic, value in self.values().items():
            if self._last.get(topic) == value:
                continue
            if not self._publish(topic, value.encode()):
                return
            self._last[topic] = value

    def _publish(self, topic: str, payload: bytes) -> bool:
        message = Message(
            topic=topic, payload=payload, qos=0, retain=True, account=self._account, origin="$SYS"
        )
        try:
            self._broker.publish(message, HUB_SERVICE)
        except PublishRefused as refusal:
            # The root account's retained limits (mqtt.max_retained_*): tried again next round.
            if not self._refused_logged:
                self._refused_logged = True
                log.warning("$SYS topics not published: %s", refusal.reason)
            return False
        self.published += 1
        return True

    def forget_stale(self) -> None:
        """Delete the retained ``$SYS`` topics of an earlier run that this one does not
        publish (an empty retained message deletes one, MQTT 3.3.1.3)."""
        keep = set(self.values(advance=False)) if self._interval else set()
        for message in self._broker.retained_messages(self._account):
            if is_sys_topic(message.topic) and message.topic not in keep:
                self._publish(message.topic, b"")
