"""Devices and products in the console::

    GET  /console/api/devices?product=&name=&match=prefix|substring&status=&before=&limit=
    GET  /console/api/devices/{iotId}              the device page's whole state
    POST /console/api/devices/{iotId}/disable      DisableThing, and its connection closed
    POST /console/api/devices/{iotId}/enable       EnableThing
    POST /console/api/devices/{iotId}/disconnect   its connection closed (v5 DISCONNECT 0x98)
    GET  /console/api/products                     the account's products
    GET  /console/api/products/{productKey}        one product with its topic categories

Registry reads run on the console's reader threads (reads.py); the broker's state (sessions,
subscriptions, queues), the shadow service and the trace are asked on the event loop, where
they live. Disable and enable are the registry calls the Alibaba API's DisableThing and
EnableThing make, on the registry writer thread, and DisableThing's broker side
(http/aliyun/actions.py): the device's connection is closed, its session kept. Another
account's IotId or ProductKey is 404, as one that does not exist.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from ..auth.aliyun_device import device_client_id
from ..http import sessions as hub_sessions
from ..http.context import HubContext
from ..registry.errors import NotFoundError, RegistryError
from ..registry.models import DeviceStatus
from ..shadow.document import ShadowError
from ..shadow.names import check_thing_name
from ..trace.report import CONNECTED, ENDED, OFFLINE, report
from .errors import CONFLICT, UNAVAILABLE, ConsoleError
from .params import query_int
from .reads import (
    MATCH_MODES,
    DeviceFound,
    device_by_iot_id,
    product_with_categories,
    products,
    search_devices,
)
from .sessions import ConsoleSession
from .state import Console
from .views import device_view, session_view

__all__ = ["device", "device_action", "list_devices", "list_products", "product"]

T = TypeVar("T")

DEFAULT_PAGE = 50
MAX_PAGE = 200
# Traces looked through for a device's recent deliveries, and how many it shows.
_TRACES_SCANNED = 2000
_DELIVERIES_SHOWN = 20
_MAX_SEQ = (1 << 63) - 1


async def list_devices(console: Console, request: web.Request, session: ConsoleSession) -> Any:
    query = request.query
    match = query.get("match") or "substring"
    if match not in MATCH_MODES:
        raise ConsoleError.bad("match must be prefix or substring.")
    raw_status = query.get("status") or None
    status = None
    if raw_status is not None:
        try:
            status = DeviceStatus(raw_status)
        except ValueError:
            names = ", ".join(s.value for s in DeviceStatus)
            raise ConsoleError.bad(f"status must be one of {names}.") from None
    before = query.get("before") or None
    if before is not None and not (before.isascii() and before.isdigit()):
        raise ConsoleError.bad("before must be a number from a previous page's next.")
    page = await console.reader.run(
        functools.partial(
            search_devices,
            console.ctx.registry,
            session.account_id,
            product_key=query.get("product") or None,
            name=query.get("name") or None,
            match=match,
            status=status,
            before=None if before is None else min(int(before), _MAX_SEQ),
            limit=query_int(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE),
        )
    )
    return {
        "devices": [device_view(found.device, found.product_name) for found in page.devices],
        "total": page.total,
        "totalCapped": page.total_capped,
        "next": None if page.next_before is None else str(page.next_before),
    }


async def device(console: Console, request: web.Request, session: ConsoleSession) -> Any:
    found = await _find(console, request, session)
    dev = found.device
    ctx = console.ctx
    client_id = device_client_id(dev.product_key, dev.device_name)
    body: dict[str, Any] = {"device": device_view(dev, found.product_name), "clientId": client_id}
    try:
        # On whichever node of a cluster holds it (http/sessions.py).
        body["session"] = session_view(
            await hub_sessions.session_info(ctx, session.account_id, client_id)
        )
    except hub_sessions.ClusterUnreachable as error:
        body["session"] = None
        body["sessionUnknown"] = str(error)
    return {
        **body,
        "shadow": await _shadow(console, session.account_id, dev.device_name),
        "deliveries": _deliveries(console, session.account_id, client_id),
        "trace": ctx.broker.trace is not None,
    }


async def device_action(console: Console, request: web.Request, session: ConsoleSession) -> Any:
    found = await _find(console, request, session)
    dev = found.device
    action = request.match_info["action"]
    ctx = console.ctx
    registry = ctx.registry
    client_id = device_client_id(dev.product_key, dev.device_name)
    scope = {"iot_id": dev.iot_id, "instance_id": dev.instance_id}
    if action == "disable":
        await _write(
            console, functools.partial(registry.disable_device, session.account_id, **scope)
        )
        # As DisableThing: the connection closes, the session stays (its queue is delivered
        # if the device is enabled again before the session expires). In a cluster the
        # registry's change closes it on any node too (auth/device_watch.py).
        await _disconnect(ctx, session.account_id, client_id)
    elif action == "enable":
        await _write(
            console, functools.partial(registry.enable_device, session.account_id, **scope)
        )
    elif action == "disconnect":
        closed = await _disconnect(ctx, session.account_id, client_id)
        if not closed:
            raise ConsoleError(CONFLICT, "The device is not connected.")
    else:
        raise ConsoleError.not_found(f"No action {action!r}; use disable, enable or disconnect.")
    updated = await console.reader.run(device_by_iot_id, registry, session.account_id, dev.iot_id)
    return {"device": None if updated is None else device_view(updated.device, found.product_name)}


async def _disconnect(ctx: HubContext, account: str, client_id: str) -> bool:
    """Close the client's connection (DISCONNECT 0x98), on whichever node holds it."""
    try:
        return await hub_sessions.disconnect(
            ctx, account, client_id, clean_session=False, prevent_will=False
        )
    except hub_sessions.ClusterUnreachable as error:
        raise ConsoleError(UNAVAILABLE, str(error)) from None


async def list_products(console: Console, request: web.Request, session: ConsoleSession) -> Any:
    found = await console.reader.run(products, console.ctx.registry, session.account_id)
    return {"products": found}


async def product(console: Console, request: web.Request, session: ConsoleSession) -> Any:
    key = request.match_info["productKey"]
    found = await console.reader.run(
        product_with_categories, console.ctx.registry, session.account_id, key
    )
    if found is None:
        raise ConsoleError.not_found(f"There is no product {key} in this account.")
    return {"product": found}


async def _find(console: Console, request: web.Request, session: ConsoleSession) -> DeviceFound:
    iot_id = request.match_info["iotId"]
    found = await console.reader.run(
        device_by_iot_id, console.ctx.registry, session.account_id, iot_id
    )
    if found is None:
        raise ConsoleError.not_found(f"There is no device {iot_id} in this account.")
    return found


async def _write(console: Console, work: Callable[[], T]) -> T:
    """A registry write on the registry writer thread (as the Alibaba API's ``_write``), or
    on the console's threads in a hub without one; a registry error is 404 (the device went
    meanwhile) or 400."""
    writer = console.ctx.registry.writer
    try:
        if writer is None:
            return await console.reader.run(work)
        return await writer.run(work)
    except RegistryError as error:
        if isinstance(error, NotFoundError):
            raise ConsoleError.not_found(error.message) from None
        raise ConsoleError.bad(error.message) from None


async def _shadow(console: Console, account: str, thing: str) -> dict[str, Any] | None:
    """The classic shadow of the thing named like the device: its document, or why none."""
    shadows = console.ctx.shadows
    if shadows is None:
        return {"error": "The shadow service is not running."}
    try:
        check_thing_name(thing)
    except ShadowError:
        return None  # not a name a thing can have: no shadow can exist
    try:
        return {"document": await shadows.get(account, thing, None)}
    except ShadowError as error:
        if error.code == 404:
            return None
        return {"error": error.message}
    except Exception as error:  # a store that cannot answer now: the page still shows
        return {"error": str(error) or type(error).__name__}


def _deliveries(console: Console, account: str, client_id: str) -> list[dict[str, Any]]:
    """The device's part in the account's latest traced messages (thinghub/trace), newest
    first: at most ``_DELIVERIES_SHOWN`` of the last ``_TRACES_SCANNED`` traces."""
    broker = console.ctx.broker
    recorder = broker.trace
    if recorder is None:
        return []
    session = broker.session_of(account, client_id)
    state = ENDED if session is None else CONNECTED if session.client is not None else OFFLINE
    found: list[dict[str, Any]] = []
    for record in recorder.recent(account, None, _TRACES_SCANNED):
        if client_id not in record.handed and client_id not in (record.sessions or {}):
            continue
        body = report(record, lambda _client_id: state)
        mine = next((s for s in body["sessions"] if s["clientId"] == client_id), None)
        found.append(
            {
                "messageId": body["messageId"],
                "topic": body["topic"],
                "qos": body["qos"],
                "publishedAt": body["publishedAt"],
                "fate": None if mine is None else mine["fate"],
                "reason": None if mine is None else mine.get("reason"),
            }
        )
        if len(found) >= _DELIVERIES_SHOWN:
            break
    return found
