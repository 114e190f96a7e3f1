"""The in-memory ``BrokerStore``: keeps the journal's result in dicts. It survives a broker
restart within one process (tests use that to prove the interface is enough to recover) but
not the process itself. Commits are immediate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ..message import Message
from .base import QueuedDelivery, StoredDelivery, StoredSession, StoredState, StoredSubscription


class MemoryStore:
    # Commits are immediate, so the store never falls behind, and it has no writer to fail.
    accepting = True
    failed: str | None = None

    def __init__(self) -> None:
        self._sessions: dict[str, StoredSession] = {}
        self._messages: dict[int, Message] = {}
        self._refcounts: dict[int, int] = {}
        self._retained: dict[tuple[str, str], Message] = {}
        # BrokerStore.sequence; every write is durable (in this process) at once.
        self.sequence = 0

    def save_session(self, session_key: str, expiry_interval: int) -> None:
        self.sequence += 1
        session = self._sessions.get(session_key)
        if session is None:
            account, _, client_id = session_key.partition("\x00")
            self._sessions[session_key] = StoredSession(client_id, expiry_interval, account)
        else:
            session.expiry_interval = expiry_interval

    def delete_session(self, session_key: str) -> None:
        self.sequence += 1
        session = self._sessions.pop(session_key, None)
        if session is not None:
            for delivery in session.deliveries:
                self._release_message(delivery.message_id)

    def session_connected(self, session_key: str) -> None:
        self.sequence += 1
        session = self._sessions.get(session_key)
        if session is not None:
            session.disconnected_at_ms = None

    def session_disconnected(self, session_key: str, at_ms: int) -> None:
        self.sequence += 1
        session = self._sessions.get(session_key)
        if session is not None:
            session.disconnected_at_ms = at_ms

    def save_subscription(self, session_key: str, subscription: StoredSubscription) -> None:
        self.sequence += 1
        session = self._sessions.get(session_key)
        if session is not None:
            session.subscriptions[subscription.full_filter] = subscription

    def delete_subscription(self, session_key: str, full_filter: str) -> None:
        self.sequence += 1
        session = self._sessions.get(session_key)
        if session is not None:
            session.subscriptions.pop(full_filter, None)

    def save_message(self, message: Message) -> None:
        self.sequence += 1
        self._messages[message.id] = message

    def add_delivery(self, session_key: str, delivery: StoredDelivery) -> None:
        self.sequence += 1
        session = self._sessions.get(session_key)
        if session is not None:
            session.deliveries.append(delivery)
            self._refcounts[delivery.message_id] = self._refcounts.get(delivery.message_id, 0) + 1

    def _find(
        self, session_key: str, match: Callable[[StoredDelivery], bool]
    ) -> StoredDelivery | None:
        session = self._sessions.get(session_key)
        if session is None:
            return None
        for delivery in session.deliveries:
            if match(delivery):
                return delivery
        return None

    def set_packet_id(self, session_key: str, message_id: int, packet_id: int) -> None:
        self.sequence += 1
        delivery = self._find(session_key, lambda d: d.message_id == message_id and not d.packet_id)
        if delivery is not None:
            delivery.packet_id = packet_id

    def set_released(self, session_key: str, packet_id: int) -> None:
        self.sequence += 1
        delivery = self._find(session_key, lambda d: d.packet_id == packet_id)
        if delivery is not None:
            delivery.released = True

    def remove_delivery(self, session_key: str, message_id: int) -> None:
        self.sequence += 1
        session = self._sessions.get(session_key)
        if session is None:
            return
        for index, delivery in enumerate(session.deliveries):
            if delivery.message_id == message_id:
                del session.deliveries[index]
                self._release_message(message_id)
                return

    def _release_message(self, message_id: int) -> None:
        count = self._refcounts.get(message_id, 0) - 1
        if count > 0:
            self._refcounts[message_id] = count
        else:
            self._refcounts.pop(message_id, None)
            self._messages.pop(message_id, None)

    def set_inbound_qos2(self, session_key: str, packet_id: int, present: bool) -> None:
        self.sequence += 1
        session = self._sessions.get(session_key)
        if session is None:
            return
        if present:
            session.inbound_qos2.add(packet_id)
        else:
            session.inbound_qos2.discard(packet_id)

    def save_retained(self, message: Message) -> None:
        self.sequence += 1
        self._retained[(message.account, message.topic)] = message

    def delete_retained(self, account: str, topic: str) -> None:
        self.sequence += 1
        self._retained.pop((account, topic), None)

    def on_failed(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Never called: this store cannot fail."""
        return _nothing

    def after_commit(self, callback: Callable[[], None]) -> None:
        callback()

    def read_queued(
        self,
        session_key: str,
        limit: int,
        callback: Callable[[list[QueuedDelivery]], None],
    ) -> None:
        session = self._sessions.get(session_key)
        found: list[QueuedDelivery] = []
        if session is not None:
            for delivery in session.deliveries:
                if len(found) >= limit:
                    break
                if not delivery.packet_id:
                    found.append((replace(delivery), self._messages[delivery.message_id]))
        callback(found)

    def load(self) -> StoredState:
        """As ``SQLiteStore.load``: in-flight deliveries listed, queued ones counted."""
        sessions: dict[str, StoredSession] = {}
        messages: dict[int, Message] = {}
        for key, stored in self._sessions.items():
            copy = replace(
                stored,
                subscriptions=dict(stored.subscriptions),
                deliveries=[],
                inbound_qos2=set(stored.inbound_qos2),
                queued=0,
                queued_bytes=0,
            )
            for delivery in stored.deliveries:
                message = self._messages[delivery.message_id]
                if delivery.packet_id:
                    copy.deliveries.append(replace(delivery))
                    messages[message.id] = message
                else:
                    copy.queued += 1
                    copy.queued_bytes += len(message.payload) + len(message.topic)
            sessions[key] = copy
        return StoredState(
            sessions=sessions, messages=messages, retained=list(self._retained.values())
        )


def _nothing() -> None:
    pass
