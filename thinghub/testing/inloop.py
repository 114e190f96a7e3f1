"""``async with thinghub.testing.hub() as hub``: a test hub on the caller's running event loop,
for asyncio tests whose own code talks to the hub from that loop.

Everything the hub does runs on that loop, so test code on it must not block: the cloud SDKs
(boto3, the Alibaba SDKs) and ``IotDevice``'s waiting methods are called through
``asyncio.to_thread``. ``device()`` does so itself (registering and connecting wait for the
hub). The hub's threads that ``asyncio.to_thread`` starts belong to the loop's default
executor, which its owner shuts down (``asyncio.run`` and pytest-asyncio do).
"""

from __future__ import annotations

import asyncio
import shutil
from typing import TYPE_CHECKING, Any

from ..app import Hub
from ..identity.service import IdentityService
from ..registry.registry import Registry
from .baseline import RegistryBaseline
from .options import HubOptions
from .reset import ResetReport, reset_hub
from .running import DeviceKind, HubBase, Ports
from .threaded import make_data_dir

if TYPE_CHECKING:
    from .device import IotDevice

__all__ = ["LoopHub"]


class LoopHub(HubBase):
    def __init__(self, options: HubOptions, hub: Hub, ports: Ports, temporary: bool) -> None:
        assert hub.ca is not None and hub.registry is not None
        super().__init__(options, hub.settings, ports, hub.ca.pem)
        self.hub = hub
        self._temporary = temporary
        self.baseline = RegistryBaseline.capture(hub.registry.store)

    @classmethod
    async def start(cls, options: HubOptions) -> LoopHub:
        data_dir, temporary = make_data_dir(options)
        hub = Hub(options.resolve(data_dir), environ=options.environ())
        try:
            endpoints = await hub.start()
            tls = endpoints.mqtts[1] if endpoints.mqtts else None
            ports = Ports(endpoints.mqtt[0], endpoints.mqtt[1], endpoints.http[1], tls)
            return cls(options, hub, ports, temporary)
        except BaseException:
            try:
                await hub.stop()
            finally:
                if temporary:
                    shutil.rmtree(data_dir, ignore_errors=True)
            raise

    @property
    def registry(self) -> Registry:
        registry = self.hub.registry
        assert registry is not None
        return registry

    @property
    def identity(self) -> IdentityService:
        identity = self.hub.identity
        assert identity is not None
        return identity

    async def reset(self) -> ResetReport:
        """See ``reset.py``."""
        if self.stopped:
            raise RuntimeError("the hub has stopped")
        return await reset_hub(self.hub, self.baseline)

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        try:
            await self.hub.stop()
        finally:
            if self._temporary:
                shutil.rmtree(self.data_dir, ignore_errors=True)

    async def device(self, kind: DeviceKind = "aliyun", **options: Any) -> IotDevice:
        """As ``RunningHub.device``, off the loop (registering and connecting wait on it)."""
        return await asyncio.to_thread(self._make_device, kind, **options)
