"""The session's control-plane hub (``iothub.IotHub``) and per-test tenants: each test acts in
an account of its own, so listings see only what the test made."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from iothub import IotHub

from thinghub.registry.models import AccessKey


@pytest.fixture(scope="session")
def iot_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IotHub]:
    hub = IotHub(tmp_path_factory.mktemp("iot-hub") / "data")
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def tenant(iot_hub: IotHub) -> tuple[AccessKey, Any]:
    """A fresh account: its key and a boto3 ``iot`` client acting in it."""
    return iot_hub.tenant()


@pytest.fixture
def iot(tenant: tuple[AccessKey, Any]) -> Any:
    return tenant[1]
