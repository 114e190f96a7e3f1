"""`thinghub account|product|device|topic`: the registry from the command line, on a real data
directory; a device registered there signs in to a hub running on the same directory."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from thinghub.cli import main

pytestmark = pytest.mark.thinghub_only
ROOT = Path(__file__).resolve().parents[1]


def run(data_dir: Path, *args: str) -> Any:
    result = CliRunner().invoke(main, [*args, "--data-dir", str(data_dir), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_product_device_topic_lifecycle(tmp_path: Path) -> None:
    product = run(tmp_path, "product", "create", "Meters_01", "--description", "water")[0]
    pk = product["product_key"]
    assert [p["name"] for p in run(tmp_path, "product", "list")] == ["Meters_01"]
    device = run(tmp_path, "device", "register", pk, "meter-7")[0]
    assert device["device_name"] == "meter-7" and len(device["device_secret"]) == 32
    shown = run(tmp_path, "device", "show", pk, "meter-7")
    assert shown["status"] == "UNACTIVE"
    assert shown["mqtt"]["username"] == f"meter-7&{pk}"
    topics = run(tmp_path, "topic", "list", pk)
    assert {t["topic_short_name"] for t in topics} == {"update", "update/error", "get"}
    created = run(tmp_path, "topic", "create", pk, "cmd/+", "--operation", "sub")[0]
    run(tmp_path, "topic", "delete", str(created["id"]))
    run(tmp_path, "device", "disable", pk, "meter-7")
    assert run(tmp_path, "device", "show", pk, "meter-7")["status"] == "DISABLE"
    run(tmp_path, "device", "delete", pk, "meter-7")
    run(tmp_path, "product", "delete", pk)
    assert run(tmp_path, "product", "list") == []


def test_errors_are_the_registry_codes_and_change_nothing(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["device", "show", "a1nope00000", "x", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "iot.prod.NotExistedProduct" in result.output
    result = CliRunner().invoke(main, ["product", "create", "no", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "InvalidFormattedProductName" in result.output
    assert run(tmp_path, "product", "list") == []


def test_accounts_keep_their_resources_apart(tmp_path: Path) -> None:
    other = run(tmp_path, "account", "create", "tenant-b")[0]
    run(tmp_path, "product", "create", "Private_01", "--account", other["account_id"])
    assert run(tmp_path, "product", "list") == []  # the root account sees none of it
    keys = run(tmp_path, "account", "keys", "--account", other["account_id"])
    assert [k["access_key_id"] for k in keys] == [other["access_key_id"]]


def test_device_registered_from_the_cli_signs_in_to_a_running_hub(tmp_path: Path) -> None:
    env = {**os.environ, "THINGHUB_MQTT_ALLOW_ANONYMOUS": "false"}
    hub = subprocess.Popen(
        [str(ROOT / ".venv/bin/thinghub"), "serve", "--mqtt-port", "0", "--http-port", "0",
         "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        assert hub.stdout is not None
        port = 0
        for line in hub.stdout:
            if m := re.match(r"ready mqtt=[\d.]+:(\d+)", line):
                port = int(m.group(1))
                break
        assert port, "the hub did not start"
        pk = run(tmp_path, "product", "create", "Live_0001")[0]["product_key"]
        run(tmp_path, "device", "register", pk, "live-1")
        creds = run(tmp_path, "device", "show", pk, "live-1")["mqtt"]
        events: queue.Queue[Any] = queue.Queue()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=creds["client_id"])
        client.username_pw_set(creds["username"], creds["password"])
        client.on_connect = lambda _c, _u, _f, rc, _p=None: events.put(rc)
        client.connect("127.0.0.1", port)
        client.loop_start()
        try:
            assert not events.get(timeout=10).is_failure
            # The hub writes presence to registry.db in batches, just after the CONNACK
            # (thinghub/registry/presence_writer.py): the command line sees it shortly after.
            deadline = time.monotonic() + 10
            while (status := run(tmp_path, "device", "show", pk, "live-1")["status"]) != "ONLINE":
                assert time.monotonic() < deadline, f"still {status}"
                time.sleep(0.02)
        finally:
            client.disconnect()
            client.loop_stop()
    finally:
        hub.terminate()
        assert hub.wait(10) == 0
        assert hub.stdout is not None
        hub.stdout.close()
