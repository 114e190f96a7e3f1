"""The one publish path for the HTTP dialects: ``Broker.publish`` plus the wait that makes an
HTTP 200 mean what a PUBACK means (ARCHITECTURE.md, "Acknowledged means durable")."""

from __future__ import annotations

import asyncio

from ..broker.broker import Broker
from ..message import Message


class StoreUnavailable(Exception):
    """The store cannot take the message now (full, or its writer is behind or failing):
    the dialects answer with their "service unavailable" error, and nothing was published."""


# How long an HTTP publisher waits for the store's commit before it is told to try again.
COMMIT_TIMEOUT_S = 10.0


async def publish(broker: Broker, message: Message) -> int:
    """Publish ``message`` and return once whatever it changed in the store is committed.
    Returns how many sessions it was handed to. Assigns ``message.id`` if it has none.
    Raises StoreUnavailable, before publishing anything, when the store refuses new QoS 1/2
    work, and if the commit does not come within COMMIT_TIMEOUT_S."""
    if message.qos and not broker.store.accepting:
        raise StoreUnavailable("the message store is not accepting new messages")
    if not message.id:
        message.id = broker.new_message_id()
    writes = broker.store_writes
    matched = broker.publish(message)
    if broker.store_writes != writes:
        await committed(broker)
    return matched


async def committed(broker: Broker) -> None:
    """Wait until everything reported to the store so far is durable."""
    done = asyncio.get_running_loop().create_future()

    def resolve() -> None:
        if not done.done():
            done.set_result(None)

    broker.store.after_commit(resolve)
    try:
        await asyncio.wait_for(done, COMMIT_TIMEOUT_S)
    except TimeoutError:
        raise StoreUnavailable("the message store did not commit in time") from None
