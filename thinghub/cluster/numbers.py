"""Each node's number, 1..1023, so that MessageIds stay unique across nodes.

A MessageId (registry/ids.py) holds 10 bits of node number beside its millisecond and its
sequence: two nodes issue the same id only if they share a number. A clustered node takes its
number from ``cluster.node_id`` when it is set (0..1023; the operator keeps them distinct),
else from the ``<prefix>_nodes`` JetStream key-value bucket, once and for good:

    name.<node name>  -> "<number>"     which number a node holds
    number.<number>   -> "<node name>"  which node holds a number

A node that finds its name there takes that number. Otherwise it creates ``number.<n>`` for
the lowest free n, a JetStream create that succeeds for one creator only (compare-and-set on
"no such key"), then writes ``name.<node name>``. A node that dies between the two writes
wastes one number, never shares one.

Why held for good and not leased while the node lives: a lease that expires while its holder
is cut off from NATS (but still serving, still issuing ids) would let another node take the
number, and both would issue the same ids. A number that is never given back cannot be shared;
the cost is 1023 node names over the cluster's life (an operator deletes the keys of a node
that is gone for good). Why not derived from the name (a hash) and checked: 1024 values
collide with even odds by about 38 nodes, and a collision would stop a node from starting.

The number is also written to ``<data_dir>/cluster-node.json``: a node that restarts while
NATS is out of reach starts with it. A node's very first start waits for NATS (or needs
``cluster.node_id``): before it knows its number it has no id to give.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import nats
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
)
from nats.js.kv import KeyValue

from ..errors import ThingHubError
from ..registry.ids import MAX_NODE
from .settings import ClusterSettings

log = logging.getLogger("thinghub.cluster")

CACHE_FILE = "cluster-node.json"
# The first number claimed: 0 is what a hub of its own uses (registry/ids.py).
FIRST = 1


class NodeNumberError(ThingHubError):
    """This node cannot have the number it asked for: another node holds it."""


def bucket_name(settings: ClusterSettings) -> str:
    return settings.subject_prefix.replace(".", "_") + "_nodes"


async def node_number(settings: ClusterSettings, data_dir: Path) -> int:
    """This node's number: ``cluster.node_id`` (checked against the bucket when NATS can be
    reached), else the one the bucket holds for this node's name, claimed if it has none.
    Waits for NATS as long as no number is known; raises NodeNumberError when the configured
    number is another node's, or when every number is taken."""
    name = settings.node()
    loop = asyncio.get_running_loop()
    cached = await loop.run_in_executor(None, _read_cache, data_dir, name)
    configured = settings.node_id if settings.node_id >= 0 else None
    # With a number known already, NATS is only asked for a while (to check it).
    known = configured if configured is not None else cached
    deadline = loop.time() + settings.connect_timeout
    waited = False
    while True:
        try:
            number = await _from_bucket(settings, name, configured)
        except (OSError, TimeoutError, nats.errors.Error) as error:
            if known is not None and loop.time() >= deadline:
                log.warning(
                    "NATS not reachable (%s): node %s uses number %d (%s) unchecked",
                    error,
                    name,
                    known,
                    "cluster.node_id" if configured is not None else CACHE_FILE,
                )
                return known
            if not waited and known is None:
                waited = True
                log.warning(
                    "waiting for NATS (%s) to claim this node's number for its MessageIds "
                    "(or set cluster.node_id)",
                    error,
                )
            await asyncio.sleep(settings.reconnect_wait)
            continue
        if number != cached:
            await loop.run_in_executor(None, _write_cache, data_dir, name, number)
        log.info("node %s has number %d", name, number)
        return number


async def _from_bucket(settings: ClusterSettings, name: str, configured: int | None) -> int:
    # One try of each server (nats-py retries a first connection without end otherwise), its
    # failures told to the caller, not logged by nats-py.
    nc = await asyncio.wait_for(
        nats.connect(
            servers=list(settings.nats_urls),
            name=f"thinghub-{name}-number",
            max_reconnect_attempts=1,
            reconnect_time_wait=min(settings.reconnect_wait, 0.2),
            connect_timeout=max(1, int(settings.request_timeout)),
            error_cb=_quiet,
        ),
        settings.request_timeout * (len(settings.nats_urls) + 1),
    )
    try:
        kv = await _bucket(nc.jetstream(timeout=settings.request_timeout), settings)
        if configured is not None:
            return await _record(kv, name, configured)
        return await _claim(kv, name)
    finally:
        await nc.close()


async def _quiet(_error: Exception) -> None:
    """nats-py's errors of this short connection: ``node_number`` logs them once."""


async def _bucket(js: nats.js.JetStreamContext, settings: ClusterSettings) -> KeyValue:
    try:
        return await js.key_value(bucket_name(settings))
    except BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(
            KeyValueConfig(
                bucket=bucket_name(settings),
                history=1,
                replicas=settings.stream_replicas,
                storage=StorageType.FILE,
                description="ThingHub: each node's number, for unique MessageIds",
            )
        )
    except nats.js.errors.BadRequestError:
        # Another node created it at the same moment.
        return await js.key_value(bucket_name(settings))


async def _holder(kv: KeyValue, key: str) -> str | None:
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    return None if entry.value is None else entry.value.decode()


async def _record(kv: KeyValue, name: str, number: int) -> int:
    """The configured ``number``: taken for ``name`` if free, refused if another's."""
    try:
        await kv.create(f"number.{number}", name.encode())
    except KeyWrongLastSequenceError:
        holder = await _holder(kv, f"number.{number}")
        if holder not in (None, name):
            raise NodeNumberError(
                f"cluster.node_id {number} is node {holder}'s: its MessageIds would be this "
                "node's too. Choose another (or unset it to have one claimed)"
            ) from None
    await kv.put(f"name.{name}", str(number).encode())
    return number


async def _claim(kv: KeyValue, name: str) -> int:
    held = await _holder(kv, f"name.{name}")
    if held is not None and held.isdigit():
        return int(held)
    try:
        keys = await kv.keys(filters=["number.*"])
    except NoKeysError:
        keys = []
    taken = {int(key[7:]) for key in keys if key[7:].isdigit()}
    for number in range(FIRST, MAX_NODE + 1):
        if number in taken:
            continue
        try:
            await kv.create(f"number.{number}", name.encode())
        except KeyWrongLastSequenceError:
            continue  # another node took it since the listing
        await kv.put(f"name.{name}", str(number).encode())
        return number
    raise NodeNumberError(
        f"every node number {FIRST}..{MAX_NODE} is held: delete the name.* and number.* keys "
        "of the nodes that are gone for good from the nodes bucket"
    )


def _read_cache(data_dir: Path, name: str) -> int | None:
    try:
        data = json.loads((data_dir / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return None
    number = data.get("number") if isinstance(data, dict) else None
    if data.get("name") != name or not isinstance(number, int) or not 0 <= number <= MAX_NODE:
        return None  # another node's name in this directory: claim again
    return number


def _write_cache(data_dir: Path, name: str, number: int) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / CACHE_FILE
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as file:
        json.dump({"name": name, "number": number}, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
