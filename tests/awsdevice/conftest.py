"""One real hub for the AWS IoT device tests (``devhub.DevHub``), and a fresh account per
test that wants one, so that what a test makes is its own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from devhub import DevHub


@pytest.fixture(scope="session")
def dev_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevHub]:
    hub = DevHub(tmp_path_factory.mktemp("aws-devices") / "data")
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def tenant_iot(dev_hub: DevHub) -> tuple[str, str, Any]:
    """A fresh account: its key id, secret and boto3 ``iot`` client."""
    return dev_hub.tenant()
