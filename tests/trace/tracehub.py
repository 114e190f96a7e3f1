"""A real ``thinghub serve`` with delivery tracing on (SecHub, tests/security/sechub.py: its
own data directory, a known root access key, the registry through the command line), and what
the trace tests do with it: Alibaba ``Pub`` through the official SDK (aliyun-python-sdk-core),
devices signing in over raw MQTT, and traces read over HTTP, signed by the same client code as
``thinghub trace`` (thinghub/trace/client.py)."""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

from aliyunsdkcore.client import AcsClient
from aliyunsdkiot.request.v20180120.PubRequest import PubRequest

from thinghub.trace.client import TraceError, get_json

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "security"))
sys.path.insert(0, str(HERE.parent / "scenarios"))
import rawmqtt  # noqa: E402
from sechub import KEY_ID, SECRET, TIMEOUT, Device, SecHub, wait_for  # noqa: E402

__all__ = [
    "KEY_ID",
    "SECRET",
    "TIMEOUT",
    "Device",
    "SecHub",
    "other_account_key",
    "pub",
    "rawmqtt",
    "session_of",
    "start",
    "trace",
    "trace_error",
    "wait_for",
    "wait_trace",
]


def start(data_dir: Path, **settings: Any) -> SecHub:
    """A hub on free ports only (the TLS listener too: other hubs run beside it)."""
    return SecHub(data_dir, mqtt_tls_port=0, **settings)


def pub(
    hub: SecHub,
    product_key: str,
    topic: str,
    payload: bytes,
    qos: int = 0,
    **extra: Any,
) -> int:
    """Alibaba ``Pub`` with the root key; the MessageId it answers."""
    request = PubRequest()
    request.set_ProductKey(product_key)
    request.set_TopicFullName(topic)
    request.set_MessageContent(base64.b64encode(payload).decode())
    request.set_Qos(qos)
    for name, value in extra.items():
        getattr(request, f"set_{name}")(value)
    request.set_endpoint(f"{hub.host}:{hub.http_port}")
    answer = json.loads(AcsClient(KEY_ID, SECRET, "cn-shanghai").do_action_with_exception(request))
    assert answer["Success"] is True, answer
    return int(answer["MessageId"])


def trace(hub: SecHub, message_id: int, key: tuple[str, str] = (KEY_ID, SECRET)) -> dict[str, Any]:
    """``GET /thinghub/trace/{MessageId}``, signed."""
    return get_json(_url(hub), f"/thinghub/trace/{message_id}", [], *key)


def trace_error(hub: SecHub, path: str, key: tuple[str, str] = (KEY_ID, SECRET)) -> TraceError:
    """The error a signed GET of ``path`` gets."""
    try:
        answer = get_json(_url(hub), path, [], *key)
    except TraceError as error:
        return error
    raise AssertionError(f"expected an error, got {answer}")


def wait_trace(
    hub: SecHub, message_id: int, client_id: str, fate: str, timeout: float = TIMEOUT
) -> dict[str, Any]:
    """The trace once ``client_id``'s copy has ``fate``: for what the hub does after it has
    answered (an acknowledgement's effect is not observable by the device otherwise)."""
    deadline = time.monotonic() + timeout
    while True:
        found = trace(hub, message_id)
        entry = session_of(found, client_id)
        if entry is not None and entry["fate"] == fate:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{client_id} never reached {fate}: {found}")
        time.sleep(0.02)


def session_of(found: dict[str, Any], client_id: str) -> dict[str, Any] | None:
    for entry in found["sessions"]:
        if entry["clientId"] == client_id:
            return dict(entry)
    return None


def other_account_key(hub: SecHub, name: str = "other") -> tuple[str, str]:
    """An access key of a new account (``account create`` makes its first key)."""
    created = hub.cli("account", "create", name)
    key = created[0] if isinstance(created, list) else created
    return str(key["access_key_id"]), str(key["secret"])


def _url(hub: SecHub) -> str:
    return f"http://{hub.host}:{hub.http_port}"
