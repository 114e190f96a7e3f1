"""The session's iot-data hub (see awshub.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterator

import pahoclient
import pytest
from awshub import AwsHub, start_hub


@pytest.fixture(scope="session")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AwsHub]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="aws-hub", daemon=True)
    thread.start()
    tmp = tmp_path_factory.mktemp("aws-hub")
    hub, stop = asyncio.run_coroutine_threadsafe(start_hub(tmp), loop).result(15)
    try:
        yield hub
    finally:
        try:
            asyncio.run_coroutine_threadsafe(stop(), loop).result(15)
        except concurrent.futures.TimeoutError:
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.fixture
def sub(aws: AwsHub) -> Iterator[Callable[..., pahoclient.Client]]:
    """Factory of connected paho clients subscribed to one filter (v5 by default; ``None``
    subscribes to nothing), stopped after the test."""
    made: list[pahoclient.Client] = []

    def make(
        topic_filter: str | None, qos: int = 1, version: int = 5, **options: object
    ) -> pahoclient.Client:
        client = pahoclient.Client(aws, version=version, **options)  # type: ignore[arg-type]
        made.append(client)
        client.connect()
        if topic_filter is not None:
            client.subscribe(topic_filter, qos)
        return client

    yield make
    for client in made:
        client.stop()
