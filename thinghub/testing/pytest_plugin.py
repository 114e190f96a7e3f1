"""The pytest plugin ``pip install thinghub`` registers (entry point ``pytest11``, name
``thinghub``; ``-p no:thinghub`` turns it off). Its fixtures need no import:

``thinghub``
    A running hub (``running.RunningHub``): in a thread of the test process, or a child
    process with ``--thinghub-process``. Shared by the tests of its scope
    (``--thinghub-scope=session|module|function``, ini ``thinghub_scope``; session by
    default) that ask for the same settings, and ``reset()`` after each of them; a
    function-scoped hub is started for the test and stopped after it. A test (or a module,
    with ``pytestmark``) says what it needs with
    ``@pytest.mark.thinghub(scope=..., settings={...}, process=..., reset=...)``.
``iot_device``
    ``iot_device(kind="aliyun" | "aws", **options)``: a registered device with a connected
    MQTT client (``device.IotDevice``), closed after the test. Needs paho-mqtt.
``aws_iot_data``, ``aws_iot``, ``aliyun_iot``, ``alibabacloud_iot``
    The SDKs' clients pointed at the hub with its root key (``clients.py``); a test that asks
    for one whose SDK is not installed is skipped, the message naming the package.

Loading the plugin costs nothing: it imports only pytest here, and ThingHub when a test first
asks for a hub. Its fixture names are its own (no ``hub``, ``client``, ``raw``): a project's
conftest keeps its fixtures, and one of the same name wins over the plugin's, as pytest
resolves fixtures.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from .device import IotDevice
    from .options import HubOptions
    from .running import DeviceKind, RunningHub

SCOPES = ("session", "module", "function")
MARKER = "thinghub"
_MARKER_HELP = (
    "thinghub(scope=None, settings=None, process=None, reset=True): how the `thinghub` "
    "fixture's hub is made for this test: its scope (session, module, function), its settings "
    '({"mqtt.max_qos": 1} or {"mqtt": {"max_qos": 1}}), whether it runs in a child process, '
    "and whether a shared hub is reset after the test (README *Testing*)"
)
_MARKER_KEYS = frozenset({"scope", "settings", "process", "reset"})


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("thinghub", "ThingHub test hubs (the thinghub fixture)")
    group.addoption(
        "--thinghub-scope",
        choices=SCOPES,
        default=None,
        help="how long a hub of the `thinghub` fixture lives: shared by the session (default), "
        "by each module, or one per test",
    )
    group.addoption(
        "--thinghub-process",
        action="store_true",
        default=None,
        help="run the hubs of the `thinghub` fixture in child processes, not in this one",
    )
    parser.addini("thinghub_scope", "default of --thinghub-scope", default="session")
    parser.addini("thinghub_process", "default of --thinghub-process", type="bool", default=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}: {_MARKER_HELP}")


# ---------------------------------------------------------------------- what a test wants


class _Wanted:
    """The hub one test asks for: marker, then command line, then ini."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        config = request.config
        marker = request.node.get_closest_marker(MARKER)
        kwargs: Mapping[str, Any] = marker.kwargs if marker is not None else {}
        if marker is not None and marker.args:
            _refuse(f"@pytest.mark.{MARKER} takes keywords only: {_MARKER_HELP}")
        unknown = set(kwargs) - _MARKER_KEYS
        if unknown:
            _refuse(f"@pytest.mark.{MARKER}: unknown {', '.join(sorted(unknown))}; {_MARKER_HELP}")
        scope = kwargs.get("scope") or config.getoption("thinghub_scope")
        scope = scope or config.getini("thinghub_scope")
        if scope not in SCOPES:
            _refuse(f"thinghub scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        self.scope: str = scope
        process = kwargs.get("process")
        if process is None:
            process = config.getoption("thinghub_process")
        if process is None:
            process = config.getini("thinghub_process")
        self.process = bool(process)
        self.reset = bool(kwargs.get("reset", True))
        settings = kwargs.get("settings") or {}
        if not isinstance(settings, Mapping):
            _refuse(f"@pytest.mark.{MARKER}: settings is a dict, not {settings!r}")
        self.settings: Mapping[str, Any] = settings

    def options(self) -> HubOptions:
        from ..config import ConfigError
        from .options import HubOptions

        try:
            return HubOptions.build(self.settings)
        except ConfigError as error:
            problem = str(error)
        _refuse(f"@pytest.mark.{MARKER} settings: {problem}")  # outside: no chained traceback


def _refuse(message: str) -> NoReturn:
    """A test that asks for a hub it cannot have fails with this message alone."""
    pytest.fail(message, pytrace=False)


def _start(options: HubOptions, process: bool) -> RunningHub:
    if process:
        from .process import ProcessHub

        return ProcessHub.start(options)
    from .threaded import ThreadedHub

    return ThreadedHub.start(options)


class _Pool:
    """The hubs shared by the tests of one scope, one per distinct settings (and process or
    not); stopped when the scope ends."""

    def __init__(self) -> None:
        self.hubs: dict[Any, RunningHub] = {}

    def get(self, options: HubOptions, process: bool) -> RunningHub:
        key = (process, options.key())
        running = self.hubs.get(key)
        if running is None or running.stopped:
            running = self.hubs[key] = _start(options, process)
        return running

    def discard(self, running: RunningHub) -> None:
        """Stop a hub that cannot be shared any more (its reset failed)."""
        for key, held in list(self.hubs.items()):
            if held is running:
                del self.hubs[key]
        running.stop()

    def close(self) -> None:
        errors: list[BaseException] = []
        hubs, self.hubs = list(self.hubs.values()), {}
        for running in hubs:
            try:
                running.stop()
            except BaseException as error:  # stop them all, then report
                errors.append(error)
        if errors:
            raise errors[0]


@pytest.fixture(scope="session")
def _thinghub_session_pool() -> Iterator[_Pool]:
    pool = _Pool()
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def _thinghub_module_pool() -> Iterator[_Pool]:
    pool = _Pool()
    yield pool
    pool.close()


# ---------------------------------------------------------------------- fixtures


@pytest.fixture
def thinghub(request: pytest.FixtureRequest) -> Iterator[RunningHub]:
    """A running ThingHub (module notes; README *Testing*)."""
    wanted = _Wanted(request)
    options = wanted.options()
    if wanted.scope == "function":
        running = _start(options, wanted.process)
        try:
            yield running
        finally:
            running.stop()
        return
    pool: _Pool = request.getfixturevalue(f"_thinghub_{wanted.scope}_pool")
    running = pool.get(options, wanted.process)
    yield running
    if wanted.reset and not running.stopped:
        try:
            running.reset()
        except BaseException:
            pool.discard(running)  # the next test gets a new hub
            raise


# The SDK checks are fixtures of their own, asked for before ``thinghub``: a test whose SDK is
# missing is skipped before any hub starts.


@pytest.fixture
def _thinghub_needs_paho() -> None:
    _require("paho.mqtt.client", "paho-mqtt", "the iot_device fixture")


@pytest.fixture
def _thinghub_needs_boto3() -> None:
    _require("boto3", "boto3", "the aws_iot_data and aws_iot fixtures")


@pytest.fixture
def _thinghub_needs_aliyun_core() -> None:
    _require("aliyunsdkcore", "aliyun-python-sdk-core", "the aliyun_iot fixture")


@pytest.fixture
def _thinghub_needs_tea() -> None:
    _require("alibabacloud_iot20180120", "alibabacloud-iot20180120", "the alibabacloud_iot fixture")


@pytest.fixture
def iot_device(
    _thinghub_needs_paho: None, thinghub: RunningHub
) -> Iterator[Callable[..., IotDevice]]:
    """``iot_device(kind="aliyun", **options)`` -> a connected device (``RunningHub.device``
    lists the options). The Alibaba devices of one test share one product unless a
    ``product_key`` is given. Every device is closed after the test."""
    made: list[IotDevice] = []
    product: list[str] = []

    def make(kind: DeviceKind = "aliyun", **options: Any) -> IotDevice:
        if kind == "aliyun" and product and "product_key" not in options:
            options["product_key"] = product[0]
        device = thinghub.device(kind, **options)
        made.append(device)
        if kind == "aliyun" and not product and device.product_key is not None:
            product.append(device.product_key)
        return device

    yield make
    for device in made:
        device.close()


@pytest.fixture
def aws_iot_data(_thinghub_needs_boto3: None, thinghub: RunningHub) -> Any:
    """boto3's ``iot-data`` client of the hub, signed with its root key."""
    return thinghub.aws_iot_data()


@pytest.fixture
def aws_iot(_thinghub_needs_boto3: None, thinghub: RunningHub) -> Any:
    """boto3's ``iot`` client (the AWS IoT control plane) of the hub."""
    return thinghub.aws_iot()


@pytest.fixture
def aliyun_iot(_thinghub_needs_aliyun_core: None, thinghub: RunningHub) -> Any:
    """aliyun-python-sdk-core's ``AcsClient``, the hub its ``Iot`` endpoint."""
    return thinghub.aliyun_iot()


@pytest.fixture
def alibabacloud_iot(_thinghub_needs_tea: None, thinghub: RunningHub) -> Any:
    """alibabacloud-iot20180120's ``Client`` (the Tea SDK) of the hub."""
    return thinghub.alibabacloud_iot()


def _require(module: str, package: str, needed_by: str) -> None:
    """Skip the test when the SDK a fixture needs is not installed (looked up, not loaded)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a None in sys.modules
        found = False
    if not found:
        pytest.skip(f"{package} is not installed (pip install {package}): {needed_by} need it")
