"""``thinghub trace`` against a running ``thinghub serve``: the readable report, ``--json``,
``--recent``, the keys from the environment; and a hub with tracing off, which keeps no trace
and says so."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from tracehub import (
    KEY_ID,
    SECRET,
    TIMEOUT,
    Device,
    SecHub,
    pub,
    rawmqtt,
    start,
    trace,
    trace_error,
)

from thinghub.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"THINGHUB_ROOT_ACCESS_KEY_ID": KEY_ID, "THINGHUB_ROOT_ACCESS_KEY_SECRET": SECRET}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecHub]:
    started = start(tmp_path_factory.mktemp("cli"), trace_enabled=True)
    yield started
    started.stop()


@pytest.fixture
def device(hub: SecHub) -> Device:
    product_key = hub.product(f"cli{uuid.uuid4().hex[:8]}")
    return hub.device(product_key, f"d{uuid.uuid4().hex[:10]}")


def url(hub: SecHub) -> str:
    return f"http://{hub.host}:{hub.http_port}"


def delivered(hub: SecHub, device: Device) -> int:
    """A QoS 1 Pub the device received and acknowledged: its MessageId."""
    client, _ = device.sign_in(5)
    topic = device.topic("user/get")
    assert client.subscribe(topic, qos=1) == [1]
    message_id = pub(hub, device.product_key, topic, b"for the report", qos=1)
    publish = client.expect(rawmqtt.PUBLISH)
    client.send(rawmqtt.ack(rawmqtt.PUBACK, publish.mid))
    client.ping()
    client.disconnect()
    return message_id


def test_the_command_prints_a_readable_report(hub: SecHub, device: Device) -> None:
    message_id = delivered(hub, device)
    result = CliRunner().invoke(cli_main, ["trace", str(message_id), "--url", url(hub)], env=KEYS)
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"Message {message_id}" in out
    assert device.topic("user/get") in out
    [line] = [line for line in out.splitlines() if line.startswith(f"  {device.client_id}  ")]
    assert line.startswith(f"  {device.client_id}  QoS 1, session ")
    assert line.endswith(": delivered and acknowledged")
    assert "sent" in out and "acknowledged" in out


def test_json_and_recent(hub: SecHub, device: Device) -> None:
    message_id = delivered(hub, device)
    as_json = CliRunner().invoke(
        cli_main, ["trace", str(message_id), "--url", url(hub), "--json"], env=KEYS
    )
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output) == trace(hub, message_id)

    recent = CliRunner().invoke(
        cli_main,
        ["trace", "--recent", "--topic", device.topic("user/get"), "--url", url(hub)],
        env=KEYS,
    )
    assert recent.exit_code == 0, recent.output
    assert str(message_id) in recent.output and "routed" in recent.output

    # The hub's own $SYS statistics are not traced: they would push clients' messages out.
    everything = CliRunner().invoke(
        cli_main, ["trace", "--recent", "--limit", "100", "--url", url(hub), "--json"], env=KEYS
    )
    topics = [item["topic"] for item in json.loads(everything.output)["messages"]]
    assert device.topic("user/get") in topics
    assert not [topic for topic in topics if topic.startswith("$SYS/")]


def test_the_installed_command_with_keys_from_the_environment(hub: SecHub, device: Device) -> None:
    message_id = delivered(hub, device)
    done = subprocess.run(
        [str(ROOT / ".venv/bin/thinghub"), "trace", str(message_id), "--url", url(hub)],
        env={**os.environ, **KEYS},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert "delivered and acknowledged" in done.stdout


def test_errors_are_said_plainly(hub: SecHub) -> None:
    unknown = CliRunner().invoke(cli_main, ["trace", "123456", "--url", url(hub)], env=KEYS)
    assert unknown.exit_code == 1
    assert "HTTP 404: No trace of message 123456" in unknown.output

    no_keys = CliRunner().invoke(
        cli_main,
        ["trace", "1", "--url", url(hub)],
        env={"THINGHUB_ROOT_ACCESS_KEY_ID": "", "THINGHUB_ROOT_ACCESS_KEY_SECRET": ""},
    )
    assert no_keys.exit_code == 2 and "no access key" in no_keys.output

    wrong = CliRunner().invoke(
        cli_main, ["trace", "1", "--url", url(hub), "--secret", "wrong"], env=KEYS
    )
    assert wrong.exit_code == 1 and "HTTP 403" in wrong.output

    nobody = CliRunner().invoke(cli_main, ["trace", "1", "--url", "http://127.0.0.1:1"], env=KEYS)
    assert nobody.exit_code == 1 and "cannot reach the hub" in nobody.output


@pytest.fixture(scope="module")
def untraced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecHub]:
    started = start(tmp_path_factory.mktemp("untraced"))  # [trace] enabled is false
    yield started
    started.stop()


def test_with_tracing_off_no_trace_is_kept_and_the_answer_says_why(untraced: SecHub) -> None:
    device = untraced.device(untraced.product(f"off{uuid.uuid4().hex[:8]}"), "dev1")
    message_id = pub(untraced, device.product_key, device.topic("user/get"), b"x", qos=1)
    error = trace_error(untraced, f"/thinghub/trace/{message_id}")
    assert error.status == 404 and "tracing is off" in error.message
    result = CliRunner().invoke(
        cli_main, ["trace", str(message_id), "--url", url(untraced)], env=KEYS
    )
    assert result.exit_code == 1 and "Delivery tracing is off" in result.output
