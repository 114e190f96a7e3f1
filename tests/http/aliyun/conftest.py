"""Fixtures for the Alibaba RPC API tests: one real hub per test module (see
``aliyun_harness.py``), products and devices in its registry, and paho devices stopped after
each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aliyun_harness import Hub, PahoDevice

from thinghub.registry.models import Device, Product

# Per-module rate limits: a module sets ``LIMITS = {...}`` to test throttling.
DEFAULT_LIMITS: dict[str, float] = {}


@pytest.fixture(scope="module")
def hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    limits = getattr(request.module, "LIMITS", DEFAULT_LIMITS)
    started = Hub(tmp_path_factory.mktemp("hub"), dict(limits)).start()
    yield started
    started.stop()


@pytest.fixture
def product(hub: Hub) -> Product:
    return hub.product()


@pytest.fixture
def device(hub: Hub, product: Product) -> Device:
    return hub.device(product)


@pytest.fixture
def paho_device(hub: Hub) -> Iterator[Callable[..., PahoDevice]]:
    """Factory: ``paho_device(device, **options)`` connected; all stopped after the test."""
    made: list[PahoDevice] = []

    def make(device: Device, connect: bool = True, **options: Any) -> PahoDevice:
        client = PahoDevice(hub, device, **options)
        made.append(client)
        return client.connect() if connect else client

    yield make
    for client in made:
        client.stop()
