"""The one publish path for the HTTP dialects: ``Broker.publish`` plus the wait that makes an
HTTP 200 mean what a PUBACK means (docs/architecture.md, "Acknowledged means stored")."""

from __future__ import annotations

import asyncio

from ..broker.admission import API_CALLER, PublishRefused, Refusal
from ..broker.broker import AckTicket, Broker
from ..message import Message
from ..registry.errors import StorageFull, StoreUnavailable

__all__ = [
    "COMMIT_TIMEOUT_S",
    "StorageFull",
    "StoreUnavailable",
    "committed",
    "publish",
    "publish_now",
    "replicated",
]

# ``StoreUnavailable`` (the store cannot take the work now: full, or its writer is behind or
# failing; nothing was published or changed) lives with the registry's errors so that the
# layers below HTTP raise it too: the registry's writes, the MessageId lease
# (registry/ids.py) and the shadow store raise ``StorageFull`` on a full disk. Each dialect
# maps it to its "service unavailable" in ONE place, its request handler (``aws/api.py``,
# ``aliyun/api.py``): 503, never 500.


# How long an HTTP publisher waits for the store's commit before it is told to try again.
COMMIT_TIMEOUT_S = 10.0


async def publish(broker: Broker, message: Message) -> int:
    """Publish ``message`` and return once whatever it changed in the store is committed.
    Returns how many sessions it was handed to. Assigns ``message.id`` if it has none.
    Raises StoreUnavailable, before publishing anything, when the store refuses new QoS 1/2
    work or no MessageId can be issued (``StorageFull``: its lease cannot be written), and if
    the commit does not come within COMMIT_TIMEOUT_S; PublishRefused when the
    admission gate refuses the message otherwise (broker/admission.py)."""
    if not message.id:
        message.id = broker.new_message_id()
    writes = broker.store.sequence
    tickets: list[AckTicket] = []
    matched = publish_now(broker, message, tickets)
    if broker.store.sequence != writes:
        await committed(broker)
    if tickets:
        await replicated(tickets)
    return matched


def publish_now(broker: Broker, message: Message, tickets: list[AckTicket] | None = None) -> int:
    """``Broker.publish`` as an API caller, with the store's refusal as StoreUnavailable.
    In a cluster, what its answer must also wait for (the message stream's acknowledgement,
    cluster/stream.py) is appended to ``tickets``: await ``replicated(tickets)``."""
    try:
        matched = broker.publish(message, API_CALLER)
    except PublishRefused as refusal:
        if refusal.kind is Refusal.UNAVAILABLE:
            raise StoreUnavailable(refusal.reason) from None
        raise
    cluster = broker.cluster
    if cluster is not None and tickets is not None:
        ticket = cluster.take_ticket()
        if ticket is not None:
            tickets.append(ticket)
    return matched


async def replicated(tickets: list[AckTicket]) -> None:
    """Wait until the cluster's message stream has stored every message of ``tickets``.
    Raises StoreUnavailable (HTTP 503, nothing acknowledged) when it refused one, or gave no
    answer within ``cluster.request_timeout`` (the ticket says so then)."""
    loop = asyncio.get_running_loop()
    for ticket in tickets:
        outcome: asyncio.Future[int] = loop.create_future()

        def settle(refused: int, outcome: asyncio.Future[int] = outcome) -> None:
            if not outcome.done():
                outcome.set_result(refused)

        ticket.then(settle)
        if await outcome:
            raise StoreUnavailable(
                "the cluster's message stream did not store the message; try again"
            )


async def committed(broker: Broker) -> None:
    """Wait until everything reported to the store so far is durable. Raises
    StoreUnavailable when the commit does not come within COMMIT_TIMEOUT_S, and at once when
    the store has failed (its writer stopped for good, ``BrokerStore.failed``): that commit
    will never come, and the caller must not wait 10 s to be told so."""
    store = broker.store
    if store.failed is not None:
        raise StoreUnavailable(_failed(store.failed))
    done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def resolve() -> None:
        if not done.done():
            done.set_result(True)

    def give_up() -> None:
        if not done.done():
            done.set_result(False)

    store.after_commit(resolve)
    # The store tells its listeners when it fails, and again whenever a commit is waited on
    # after that (store/base.py ``StoreHealth.on_failed``); the barrier itself never runs then.
    stop_listening = store.on_failed(give_up)
    try:
        stored = await asyncio.wait_for(done, COMMIT_TIMEOUT_S)
    except TimeoutError:
        raise StoreUnavailable("the message store did not commit in time") from None
    finally:
        stop_listening()
    if not stored:
        raise StoreUnavailable(_failed(store.failed))


def _failed(reason: str | None) -> str:
    return f"the message store failed ({reason}); the message may not have been stored"
