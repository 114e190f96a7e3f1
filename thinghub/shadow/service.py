"""The device shadow service: requests from the HTTP dialect and from MQTT, one writer thread
that applies them to the store, and the answers published into the account's topic space.

Theory of operation
-------------------
* **Requests.** The AWS dialect calls ``get``/``update``/``delete``/``list_named`` (each
  awaits its answer). Devices, and anyone else publishing to a request topic
  (``names.parse_request_topic``: an MQTT PUBLISH, an HTTP ``Publish``, even a will), reach
  ``_on_publish`` through the broker's ``intercept`` hook: the message is consumed (not
  routed) and its answer is published on ``.../accepted`` or ``.../rejected``
  (``device-shadow-mqtt``). The PUBACK of such a request means "received", as on AWS; the
  answer on ``/accepted`` is what says it was applied.
* **One writer.** All store work runs on one thread, in arrival order, so the
  read-modify-write of a shadow (versions, merges) needs no locking. The writer takes every
  request waiting (up to ``_MAX_BATCH``) and applies them in ONE transaction (each in a
  savepoint, so a failing one undoes only itself), then commits: one fsync per batch, not per
  request, and the event loop never waits for the disk.
* **Answers after the commit.** Once a batch is on disk the loop thread, in batch order,
  publishes each request's messages (``/update/accepted``, ``/update/delta`` when the shadow
  has a delta, ``/update/documents``; ``/delete/accepted``; ``/get/accepted`` and every
  ``/rejected`` for MQTT requests only: ``device-shadow-error-messages``, "If the client
  updates the document using the REST API ... no MQTT error messages are emitted") and then
  answers the HTTP caller. So anything a subscriber sees is durable, in version order. A
  batch that fails to commit answers every request in it with 500 "Internal service
  failure", and nothing of it is published as accepted; when it failed because the disk is
  full (``StorageFull``), the HTTP callers get that error instead, which the AWS dialect
  answers 503 ``ServiceUnavailableException`` like every full store (README "Durability"),
  and the service works again by itself once there is room.
* **Supervised.** The writer's own loop runs under ``health.supervised``: anything that
  escapes it (outside the per-batch handling above: a bug) is logged once with its traceback
  and the service has *failed* for good (``failed``, ``/healthz`` 503 until the hub
  restarts). Every request it held or that waits for it is answered at once: HTTP callers get
  ``StoreUnavailable`` (503 ``ServiceUnavailableException``), MQTT requesters a ``/rejected``
  500 "Internal service failure" (AWS's MQTT error documents have no 503); later requests are
  answered so at once, without a writer to wait for.
* **Bounds.** At most ``max_inflight_per_thing`` requests per thing wait at once (AWS IoT
  quota "Maximum number of in-flight, unacknowledged messages per thing": 10, beyond which
  "all new shadow requests are rejected with a 429 error code"), and ``max_pending`` in all.
* **Tenancy.** A shadow is keyed by account first: MQTT requests act in the publisher's
  account, HTTP calls in the access key's, and answers are published into that account only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..broker.admission import HUB_SERVICE, PublishRefused
from ..broker.broker import Broker
from ..health import Health, supervised
from ..message import Message
from ..registry.errors import StorageFull, StoreUnavailable, is_disk_full
from .document import (
    INTERNAL_ERROR,
    NOT_FOUND,
    TOO_MANY_REQUESTS,
    JSONObject,
    Limits,
    ShadowError,
    apply_update,
    delete_document,
    dumps,
    error_document,
    get_document,
    parse_client_token,
    parse_update,
)
from .names import (
    CLASSIC,
    TOPIC_ROOT,
    check_shadow_name,
    check_thing_name,
    parse_request_topic,
    topic_prefix,
)
from .store import ShadowKey, ShadowStore

__all__ = ["COMPONENT", "ORIGIN", "TOMBSTONE_S", "ListPage", "ShadowService"]

log = logging.getLogger("thinghub.shadow")

#: the writer's name in ``Health`` (``/healthz``, ``/metrics``)
COMPONENT = "shadows"

#: ``Message.origin`` of the service's answers (never a requester's client id, so a No Local
#: subscription of the device that asked still receives them)
ORIGIN = "$aws/shadow-service"
#: how long a deleted shadow's version is remembered (``device-shadow-data-flow``, "DELETE":
#: "deleted within the past 48 hours, the version number ... will follow that of the deleted
#: one")
TOMBSTONE_S = 48 * 3600
_PURGE_EVERY_S = 3600
# Requests applied in one transaction at most: bounds how long one commit holds the answers.
_MAX_BATCH = 256


@dataclass(frozen=True, slots=True)
class ListPage:
    names: list[str]
    #: True when names follow the last one of this page
    more: bool


@dataclass(slots=True)
class _Outcome:
    body: JSONObject | None = None
    page: ListPage | None = None
    error: ShadowError | None = None
    #: the store refused the batch (a full disk): raised to an HTTP caller instead of
    #: ``error``, whose 500 only an MQTT requester's ``/rejected`` carries
    unavailable: StoreUnavailable | None = None
    #: (topic, document) to publish once the batch is committed, in this order
    publishes: list[tuple[str, JSONObject]] = field(default_factory=list)


@dataclass(slots=True)
class _Job:
    operation: str  # "update" | "get" | "delete" | "list"
    key: ShadowKey
    payload: bytes = b""
    #: an MQTT request's ShadowTopicPrefix (where to answer); None for an HTTP call
    reply_prefix: str | None = None
    after: str | None = None
    limit: int = 0
    future: asyncio.Future[_Outcome] | None = None
    outcome: _Outcome = field(default_factory=_Outcome)


class ShadowService:
    def __init__(
        self,
        broker: Broker,
        store: ShadowStore,
        *,
        limits: Limits | None = None,
        max_inflight_per_thing: int = 10,
        max_pending: int = 10_000,
        clock: Callable[[], float] = time.time,
        health: Health | None = None,
    ) -> None:
        self.broker = broker
        self.store = store
        self.limits = limits or Limits()
        self._max_inflight = max_inflight_per_thing
        self._max_pending = max_pending
        self._clock = clock
        self._inflight: dict[tuple[str, str], int] = {}
        self._pending = 0
        self._queue: deque[_Job] = deque()
        self._ready = threading.Condition()
        self._stopping = False
        self._purged_at = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # The batch the writer is applying (answered by ``_abandon`` if the writer fails).
        self._in_hand: list[_Job] = []
        #: why the writer stopped for good (see the module notes), None while it works
        self.failed: str | None = None
        self._health = health if health is not None else Health()
        self._health.register(COMPONENT)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the writer and take the shadow request topics (call on the running loop)."""
        self._loop = asyncio.get_running_loop()
        run = supervised(
            self._health,
            COMPONENT,
            self._write_loop,
            consequence="device shadow requests are answered 503 (MQTT: /rejected 500)",
            on_failure=self._writer_failed,
        )
        self._thread = threading.Thread(target=run, name="shadow-writer", daemon=True)
        self._thread.start()
        self.broker.intercept(TOPIC_ROOT, self._on_publish)

    async def close(self) -> None:
        """Stop taking requests, finish (and answer) those already taken, close the store."""
        self.broker.intercept(TOPIC_ROOT, None)
        with self._ready:
            self._stopping = True
            self._ready.notify()
        if self._thread is not None:
            # The writer's last answers are queued on the loop before it exits, so they run
            # before this coroutine resumes.
            await asyncio.to_thread(self._thread.join)
        self.store.close()

    # ------------------------------------------------------------------ the HTTP side

    async def get(self, account: str, thing: str, shadow: str | None) -> JSONObject:
        """GetThingShadow: the document with its delta. Raises ShadowError."""
        outcome = await self._call(_Job("get", _key(account, thing, shadow)))
        assert outcome.body is not None
        return outcome.body

    async def update(
        self, account: str, thing: str, shadow: str | None, payload: bytes
    ) -> JSONObject:
        """UpdateThingShadow: the ``/update/accepted`` document. Raises ShadowError."""
        outcome = await self._call(_Job("update", _key(account, thing, shadow), payload))
        assert outcome.body is not None
        return outcome.body

    async def delete(self, account: str, thing: str, shadow: str | None) -> JSONObject:
        """DeleteThingShadow: ``{"version", "timestamp"}``. Raises ShadowError."""
        outcome = await self._call(_Job("delete", _key(account, thing, shadow)))
        assert outcome.body is not None
        return outcome.body

    async def list_named(self, account: str, thing: str, after: str | None, limit: int) -> ListPage:
        """ListNamedShadowsForThing: up to ``limit`` names after ``after``, in name order."""
        job = _Job("list", ShadowKey(account, thing, CLASSIC), after=after, limit=limit)
        outcome = await self._call(job)
        assert outcome.page is not None
        return outcome.page

    def now(self) -> int:
        """Epoch seconds, the unit of every shadow timestamp."""
        return int(self._clock())

    async def _call(self, job: _Job) -> _Outcome:
        _check_names(job.key)
        if self.failed is not None:
            raise self._unavailable()
        self._admit(job.key)
        loop = asyncio.get_running_loop()
        job.future = loop.create_future()
        self._submit(job)
        outcome = await job.future
        if outcome.unavailable is not None:
            raise outcome.unavailable
        if outcome.error is not None:
            raise outcome.error
        return outcome

    # ------------------------------------------------------------------ the MQTT side

    def _on_publish(self, message: Message) -> bool:
        """The broker's hook: take a request topic's message, leave every other topic."""
        request = parse_request_topic(message.topic)
        if request is None:
            return False
        key = ShadowKey(message.account, request.thing, request.shadow)
        try:
            _check_names(key)
            if self.failed is not None:
                raise _internal_error()
            self._admit(key)
        except ShadowError as error:
            token = _token_of(message.payload, self.limits)
            document = error_document(error.with_token(token), self.now())
            topic = f"{request.prefix}/{request.operation}/rejected"
            # Not from inside the broker's publish of the request itself: on the next turn.
            assert self._loop is not None
            self._loop.call_soon(self._publish, message.account, topic, document)
            return True
        self._submit(_Job(request.operation, key, message.payload, request.prefix))
        return True

    # ------------------------------------------------------------------ bounds

    def _admit(self, key: ShadowKey) -> None:
        thing = (key.account, key.thing)
        count = self._inflight.get(thing, 0)
        if count >= self._max_inflight or self._pending >= self._max_pending:
            raise ShadowError(TOO_MANY_REQUESTS, "Too many requests")
        self._inflight[thing] = count + 1
        self._pending += 1

    def _release(self, key: ShadowKey) -> None:
        thing = (key.account, key.thing)
        count = self._inflight.get(thing, 1) - 1
        if count > 0:
            self._inflight[thing] = count
        else:
            self._inflight.pop(thing, None)
        self._pending -= 1

    # ------------------------------------------------------------------ the writer

    def _submit(self, job: _Job) -> None:
        with self._ready:
            self._queue.append(job)
            self._ready.notify()

    def _write_loop(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            with self._ready:
                while not self._queue and not self._stopping:
                    self._ready.wait()
                if not self._queue:
                    return
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), _MAX_BATCH))]
            self._in_hand = batch
            self._apply(batch)
            try:
                loop.call_soon_threadsafe(self._finish, batch)
            except RuntimeError:  # the loop is closed: nobody is left to answer
                return
            self._in_hand = []

    def _writer_failed(self, reason: str) -> None:
        """Writer thread, as it stops for good (``supervised``): refuse from now on, and
        have the loop answer what waits (``_abandon``)."""
        self.failed = reason
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._abandon)
        except RuntimeError:  # the loop is closed: nobody is left to answer
            pass

    def _abandon(self) -> None:
        """Loop thread: answer every request the failed writer held or would have taken
        (HTTP: 503; MQTT: /rejected 500). On the loop, where requests are taken, so none is
        taken after this (``failed`` is already set)."""
        with self._ready:
            jobs, self._in_hand = [*self._in_hand, *self._queue], []
            self._queue.clear()
        now = self.now()
        for job in jobs:
            job.outcome = self._failed(job, _internal_error(), now)
            job.outcome.unavailable = self._unavailable()
        self._finish(jobs)

    def _unavailable(self) -> StoreUnavailable:
        return StoreUnavailable(f"the device shadow service failed ({self.failed})")

    def _apply(self, batch: list[_Job]) -> None:
        now = self.now()
        try:
            with self.store.transaction():
                self.store.lock(job.key for job in batch)
                if now - self._purged_at >= _PURGE_EVERY_S:
                    self.store.purge_tombstones(now - TOMBSTONE_S)
                    self._purged_at = now
                for job in batch:
                    job.outcome = self._run(job, now)
        except Exception as error:
            full = is_disk_full(error)
            if full:
                log.warning("shadow store: %d requests refused: %s", len(batch), error)
            else:
                log.exception("shadow store: a batch of %d requests failed to commit", len(batch))
            for job in batch:
                job.outcome = self._failed(job, _internal_error(), now)
                if full:
                    job.outcome.unavailable = StorageFull(str(error))

    def _run(self, job: _Job, now: int) -> _Outcome:
        try:
            with self.store.savepoint():
                if job.operation == "update":
                    return self._update(job, now)
                if job.operation == "get":
                    return self._get(job, now)
                if job.operation == "delete":
                    return self._delete(job, now)
                return self._list(job)
        except ShadowError as error:
            return self._failed(job, error, now)
        except Exception as error:
            if is_disk_full(error):
                # SQLite may have rolled back the whole transaction: the batch fails as one.
                raise
            log.exception("shadow %s of %s failed", job.operation, job.key)
            return self._failed(job, _internal_error(), now)

    def _failed(self, job: _Job, error: ShadowError, now: int) -> _Outcome:
        outcome = _Outcome(error=error)
        if job.reply_prefix is not None:
            if error.client_token is None:
                error = error.with_token(_token_of(job.payload, self.limits))
            document = error_document(error, now)
            outcome.publishes.append((f"{job.reply_prefix}/{job.operation}/rejected", document))
        return outcome

    def _update(self, job: _Job, now: int) -> _Outcome:
        request = parse_update(job.payload, self.limits)
        stored = self.store.load(job.key)
        base = 0
        if stored is not None and (
            stored.shadow is not None or now - stored.updated_at < TOMBSTONE_S
        ):
            base = stored.version
        result = apply_update(
            None if stored is None else stored.shadow, base, request, now, self.limits
        )
        self.store.save(job.key, result.shadow, now)
        prefix = topic_prefix(job.key.thing, job.key.shadow)
        outcome = _Outcome(body=result.accepted)
        outcome.publishes.append((f"{prefix}/update/accepted", result.accepted))
        # After any accepted update that leaves a delta, not only after changes to desired
        # (device-shadow-mqtt, "/update/delta", is ambiguous; AWS's Greengrass shadow manager
        # publishes it so).
        if result.delta is not None:
            outcome.publishes.append((f"{prefix}/update/delta", result.delta))
        outcome.publishes.append((f"{prefix}/update/documents", result.documents))
        return outcome

    def _get(self, job: _Job, now: int) -> _Outcome:
        token = self._request_token(job)
        stored = self.store.load(job.key)
        if stored is None or stored.shadow is None:
            raise _no_shadow(job.key, token)
        document = get_document(stored.shadow, now, token)
        outcome = _Outcome(body=document)
        if job.reply_prefix is not None:
            outcome.publishes.append((f"{job.reply_prefix}/get/accepted", document))
        return outcome

    def _delete(self, job: _Job, now: int) -> _Outcome:
        token = self._request_token(job)
        stored = self.store.load(job.key)
        if stored is None or stored.shadow is None:
            raise _no_shadow(job.key, token)
        self.store.delete(job.key, stored.version, now)
        document = delete_document(stored.version, now, token)
        prefix = topic_prefix(job.key.thing, job.key.shadow)
        outcome = _Outcome(body=document)
        outcome.publishes.append((f"{prefix}/delete/accepted", document))
        return outcome

    def _list(self, job: _Job) -> _Outcome:
        names = self.store.list_names(job.key.account, job.key.thing, job.after, job.limit + 1)
        return _Outcome(page=ListPage(names[: job.limit], len(names) > job.limit))

    def _request_token(self, job: _Job) -> str | None:
        """A get or delete request's clientToken: MQTT requests carry one in their body."""
        if job.reply_prefix is None:
            return None
        return parse_client_token(job.payload, self.limits)

    # ------------------------------------------------------------------ answers (loop)

    def _finish(self, batch: list[_Job]) -> None:
        for job in batch:
            self._release(job.key)
            for topic, document in job.outcome.publishes:
                self._publish(job.key.account, topic, document)
            future = job.future
            if future is not None and not future.done():
                future.set_result(job.outcome)

    def _publish(self, account: str, topic: str, document: JSONObject) -> None:
        # QoS 1: a subscriber's granted QoS decides (min), as for any publisher.
        message = Message(
            topic=topic, payload=dumps(document), qos=1, account=account, origin=ORIGIN
        )
        try:
            self.broker.publish(message, HUB_SERVICE)
        except PublishRefused as refusal:
            # Only the store's refusal can stop a hub service (counted by the broker): the
            # answer is lost, as any QoS 1 message is that the hub cannot take.
            log.warning("shadow answer on %s not published: %s", topic, refusal.reason)
        except StoreUnavailable as error:
            # No MessageId on a full disk (registry/ids.py): the same loss, and the answers
            # after it (and the HTTP caller waiting in ``_finish``) must still go out.
            log.warning("shadow answer on %s not published: %s", topic, error)


def _internal_error() -> ShadowError:
    return ShadowError(INTERNAL_ERROR, "Internal service failure")


def _key(account: str, thing: str, shadow: str | None) -> ShadowKey:
    return ShadowKey(account, thing, CLASSIC if shadow is None else shadow)


def _check_names(key: ShadowKey) -> None:
    check_thing_name(key.thing)
    # An HTTP call's ``name=`` is never CLASSIC (""): the dialect passes None for "absent".
    if key.shadow != CLASSIC:
        check_shadow_name(key.shadow)


def _no_shadow(key: ShadowKey, client_token: str | None) -> ShadowError:
    # device-shadow-error-messages: 404 "No shadow exists with name: shadowName"; the classic
    # shadow goes by its thing's name.
    name = key.thing if key.shadow == CLASSIC else key.shadow
    return ShadowError(NOT_FOUND, f"No shadow exists with name: '{name}'", client_token)


def _token_of(payload: bytes, limits: Limits) -> str | None:
    """A request's clientToken for a rejection, if one can be read at all."""
    try:
        return parse_client_token(payload, limits)
    except ShadowError:
        return None
