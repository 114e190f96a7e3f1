"""ThingHub in your own tests (README *Testing*): a real hub on free loopback ports, with a root
key, ready SDK clients and registered devices.

With pytest, the plugin (``pytest_plugin.py``, registered by ``pip install thinghub``) gives
the fixtures ``thinghub``, ``iot_device``, ``aws_iot_data``, ``aws_iot``, ``aliyun_iot`` and
``alibabacloud_iot``. Without pytest::

    with thinghub.testing.hub() as hub:            # a thread of this process
        ...
    with thinghub.testing.hub(process=True) as hub:  # a child process
        ...
    async with thinghub.testing.hub() as hub:      # the running event loop
        ...

Importing this package costs nothing: the hub's modules load when a hub starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .device import DeviceError, ExpectTimeout, IotDevice
    from .inloop import LoopHub
    from .options import HubOptions
    from .running import RunningHub

__all__ = [
    "DeviceError",
    "ExpectTimeout",
    "HubContext",
    "IotDevice",
    "LoopHub",
    "RunningHub",
    "hub",
]

# The types a test may name, loaded when it first names them (PEP 562): ``import
# thinghub.testing`` itself loads no hub module, and no paho-mqtt.
_LAZY = {
    "DeviceError": "device",
    "ExpectTimeout": "device",
    "IotDevice": "device",
    "LoopHub": "inloop",
    "RunningHub": "running",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def hub(
    *,
    process: bool = False,
    access_key_id: str | None = None,
    access_key_secret: str | None = None,
    settings: Mapping[str, Any] | None = None,
    **more_settings: Any,
) -> HubContext:
    """A test hub, started by ``with`` (or ``async with``) and stopped at its end.

    Settings, as dotted keys or sections, in ``settings`` or as keywords:
    ``hub(mqtt={"max_qos": 1})``, ``hub(settings={"mqtt.max_qos": 1})``. ``process=True``
    runs the hub in a child process (``with`` only). The root access key is random unless
    given."""
    from .options import HubOptions

    options = HubOptions.build(
        {**(settings or {}), **more_settings},
        access_key_id=access_key_id,
        access_key_secret=access_key_secret,
    )
    return HubContext(options, process=process)


class HubContext:
    """``with`` gives a ``RunningHub`` (a thread of this process, or a child process);
    ``async with`` a ``LoopHub`` on the running loop."""

    def __init__(self, options: HubOptions, *, process: bool = False) -> None:
        self.options = options
        self.process = process
        self._sync: RunningHub | None = None
        self._async: LoopHub | None = None

    def __enter__(self) -> RunningHub:
        if self._sync is not None or self._async is not None:
            raise RuntimeError("this hub() was entered already: call hub() again for another")
        if self.process:
            from .process import ProcessHub

            self._sync = ProcessHub.start(self.options)
        else:
            from .threaded import ThreadedHub

            self._sync = ThreadedHub.start(self.options)
        return self._sync

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        running, self._sync = self._sync, None
        if running is not None:
            running.stop()

    async def __aenter__(self) -> LoopHub:
        if self.process:
            raise ValueError(
                "async with hub(process=True): a process hub is not on any loop; use "
                "`with hub(process=True)` (its calls are short and blocking)"
            )
        if self._sync is not None or self._async is not None:
            raise RuntimeError("this hub() was entered already: call hub() again for another")
        from .inloop import LoopHub

        self._async = await LoopHub.start(self.options)
        return self._async

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        running, self._async = self._async, None
        if running is not None:
            await running.stop()
