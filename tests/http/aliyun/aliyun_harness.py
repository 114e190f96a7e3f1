"""A real hub in a background thread, the official SDKs pointed at it, paho devices.

The hub: a ``Broker`` with the registry's sign-in and topic hooks, the MQTT TCP listener and
an aiohttp application with the Alibaba RPC routes, on 127.0.0.1 with free ports, running on
its own event loop thread so that the synchronous SDK clients can call it from the test.
The registry is SQLite in a temporary directory.

Nothing is mocked: requests are signed by ``aliyun-python-sdk-core`` (V1) and
``alibabacloud-iot20180120`` (V3, or V1 with ``signature_algorithm="v2"``), devices sign in
over MQTT with the Alibaba scheme. Tests wait on events with timeouts, never sleep.
"""

from __future__ import annotations

import asyncio
import base64
import json
import queue
import threading
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as paho
from aiohttp import web
from alibabacloud_iot20180120.client import Client as TeaClient
from alibabacloud_tea_openapi import exceptions as tea_exceptions
from alibabacloud_tea_openapi import models as open_api_models
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkcore.client import AcsClient
from aliyunsdkcore.request import RpcRequest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties

from thinghub.auth.aliyun_device import build_credentials
from thinghub.auth.broker_hooks import RegistryHooks
from thinghub.broker.broker import Broker
from thinghub.config import MQTTSettings, Settings
from thinghub.http.aliyun.api import add_routes
from thinghub.http.context import HubContext
from thinghub.http.ratelimit import RateLimiter
from thinghub.registry.ids import MessageIdGenerator
from thinghub.registry.models import AccessKey, Device, Product
from thinghub.registry.registry import Registry
from thinghub.registry.store import RegistryStore
from thinghub.transport.tcp import start_tcp_listener

TIMEOUT = 5.0
T = TypeVar("T")


def unique(prefix: str = "t", length: int = 10) -> str:
    return f"{prefix}{uuid.uuid4().hex[:length]}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Hub:
    data_dir: Path
    limits: dict[str, float] = field(default_factory=dict)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    thread: threading.Thread | None = None
    store: RegistryStore | None = None
    registry: Registry = field(init=False)
    broker: Broker = field(init=False)
    ctx: HubContext = field(init=False)
    # The rate limiter's clock: it stands still unless a test moves it, so that a flood test
    # knows exactly how many calls the quota lets through.
    limit_now: float = 0.0
    http_port: int = 0
    mqtt_port: int = 0
    root_key: AccessKey = field(init=False)
    other_key: AccessKey = field(init=False)
    _runner: web.AppRunner | None = None
    _mqtt: asyncio.Server | None = None

    host = "127.0.0.1"

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> Hub:
        self.store = RegistryStore.open(self.data_dir)
        self.registry = registry = Registry(self.store)
        root = registry.ensure_root_account()
        self.root_key = registry.create_access_key(root.account_id)
        other = registry.create_account("other")
        self.other_key = registry.create_access_key(other.account_id)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.run(self._start())
        return self

    async def _start(self) -> None:
        assert self.store is not None
        ids = MessageIdGenerator(self.store)
        hooks = RegistryHooks(
            self.registry,
            allow_anonymous=False,
            anonymous_account=self.registry.ensure_root_account().account_id,
        )
        self.broker = Broker(
            MQTTSettings(),
            self.loop,
            authenticator=hooks,
            authorizer=hooks,
            observers=(hooks,),
            new_message_id=ids.next_id,
        )
        self.ctx = HubContext(
            settings=Settings(data_dir=self.data_dir),
            broker=self.broker,
            registry=self.registry,
            aliyun_limits=RateLimiter(self.limits, clock=lambda: self.limit_now),
        )
        # The old SDK sends BatchPub's and PubBroadcast's MessageContent in the query (reference
        # §4.1): a 256 KB message needs a request line of about 372 KB.
        app = web.Application(
            client_max_size=512 * 1024, handler_args={"max_line_size": 512 * 1024}
        )
        add_routes(app, self.ctx)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = getattr(site, "_server", None)
        assert server is not None and server.sockets
        self.http_port = server.sockets[0].getsockname()[1]
        self._mqtt = await start_tcp_listener(self.broker, self.host, 0)
        self.mqtt_port = self._mqtt.sockets[0].getsockname()[1]

    def stop(self) -> None:
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            assert self.thread is not None
            self.thread.join(TIMEOUT)
            self.loop.close()
            if self.store is not None:
                self.store.close()

    async def _stop(self) -> None:
        if self._mqtt is not None:
            self._mqtt.close()
        self.broker.close_all()
        await asyncio.sleep(0)  # let the coalesced closes run
        if self._mqtt is not None:
            await asyncio.wait_for(self._mqtt.wait_closed(), TIMEOUT)
        if self._runner is not None:
            await self._runner.cleanup()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT * 2)

    def on_loop(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the hub's loop (to read broker state safely)."""

        async def call() -> T:
            return fn()

        return self.run(call())

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.http_port}"

    # --- registry shortcuts (the same registry the API uses) --------------------------------

    def product(self, key: AccessKey | None = None) -> Product:
        account = (key or self.root_key).account_id
        return self.registry.create_product(account, unique("p_"), 0)

    def device(self, product: Product) -> Device:
        return self.registry.register_device(product.account_id, product.product_key, unique("d"))

    # --- SDK clients --------------------------------------------------------------------

    def core(self, key: AccessKey | None = None, secret: str | None = None) -> AcsClient:
        key = key or self.root_key
        return AcsClient(key.access_key_id, secret or key.secret, "cn-shanghai")

    def core_call(
        self, request: RpcRequest, key: AccessKey | None = None, secret: str | None = None
    ) -> dict[str, Any]:
        """Send with aliyun-python-sdk-core (V1); the JSON answer (HTTP 200 only)."""
        request.set_endpoint(self.endpoint)
        body = self.core(key, secret).do_action_with_exception(request)
        answer: dict[str, Any] = json.loads(body)
        return answer

    def core_error(
        self, request: RpcRequest, key: AccessKey | None = None, secret: str | None = None
    ) -> ServerException:
        try:
            self.core_call(request, key, secret)
        except ServerException as error:
            return error
        raise AssertionError("expected a gateway error")

    def tea(
        self, key: AccessKey | None = None, *, v2: bool = False, secret: str | None = None
    ) -> TeaClient:
        key = key or self.root_key
        config = open_api_models.Config(
            access_key_id=key.access_key_id,
            access_key_secret=secret or key.secret,
            endpoint=self.endpoint,
            protocol="http",
            region_id="cn-shanghai",
        )
        if v2:
            config.signature_algorithm = "v2"
        return TeaClient(config)


def tea_error(call: Callable[[], object]) -> tea_exceptions.ClientException:
    try:
        call()
    except tea_exceptions.ClientException as error:
        return error
    raise AssertionError("expected a gateway error")


# --- paho devices ---------------------------------------------------------------------------


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: dict[str, Any]


class PahoDevice:
    """A device signing in with the Alibaba scheme (reference §3) through paho-mqtt.

    ``respond`` (topic, payload) -> (reply topic, reply payload) | None runs in paho's thread
    for each message (an RRpc responder)."""

    def __init__(
        self,
        hub: Hub,
        device: Device,
        *,
        version: int = 5,
        clean: bool = True,
        session_expiry: int | None = None,
        respond: Callable[[str, bytes], tuple[str, bytes] | None] | None = None,
    ) -> None:
        self.hub = hub
        self.device = device
        self.version = version
        self.clean = clean
        self.session_expiry = session_expiry
        self.respond = respond
        self.messages: queue.Queue[Received] = queue.Queue()
        self._connacks: queue.Queue[int] = queue.Queue()
        self._subacks: queue.Queue[list[int]] = queue.Queue()
        self.disconnects: queue.Queue[int] = queue.Queue()
        self._client: paho.Client | None = None
        self.connected = False

    def connect(self) -> PahoDevice:
        client_id, username, password = build_credentials(
            self.device.product_key, self.device.device_name, self.device.device_secret
        )
        v5 = self.version == 5
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else self.clean,
        )
        client.username_pw_set(username, password)
        client.reconnect_delay_set(60, 60)
        client.on_connect = lambda c, u, f, rc, p: self._connacks.put(rc.value)
        client.on_subscribe = lambda c, u, mid, rcs, p: self._subacks.put([r.value for r in rcs])
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        kwargs: dict[str, Any] = {}
        if v5:
            kwargs["clean_start"] = self.clean
            if self.session_expiry is not None:
                props = PahoProperties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self.session_expiry
                kwargs["properties"] = props
        client.connect(self.hub.host, self.hub.mqtt_port, keepalive=60, **kwargs)
        client.loop_start()
        self._client = client
        code = self._connacks.get(timeout=TIMEOUT)
        assert code == 0, f"CONNACK refused: {code}"
        self.connected = True
        return self

    def _on_disconnect(self, c: Any, u: Any, flags: Any, rc: Any, p: Any) -> None:
        self.connected = False
        self.disconnects.put(rc.value)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        properties = getattr(msg, "properties", None)
        props = properties.json() if properties is not None else {}
        payload = bytes(msg.payload)
        self.messages.put(Received(msg.topic, payload, msg.qos, bool(msg.retain), props))
        if self.respond is not None:
            answer = self.respond(msg.topic, payload)
            if answer is not None:
                client.publish(answer[0], answer[1], 0)

    def subscribe(self, topic_filter: str, qos: int = 1) -> int:
        assert self._client is not None
        rc, _mid = self._client.subscribe(topic_filter, qos)
        assert rc == paho.MQTT_ERR_SUCCESS
        return self._subacks.get(timeout=TIMEOUT)[0]

    def expect(self, timeout: float = TIMEOUT) -> Received:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.device.device_name}: no message in {timeout}s") from None

    def expect_disconnect(self) -> int:
        return self.disconnects.get(timeout=TIMEOUT)

    def disconnect(self) -> None:
        client = self._client
        if client is None:
            return
        self._client = None
        try:
            if self.connected:
                client.disconnect()
                self.disconnects.get(timeout=TIMEOUT)
        finally:
            client.loop_stop()

    stop = disconnect
