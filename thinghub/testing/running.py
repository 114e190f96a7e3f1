"""What a test holds of a hub it started, wherever the hub runs: its addresses and ports, its
root key, its registry, ready SDK clients and devices (``HubBase``); and ``reset()`` /
``stop()``, blocking (``RunningHub``: a thread of the test process, ``threaded.py``, or a child
process, ``process.py``) or awaited (``inloop.LoopHub``: the caller's own event loop).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from ..auth.aliyun_device import build_credentials
from ..config import Settings
from ..identity.service import IdentityService
from ..registry.accounts import ROOT_ACCOUNT_ID
from ..registry.registry import Registry
from . import clients
from .options import HubOptions

if TYPE_CHECKING:
    from .device import IotDevice
    from .reset import ResetReport

__all__ = ["DeviceKind", "HubBase", "Ports", "RunningHub"]

#: an Alibaba device (signs in with its DeviceSecret), or an AWS IoT thing (a certificate)
DeviceKind = Literal["aliyun", "aws"]
KINDS: tuple[str, ...] = get_args(DeviceKind)


@dataclass(frozen=True, slots=True)
class Ports:
    """Where a started hub listens (all on ``host``); ``tls`` is None without TLS."""

    host: str
    mqtt: int
    http: int
    tls: int | None


class HubBase(ABC):
    """A started test hub. Its attributes are fixed once it runs; ``registry`` is the hub's
    own (in this process) or one over the same files (a process hub: the command line's
    view)."""

    def __init__(self, options: HubOptions, settings: Settings, ports: Ports, ca_pem: str) -> None:
        self.options = options
        #: the hub's settings, test defaults and the test's own included
        self.settings = settings
        self.ports = ports
        #: the hub's CA certificate (PEM): what TLS clients trust (``thinghub ca show``)
        self.ca_pem = ca_pem
        self.stopped = False

    # ------------------------------------------------------------------ where it is

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    @property
    def mqtt_host(self) -> str:
        return self.ports.host

    @property
    def mqtt_port(self) -> int:
        return self.ports.mqtt

    @property
    def tls_port(self) -> int | None:
        """MQTT over TLS (client certificates too); None when ``mqtt.tls`` is off."""
        return self.ports.tls

    @property
    def http_port(self) -> int:
        return self.ports.http

    @property
    def http_url(self) -> str:
        """Both cloud APIs, ``/healthz``, ``/metrics``, MQTT over WebSocket at ``/mqtt``."""
        return f"http://{self.ports.host}:{self.ports.http}"

    @property
    def access_key_id(self) -> str:
        """The root account's access key (both dialects)."""
        return self.options.access_key_id

    @property
    def access_key_secret(self) -> str:
        return self.options.access_key_secret

    @property
    def account_id(self) -> str:
        """The root account: the key's, and the devices' ``device()`` makes."""
        return ROOT_ACCOUNT_ID

    @property
    @abstractmethod
    def registry(self) -> Registry: ...

    @property
    @abstractmethod
    def identity(self) -> IdentityService:
        """The AWS IoT identities (things, certificates, policies)."""

    # ------------------------------------------------------------------ clients

    def aws_iot_data(self) -> Any:
        """boto3 ``iot-data`` (``clients.py``)."""
        return clients.aws_iot_data(
            self.http_url, self.access_key_id, self.access_key_secret, self._region
        )

    def aws_iot(self) -> Any:
        """boto3 ``iot``: the AWS IoT control plane."""
        return clients.aws_iot(
            self.http_url, self.access_key_id, self.access_key_secret, self._region
        )

    def aliyun_iot(self) -> Any:
        """aliyun-python-sdk-core's ``AcsClient`` with the hub as the ``Iot`` endpoint."""
        return clients.aliyun_iot(self._host_port, self.access_key_id, self.access_key_secret)

    def alibabacloud_iot(self) -> Any:
        """The Tea SDK's ``alibabacloud_iot20180120.client.Client``."""
        return clients.alibabacloud_iot(self._host_port, self.access_key_id, self.access_key_secret)

    @property
    def _region(self) -> str:
        return self.settings.aws.region

    @property
    def _host_port(self) -> str:
        return f"{self.ports.host}:{self.ports.http}"

    # ------------------------------------------------------------------ devices

    def _make_device(
        self,
        kind: DeviceKind = "aliyun",
        *,
        product_key: str | None = None,
        device_name: str | None = None,
        thing_name: str | None = None,
        client_id: str | None = None,
        policy: Any = None,
        protocol: int = 5,
        clean_start: bool = True,
        session_expiry: int = 0,
        connect: bool = True,
        timeout: float = 5.0,
    ) -> IotDevice:
        """A registered device and its MQTT client (``device.IotDevice``), connected unless
        ``connect=False``. The caller closes it (``IotDevice.close``).

        ``kind="aliyun"``: a device of ``product_key`` (else of a new product), signing in
        with its DeviceSecret (HMAC-SHA256) on the MQTT port. ``kind="aws"``: the thing
        ``thing_name`` (made if needed) with a new certificate of the hub's CA and ``policy``
        (default: everything allowed), over mutual TLS on the TLS port, client id
        ``client_id`` (default: the thing's name)."""
        from . import enrol
        from .device import IotDevice, SignIn  # paho-mqtt: only when a device is made

        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if protocol not in (4, 5):
            raise ValueError("protocol is 5 (MQTT 5.0) or 4 (MQTT 3.1.1)")
        device: IotDevice
        if kind == "aliyun":
            if thing_name is not None or policy is not None:
                raise ValueError("thing_name and policy are for kind='aws'")
            made = enrol.register_aliyun(
                self.registry, self.account_id, product_key=product_key, device_name=device_name
            )
            cid, username, password = build_credentials(
                made.product_key, made.device_name, made.device_secret, client_id=client_id
            )
            device = IotDevice(
                host=self.mqtt_host,
                port=self.mqtt_port,
                sign_in=SignIn(cid, username, password),
                product_key=made.product_key,
                device_name=made.device_name,
                device_secret=made.device_secret,
            )
        else:
            if product_key is not None or device_name is not None:
                raise ValueError("product_key and device_name are for kind='aliyun'")
            if self.tls_port is None:
                raise ValueError(
                    "kind='aws' devices sign in with mutual TLS: the hub's TLS listener is off "
                    "(mqtt.tls = false)"
                )
            thing = enrol.register_aws(
                self.identity, self.account_id, thing_name=thing_name, policy=policy
            )
            device = IotDevice(
                host=self.mqtt_host,
                port=self.tls_port,
                sign_in=SignIn(client_id or thing.thing_name, tls=thing.tls_context(self.ca_pem)),
                thing_name=thing.thing_name,
                certificate_id=thing.certificate_id,
                certificate_pem=thing.certificate_pem,
                private_key_pem=thing.private_key_pem,
            )
        device.protocol = protocol
        device.clean_start = clean_start
        device.session_expiry = session_expiry
        device.timeout = timeout
        if connect:
            device.connect()
        return device


class RunningHub(HubBase):
    """A hub the test drives with blocking calls (a thread hub, a process hub)."""

    # ------------------------------------------------------------------ lifecycle

    @abstractmethod
    def reset(self) -> ResetReport:
        """Back to how it started, for the next test (``reset.py`` says what goes); returns
        what was removed."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the hub and remove what it made (its temporary data directory). Idempotent."""

    def __enter__(self) -> RunningHub:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def device(self, kind: DeviceKind = "aliyun", **options: Any) -> IotDevice:
        """A registered device and its MQTT client, connected unless ``connect=False``; the
        caller closes it (``IotDevice.close``). Options: ``HubBase._make_device``."""
        return self._make_device(kind, **options)
