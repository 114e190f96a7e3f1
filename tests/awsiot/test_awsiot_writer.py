"""Control-plane writes run on the registry writer thread: while another process holds
``registry.db``'s write lock, a write waits there, and reads, other accounts' calls and the
event loop go on; the write completes once the lock is released."""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

from iothub import TIMEOUT, IotHub

from thinghub.registry.models import AccessKey


def test_a_blocked_write_does_not_stall_reads(
    iot_hub: IotHub, tenant: tuple[AccessKey, Any]
) -> None:
    _key, iot = tenant
    iot.create_thing(thingName="before")
    writer = iot_hub.hub.registry_writer
    assert writer is not None
    blocker = sqlite3.connect(iot_hub.data_dir / "registry.db", isolation_level=None)
    outcome: dict[str, Any] = {}
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another process writing the file

        def create() -> None:
            try:
                outcome["created"] = iot.create_thing(thingName="during")
            except Exception as error:  # reported below
                outcome["error"] = error

        thread = threading.Thread(target=create)
        thread.start()
        deadline = time.monotonic() + TIMEOUT
        while iot_hub.on_loop(lambda: writer.pending) == 0:
            assert time.monotonic() < deadline, "the write never reached the writer"
            time.sleep(0.005)
        started = time.monotonic()
        assert iot.describe_thing(thingName="before")["thingName"] == "before"
        assert [t["thingName"] for t in iot.list_things()["things"]] == ["before"]
        assert iot.describe_endpoint()["endpointAddress"] == "127.0.0.1"
        assert time.monotonic() - started < 2.0, "reads waited for the blocked write"
        assert thread.is_alive(), "the write did not wait for the lock"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome
    assert iot.describe_thing(thingName="during")["thingId"] == outcome["created"]["thingId"]
