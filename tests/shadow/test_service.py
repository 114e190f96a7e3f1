"""The shadow service (thinghub/shadow/service.py) on a real Broker and a real store, without
sockets: answers go out only after the commit and in order, requests beyond the per-thing
in-flight bound are refused with 429, and a batch that fails to commit answers 500 and
publishes nothing as accepted."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from thinghub.broker.admission import API_CALLER
from thinghub.broker.broker import Broker
from thinghub.config import MQTTSettings
from thinghub.message import Message
from thinghub.registry.store import RegistryStore
from thinghub.shadow.document import ShadowError
from thinghub.shadow.service import ShadowService
from thinghub.shadow.store import ShadowKey, ShadowStore, StoredShadow

TIMEOUT = 5.0


class GatedStore(ShadowStore):
    """A store whose loads wait for ``gate`` (so requests stay in flight), and whose commits
    can be made to fail."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_commit = False

    def load(self, key: ShadowKey) -> StoredShadow | None:
        self.entered.set()
        assert self.gate.wait(TIMEOUT)
        return super().load(key)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with super().transaction():
            yield
            if self.fail_commit:  # as an I/O error fails a COMMIT: the batch is rolled back
                # (a full disk is StorageFull, 503: tests/security/test_sec_full_disk.py)
                raise sqlite3.OperationalError("disk I/O error")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[GatedStore]:
    RegistryStore.open(tmp_path).close()
    yield GatedStore(tmp_path / "registry.db")


Inbox = asyncio.Queue[Message]


async def started(store: GatedStore, **options: Any) -> tuple[ShadowService, Inbox]:
    """The service on a broker; what it publishes in account "acct" lands in the inbox."""
    broker = Broker(MQTTSettings(), asyncio.get_running_loop())
    inbox: Inbox = asyncio.Queue()
    broker.watch("acct", "$aws/things/#", inbox.put_nowait)
    service = ShadowService(broker, store, clock=lambda: 1_000_000, **options)
    service.start()
    return service, inbox


async def next_message(inbox: Inbox) -> Message:
    return await asyncio.wait_for(inbox.get(), TIMEOUT)


def received(inbox: Inbox) -> list[Message]:
    """What has arrived so far."""
    messages = []
    while not inbox.empty():
        messages.append(inbox.get_nowait())
    return messages


def test_http_answers_after_the_commit_and_publishes_in_order(store: GatedStore) -> None:
    async def scenario() -> None:
        service, inbox = await started(store)
        first = await service.update("acct", "t", None, b'{"state":{"desired":{"a":1}}}')
        second = await service.update("acct", "t", None, b'{"state":{"reported":{"a":1}}}')
        assert (first["version"], second["version"]) == (1, 2)
        seen = received(inbox)
        # Everything was published before the second answer came back, in version order,
        # with a delta only while desired and reported differ.
        topics = [m.topic.removeprefix("$aws/things/t/shadow/") for m in seen]
        assert topics == [
            "update/accepted",
            "update/delta",
            "update/documents",
            "update/accepted",
            "update/documents",
        ]
        assert [json.loads(m.payload).get("version") for m in seen[:3]] == [1, 1, None]
        assert all(m.qos == 1 and m.account == "acct" for m in seen)
        document = await service.get("acct", "t", None)
        assert document["state"] == {"desired": {"a": 1}, "reported": {"a": 1}}
        await service.close()

    asyncio.run(scenario())


def test_in_flight_requests_per_thing_are_bounded(store: GatedStore) -> None:
    async def scenario() -> None:
        service, inbox = await started(store, max_inflight_per_thing=1)
        store.gate.clear()
        store.entered.clear()
        held = asyncio.ensure_future(service.get("acct", "t", None))
        assert await asyncio.to_thread(store.entered.wait, TIMEOUT)
        with pytest.raises(ShadowError) as info:
            await service.update("acct", "t", None, b'{"state":{}}')
        assert (info.value.code, info.value.message) == (429, "Too many requests")
        # Another thing is not held up; a device's request to the busy thing is rejected.
        other = asyncio.ensure_future(service.update("acct", "u", None, b'{"state":{}}'))
        topic = "$aws/things/t/shadow/update"
        payload = b'{"state":{},"clientToken":"dev"}'
        assert service.broker.publish(
            Message(topic=topic, payload=payload, account="acct"), API_CALLER
        )
        message = await next_message(inbox)
        assert message.topic == "$aws/things/t/shadow/update/rejected"
        rejected = json.loads(message.payload)
        assert (rejected["code"], rejected["clientToken"]) == (429, "dev")
        store.gate.set()
        with pytest.raises(ShadowError):  # the held get: no such shadow
            await held
        assert (await other)["version"] == 1
        # The bound is released: the thing takes requests again.
        assert (await service.update("acct", "t", None, b'{"state":{}}'))["version"] == 1
        await service.close()

    asyncio.run(scenario())


def test_a_failed_batch_answers_500_and_publishes_nothing_accepted(store: GatedStore) -> None:
    async def scenario() -> None:
        service, inbox = await started(store)
        store.fail_commit = True
        with pytest.raises(ShadowError) as info:
            await service.update("acct", "t", None, b'{"state":{"desired":{"a":1}}}')
        assert (info.value.code, info.value.message) == (500, "Internal service failure")
        service.broker.publish(
            Message(topic="$aws/things/t/shadow/update", payload=b'{"state":{}}', account="acct"),
            API_CALLER,
        )
        message = await next_message(inbox)
        assert message.topic == "$aws/things/t/shadow/update/rejected"
        assert json.loads(message.payload)["code"] == 500
        assert received(inbox) == []  # no accepted, delta or documents for either request
        store.fail_commit = False
        with pytest.raises(ShadowError):  # nothing of the failed update was kept
            await service.get("acct", "t", None)
        await service.close()

    asyncio.run(scenario())
