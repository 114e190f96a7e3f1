"""Device shadows through boto3's iot-data client, unmodified (GetThingShadow,
UpdateThingShadow, DeleteThingShadow, ListNamedShadowsForThing), and through MQTT with paho
devices (v3.1.1 and v5) on the reserved ``$aws/things/.../shadow/...`` topics; and shadows
surviving a restart of ``thinghub serve`` started on a registry.db from before shadows."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pahoclient
import pytest
from awshub import NO_RETRIES, AwsHub
from botocore.exceptions import ClientError
from pahoclient import unique

from thinghub.http.ratelimit import AWS_RATE_GROUPS, AWS_SHADOW_RATE, RateLimiter
from thinghub.registry.registry import Registry
from thinghub.registry.store import FILE_NAME, MIGRATIONS, RegistryStore

Sub = Callable[..., pahoclient.Client]
ROOT = Path(__file__).resolve().parents[3]


def read(answer: dict[str, Any]) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(answer["payload"].read())
    return document


def names(shadow: str | None) -> dict[str, str]:
    return {} if shadow is None else {"shadowName": shadow}


def update(client: Any, thing: str, document: Any, shadow: str | None = None) -> dict[str, Any]:
    payload = json.dumps(document).encode()
    return read(client.update_thing_shadow(thingName=thing, payload=payload, **names(shadow)))


def get(client: Any, thing: str, shadow: str | None = None) -> dict[str, Any]:
    return read(client.get_thing_shadow(thingName=thing, **names(shadow)))


def delete(client: Any, thing: str, shadow: str | None = None) -> dict[str, Any]:
    return read(client.delete_thing_shadow(thingName=thing, **names(shadow)))


def error_of(info: pytest.ExceptionInfo[ClientError]) -> tuple[str, int, str]:
    response = info.value.response
    status = response["ResponseMetadata"]["HTTPStatusCode"]
    return response["Error"]["Code"], status, response["Error"]["Message"]


# --------------------------------------------------------------------------- HTTP


def test_classic_shadow_update_get_delete(aws: AwsHub) -> None:
    client = aws.client()
    thing = unique("thing")
    with pytest.raises(client.exceptions.ResourceNotFoundException) as info:
        client.get_thing_shadow(thingName=thing)
    assert error_of(info) == (
        "ResourceNotFoundException",
        404,
        f"No shadow exists with name: '{thing}'",
    )
    before = int(time.time())
    desired = {"color": "red", "power": "on", "rgb": [255, 0, 0]}
    accepted = update(client, thing, {"state": {"desired": desired}, "clientToken": "tok-1"})
    after = int(time.time())
    assert accepted["state"] == {"desired": desired}
    assert accepted["version"] == 1
    assert accepted["clientToken"] == "tok-1"
    assert before <= accepted["timestamp"] <= after
    stamp = accepted["metadata"]["desired"]["color"]["timestamp"]
    assert before <= stamp <= after
    assert accepted["metadata"]["desired"]["rgb"] == [{"timestamp": stamp}] * 3

    document = get(client, thing)
    assert document["state"] == {"desired": desired, "delta": desired}
    assert document["version"] == 1
    assert set(document["metadata"]) == {"desired"}
    assert "clientToken" not in document

    reported = update(client, thing, {"state": {"reported": {"color": "red", "rgb": [255, 0, 0]}}})
    assert reported["version"] == 2
    document = get(client, thing)
    assert document["state"]["delta"] == {"power": "on"}
    assert document["state"]["reported"] == {"color": "red", "rgb": [255, 0, 0]}
    assert document["metadata"]["reported"]["color"]["timestamp"] >= stamp

    deleted = delete(client, thing)
    assert deleted["version"] == 2 and before <= deleted["timestamp"] <= int(time.time())
    assert set(deleted) == {"version", "timestamp"}
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_thing_shadow(thingName=thing)
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.delete_thing_shadow(thingName=thing)
    # Deleting does not reset the version (device-shadow-data-flow, "Deleting a shadow").
    again = update(client, thing, {"state": {"reported": {"color": "blue"}}})
    assert again["version"] == 3
    assert get(client, thing)["state"] == {"reported": {"color": "blue"}}


def test_named_shadows_are_separate_and_listed(aws: AwsHub) -> None:
    client = aws.client()
    thing = unique("thing")
    update(client, thing, {"state": {"reported": {"fw": "1.0"}}}, shadow="firmware")
    update(client, thing, {"state": {"desired": {"mode": "eco"}}}, shadow="$config")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_thing_shadow(thingName=thing)  # the classic one does not exist
    update(client, thing, {"state": {"reported": {"classic": True}}})
    assert get(client, thing, "firmware")["state"] == {"reported": {"fw": "1.0"}}
    assert get(client, thing, "$config")["version"] == 1
    assert get(client, thing)["state"] == {"reported": {"classic": True}}
    listed = client.list_named_shadows_for_thing(thingName=thing)
    # The classic shadow is not listed; names come in order.
    assert listed["results"] == ["$config", "firmware"]
    assert "nextToken" not in listed
    assert abs(listed["timestamp"] - time.time()) < 5
    delete(client, thing, "firmware")
    assert client.list_named_shadows_for_thing(thingName=thing)["results"] == ["$config"]
    assert get(client, thing)["version"] == 1


def test_version_conflict_changes_nothing(aws: AwsHub) -> None:
    client = aws.client()
    thing = unique("thing")
    update(client, thing, {"state": {"desired": {"a": 1}}})
    before = get(client, thing)
    stale = {"state": {"desired": {"a": 2}}, "version": 0, "clientToken": "c"}
    with pytest.raises(client.exceptions.ConflictException) as info:
        update(client, thing, stale)
    assert error_of(info) == ("ConflictException", 409, "Version conflict")
    after = get(client, thing)
    assert (after["state"], after["version"]) == (before["state"], before["version"])
    accepted = update(client, thing, {"state": {"desired": {"a": 2}}, "version": 1})
    assert accepted["version"] == 2
    assert get(client, thing)["state"]["desired"] == {"a": 2}


def test_delta_nested_and_null_deletion(aws: AwsHub) -> None:
    client = aws.client()
    thing = unique("thing")
    update(
        client,
        thing,
        {
            "state": {
                "desired": {"lights": {"color": {"r": 255, "g": 255, "b": 255}}, "seq": [1, 2]},
                "reported": {"lights": {"color": {"r": 255, "g": 0, "b": 255}}, "seq": [1]},
            }
        },
    )
    # Nested objects keep the path to the root; arrays compare whole (device-shadow-document).
    assert get(client, thing)["state"]["delta"] == {
        "lights": {"color": {"g": 255}},
        "seq": [1, 2],
    }
    # null deletes a key and its metadata.
    update(client, thing, {"state": {"desired": {"seq": None}}})
    document = get(client, thing)
    assert "seq" not in document["state"]["desired"]
    assert "seq" not in document["metadata"]["desired"]
    assert document["state"]["reported"]["seq"] == [1]
    # A section set to null goes; then there is no delta.
    update(client, thing, {"state": {"desired": None}})
    document = get(client, thing)
    assert set(document["state"]) == {"reported"}
    assert set(document["metadata"]) == {"reported"}
    # "state": null empties the shadow, which stays (and keeps counting versions).
    cleared = update(client, thing, {"state": None})
    assert cleared["state"] is None and cleared["version"] == 4
    document = get(client, thing)
    assert (document["state"], document["metadata"], document["version"]) == ({}, {}, 4)


def test_list_named_shadows_pages(aws: AwsHub) -> None:
    _key, client = aws.tenant()
    thing = unique("thing")
    shadows = sorted(f"s{i}-{unique()}" for i in range(7))
    for shadow in shadows:
        update(client, thing, {"state": {"reported": {"n": shadow}}}, shadow=shadow)
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        kwargs: dict[str, Any] = {"thingName": thing, "pageSize": 3}
        if token is not None:
            kwargs["nextToken"] = token
        page = client.list_named_shadows_for_thing(**kwargs)
        pages += 1
        assert len(page["results"]) <= 3
        seen += page["results"]
        token = page.get("nextToken")
        if token is None:
            break
    assert (seen, pages) == (shadows, 3)
    assert client.list_named_shadows_for_thing(thingName=thing)["results"] == shadows
    assert client.list_named_shadows_for_thing(thingName=unique("none"))["results"] == []
    with pytest.raises(client.exceptions.InvalidRequestException):
        client.list_named_shadows_for_thing(thingName=thing, nextToken="bm90IGEgdG9rZW4=")
    with pytest.raises(client.exceptions.InvalidRequestException):
        client.list_named_shadows_for_thing(thingName=thing, pageSize=101)


def test_accounts_never_see_each_others_shadows(aws: AwsHub, sub: Sub) -> None:
    root = aws.client()
    _key, tenant = aws.tenant()
    thing = unique("thing")
    device = sub(f"$aws/things/{thing}/shadow/name/s/update/accepted")  # root's account
    update(root, thing, {"state": {"desired": {"owner": "root"}}}, shadow="s")
    assert json.loads(device.expect_message().payload)["state"]["desired"]["owner"] == "root"
    with pytest.raises(tenant.exceptions.ResourceNotFoundException):
        tenant.get_thing_shadow(thingName=thing, shadowName="s")
    with pytest.raises(tenant.exceptions.ResourceNotFoundException):
        tenant.delete_thing_shadow(thingName=thing, shadowName="s")
    assert tenant.list_named_shadows_for_thing(thingName=thing)["results"] == []
    # The same names in another account are another shadow, at its own version ...
    mine = update(tenant, thing, {"state": {"desired": {"owner": "tenant"}}}, shadow="s")
    assert mine["version"] == 1
    assert get(root, thing, "s")["state"]["desired"] == {"owner": "root"}
    # ... whose messages stay in that account: the root device sees only root's next update.
    update(root, thing, {"state": {"desired": {"owner": "root-2"}}}, shadow="s")
    message = json.loads(device.expect_message().payload)
    assert (message["state"]["desired"], message["version"]) == ({"owner": "root-2"}, 2)
    assert get(tenant, thing, "s")["state"]["desired"] == {"owner": "tenant"}


# Each case: the call's arguments and the boto3 exception (error code) it must raise.
# A desired section 9 levels deep (the section's own object is level 1; the limit is 8).
_NESTED_9 = {"l1": {"l2": {"l3": {"l4": {"l5": {"l6": {"l7": {"l8": {"l9": 1}}}}}}}}}
_BAD_UPDATES: list[tuple[str, bytes, str]] = [
    ("invalid JSON", b'{"state": ', "InvalidRequestException"),
    ("not an object", b"[]", "InvalidRequestException"),
    ("no state", b'{"desired": {"a": 1}}', "InvalidRequestException"),
    ("state not an object", b'{"state": "on"}', "InvalidRequestException"),
    ("desired not an object", b'{"state": {"desired": 3}}', "InvalidRequestException"),
    ("reported not an object", b'{"state": {"reported": [1]}}', "InvalidRequestException"),
    ("invalid state node", b'{"state": {"delta": {"a": 1}}}', "InvalidRequestException"),
    ("invalid version", b'{"state": {}, "version": "1"}', "InvalidRequestException"),
    (
        "invalid clientToken",
        json.dumps({"state": {}, "clientToken": "t" * 65}).encode(),
        "InvalidRequestException",
    ),
    (
        "too deep",
        json.dumps({"state": {"desired": _NESTED_9}}).encode(),
        "InvalidRequestException",
    ),
    ("null in an array", b'{"state": {"desired": {"a": [null]}}}', "InvalidRequestException"),
    (
        "document over 8 KB",
        json.dumps({"state": {"reported": {"big": "x" * 8200}}}).encode(),
        "RequestEntityTooLargeException",
    ),
    ("body over 128 KB", b" " * (129 * 1024), "RequestEntityTooLargeException"),
    ("not UTF-8", b'{"state": {"desired": {"a": "\xff"}}}', "UnsupportedDocumentEncodingException"),
]


@pytest.mark.parametrize(
    ("payload", "code"), [c[1:] for c in _BAD_UPDATES], ids=[c[0] for c in _BAD_UPDATES]
)
def test_bad_updates_raise_the_right_exception_and_change_nothing(
    aws: AwsHub, payload: bytes, code: str
) -> None:
    client = aws.client()
    thing = unique("thing")
    update(client, thing, {"state": {"desired": {"keep": 1}}, "version": 0})
    before = get(client, thing)
    with pytest.raises(ClientError) as info:
        client.update_thing_shadow(thingName=thing, payload=payload)
    assert isinstance(info.value, getattr(client.exceptions, code))
    assert error_of(info)[0] == code
    after = get(client, thing)
    assert (after["state"], after["metadata"], after["version"]) == (
        before["state"],
        before["metadata"],
        before["version"],
    )


@pytest.mark.parametrize(
    "arguments",
    [
        {"thingName": "has space"},
        {"thingName": "dots.are.not.allowed"},
        {"thingName": "x" * 129},
        {"thingName": "ok", "shadowName": "x" * 65},
        {"thingName": "ok", "shadowName": "a/b"},
    ],
    ids=["space", "dot", "thing too long", "shadow too long", "slash"],
)
def test_bad_names_are_invalid_requests_for_every_operation(
    aws: AwsHub, arguments: dict[str, str]
) -> None:
    client = aws.client()
    calls = [
        lambda: client.get_thing_shadow(**arguments),
        lambda: client.update_thing_shadow(payload=b'{"state":{}}', **arguments),
        lambda: client.delete_thing_shadow(**arguments),
    ]
    if "shadowName" not in arguments:
        calls.append(lambda: client.list_named_shadows_for_thing(**arguments))
    for call in calls:
        with pytest.raises(client.exceptions.InvalidRequestException):
            call()
    if arguments["thingName"] == "ok":
        with pytest.raises(client.exceptions.ResourceNotFoundException):
            client.get_thing_shadow(thingName="ok")  # nothing was created


def test_wrong_verbs_and_empty_names_on_the_wire(aws: AwsHub) -> None:
    thing = unique("thing")
    for method, target in [
        ("PUT", f"/things/{thing}/shadow"),
        ("PATCH", f"/things/{thing}/shadow?name=s"),
        ("POST", f"/api/things/shadow/ListNamedShadowsForThing/{thing}"),
        ("GET", "/api/things/shadow/Other/x"),
    ]:
        answer = aws.raw(method, target, b"{}")
        assert answer.status == 405, (method, target)
        assert answer.headers["x-amzn-errortype"] == "MethodNotAllowedException"
    empty = aws.raw("GET", f"/things/{thing}/shadow?name=")
    assert (empty.status, empty.headers["x-amzn-errortype"]) == (400, "InvalidRequestException")
    # What boto3 sends, also by hand: the raw JSON document with the request id header.
    created = aws.raw("POST", f"/things/{thing}/shadow", b'{"state":{"reported":{"a":1}}}')
    assert created.status == 200 and created.headers["content-type"] == "application/json"
    assert json.loads(created.body)["version"] == 1
    assert created.headers["x-amzn-requestid"]


def test_shadow_operations_are_rate_limited_per_account(aws: AwsHub) -> None:
    key, _client = aws.tenant()
    limited = aws.client(key, endpoint=aws.limited_endpoint)
    thing = unique("thing")
    for _ in range(3):  # LIMITED_RATE calls of one operation
        update(limited, thing, {"state": {"reported": {"a": 1}}})
    with pytest.raises(limited.exceptions.ThrottlingException) as info:
        update(limited, thing, {"state": {"reported": {"a": 2}}})
    assert error_of(info)[1] == 429
    assert get(limited, thing)["version"] == 3  # the refused call changed nothing


def test_the_four_operations_share_the_device_shadow_rate() -> None:
    """AWS IoT's quota is one budget, "Device Shadow API requests/second per account"; an
    operation given its own limit gets its own bucket (ratelimit.AWS_RATE_GROUPS)."""
    limiter = RateLimiter(
        {AWS_SHADOW_RATE: 2, "DeleteThingShadow": 1},
        default=100,
        clock=lambda: 0.0,
        groups=AWS_RATE_GROUPS,
    )
    assert limiter.allow("a", "GetThingShadow")
    assert limiter.allow("a", "UpdateThingShadow")
    assert not limiter.allow("a", "ListNamedShadowsForThing")
    assert limiter.allow("b", "GetThingShadow")  # per account
    assert limiter.allow("a", "DeleteThingShadow")  # its own limit, its own bucket
    assert not limiter.allow("a", "DeleteThingShadow")
    assert limiter.rate_of("GetThingShadow") == 2
    assert limiter.rate_of("Publish") == 100


# --------------------------------------------------------------------------- MQTT


def expect(device: pahoclient.Client, topic: str) -> dict[str, Any]:
    """The next message, which must be on ``topic``; its JSON."""
    message = device.expect_message()
    assert message.topic == topic, json.loads(message.payload)
    document: dict[str, Any] = json.loads(message.payload)
    return document


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_devices_receive_accepted_delta_and_documents(aws: AwsHub, sub: Sub, version: int) -> None:
    client = aws.client()
    thing = unique("thing")
    prefix = f"$aws/things/{thing}/shadow"
    device = sub(f"{prefix}/update/accepted", version=version)
    device.subscribe(f"{prefix}/update/delta", 1)
    device.subscribe(f"{prefix}/update/documents", 1)

    update(client, thing, {"state": {"desired": {"color": "red"}}, "clientToken": "app-1"})
    accepted = expect(device, f"{prefix}/update/accepted")
    assert (accepted["version"], accepted["clientToken"]) == (1, "app-1")
    assert accepted["state"] == {"desired": {"color": "red"}}
    delta = expect(device, f"{prefix}/update/delta")
    assert delta["state"] == {"color": "red"}
    assert delta["metadata"] == {"color": accepted["metadata"]["desired"]["color"]}
    assert (delta["version"], delta["clientToken"]) == (1, "app-1")
    documents = expect(device, f"{prefix}/update/documents")
    assert documents["previous"] == {"state": {}, "metadata": {}, "version": 0}
    assert documents["current"]["state"] == {"desired": {"color": "red"}}
    assert documents["current"]["version"] == 1

    # The device reports over MQTT: accepted and documents, and no delta (none is left).
    report = {"state": {"reported": {"color": "red"}}, "clientToken": "dev-1"}
    assert device.publish(f"{prefix}/update", json.dumps(report), qos=1) == 0
    assert expect(device, f"{prefix}/update/accepted")["clientToken"] == "dev-1"
    documents = expect(device, f"{prefix}/update/documents")
    assert documents["previous"]["version"] == 1 and documents["current"]["version"] == 2
    # The next desired change is the next message with a delta: version 3, not 2.
    update(client, thing, {"state": {"desired": {"color": "blue"}}})
    assert expect(device, f"{prefix}/update/accepted")["version"] == 3
    assert expect(device, f"{prefix}/update/delta")["state"] == {"color": "blue"}
    assert expect(device, f"{prefix}/update/documents")["current"]["version"] == 3
    delete(client, thing)  # not subscribed to delete/accepted: nothing more arrives
    update(client, thing, {"state": {"reported": {"color": "blue"}}})
    assert expect(device, f"{prefix}/update/accepted")["version"] == 4


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_devices_get_update_and_delete_over_mqtt(aws: AwsHub, sub: Sub, version: int) -> None:
    client = aws.client()
    thing = unique("thing")
    prefix = f"$aws/things/{thing}/shadow/name/cfg"
    device = sub(f"{prefix}/+/+", version=version)

    device.publish(f"{prefix}/get", json.dumps({"clientToken": "g1"}), qos=1)
    rejected = expect(device, f"{prefix}/get/rejected")
    assert (rejected["code"], rejected["clientToken"]) == (404, "g1")
    assert rejected["message"] == "No shadow exists with name: 'cfg'"
    assert abs(rejected["timestamp"] - time.time()) < 5

    update_topic = f"{prefix}/update"
    report = {"state": {"reported": {"t": 21}}, "clientToken": "u1"}
    # A request is taken by the shadow service: a v5 PUBACK says Success, not 0x10.
    assert device.publish(update_topic, json.dumps(report), qos=1) == 0
    accepted = expect(device, f"{prefix}/update/accepted")
    assert (accepted["version"], accepted["clientToken"]) == (1, "u1")
    assert expect(device, f"{prefix}/update/documents")["current"]["version"] == 1

    device.publish(update_topic, b"not json", qos=1)
    bad = expect(device, f"{prefix}/update/rejected")
    assert (bad["code"], bad["message"]) == (400, "Invalid JSON")
    assert "clientToken" not in bad
    stale = {"state": {"reported": {"t": 22}}, "version": 7, "clientToken": "u2"}
    device.publish(update_topic, json.dumps(stale), qos=1)
    conflict = expect(device, f"{prefix}/update/rejected")
    assert (conflict["code"], conflict["message"], conflict["clientToken"]) == (
        409,
        "Version conflict",
        "u2",
    )

    device.publish(f"{prefix}/get", b"", qos=1)
    document = expect(device, f"{prefix}/get/accepted")
    assert (document["state"], document["version"]) == ({"reported": {"t": 21}}, 1)
    assert "clientToken" not in document
    # The HTTP API sees what the device wrote (one store, one account).
    assert get(client, thing, "cfg")["state"] == {"reported": {"t": 21}}

    device.publish(f"{prefix}/delete", json.dumps({"clientToken": "d1"}), qos=1)
    deleted = expect(device, f"{prefix}/delete/accepted")
    assert (deleted["version"], deleted["clientToken"]) == (1, "d1")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_thing_shadow(thingName=thing, shadowName="cfg")
    device.publish(f"{prefix}/delete", b"", qos=1)
    assert expect(device, f"{prefix}/delete/rejected")["code"] == 404
    # An HTTP delete is announced on delete/accepted too.
    update(client, thing, {"state": {"reported": {"t": 23}}}, shadow="cfg")
    assert expect(device, f"{prefix}/update/accepted")["version"] == 2
    expect(device, f"{prefix}/update/documents")
    delete(client, thing, "cfg")
    assert expect(device, f"{prefix}/delete/accepted")["version"] == 2


def test_a_publish_to_a_shadow_topic_over_http_updates_the_shadow(aws: AwsHub, sub: Sub) -> None:
    client = aws.client()
    thing = unique("thing")
    prefix = f"$aws/things/{thing}/shadow"
    device = sub(f"{prefix}/update/accepted")
    document = {"state": {"desired": {"via": "publish"}}, "clientToken": "p1"}
    client.publish(topic=f"{prefix}/update", qos=1, payload=json.dumps(document).encode())
    assert expect(device, f"{prefix}/update/accepted")["clientToken"] == "p1"
    assert get(client, thing)["state"]["desired"] == {"via": "publish"}
    # Answers are subscribe-only topics: publishing to them over the API is refused.
    with pytest.raises(client.exceptions.InvalidRequestException):
        client.publish(topic=f"{prefix}/update/accepted", payload=b"{}")


# --------------------------------------------------------------------------- restart


class Served:
    """``thinghub serve`` on a data directory, with the root key from the environment."""

    KEY_ID, SECRET = "AKIDSHADOWTEST000001", "shadow-test-secret-0123456789"

    def __init__(self, data_dir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("THINGHUB_")}
        env["THINGHUB_ROOT_ACCESS_KEY_ID"] = self.KEY_ID
        env["THINGHUB_ROOT_ACCESS_KEY_SECRET"] = self.SECRET
        env["THINGHUB_MQTT_TLS_PORT"] = "0"  # a free port: hubs run side by side
        command = [
            str(ROOT / ".venv/bin/thinghub"), "serve", "--mqtt-port", "0", "--http-port", "0",
            "--data-dir", str(data_dir),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        assert self.proc.stdout is not None
        self.lines: list[str] = []
        http = None
        for line in self.proc.stdout:  # EOF ends it if the hub dies
            self.lines.append(line)
            if m := re.match(r"ready mqtt=[\d.]+:\d+ http=[\d.]+:(\d+)", line):
                http = int(m.group(1))
                break
        assert http is not None, "".join(self.lines)
        self.client = boto3.client(
            "iot-data",
            endpoint_url=f"http://127.0.0.1:{http}",
            region_name="us-east-1",
            aws_access_key_id=self.KEY_ID,
            aws_secret_access_key=self.SECRET,
            config=NO_RETRIES,
        )

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(15) == 0
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[[], Served]]:
    running: list[Served] = []

    def start() -> Served:
        hub = Served(tmp_path)
        running.append(hub)
        return hub

    yield start
    for hub in running:  # what a failed test left running
        if hub.proc.poll() is None:
            hub.proc.kill()
            hub.proc.wait()
        if hub.proc.stdout is not None and not hub.proc.stdout.closed:
            hub.proc.stdout.close()


def test_shadows_survive_a_restart_of_a_hub_started_on_an_old_registry(
    tmp_path: Path, served: Callable[[], Served]
) -> None:
    # A registry.db from before shadows (schema version 1), with data of its own.
    old = RegistryStore(tmp_path / FILE_NAME, migrations=MIGRATIONS[:1])
    kept = Registry(old).create_account("from-before").account_id
    old.close()

    hub = served()
    client = hub.client
    thing = unique("thing")
    update(client, thing, {"state": {"desired": {"a": 1}, "reported": {"a": 0}}})
    named = update(client, thing, {"state": {"reported": {"fw": "2.1"}}}, shadow="fw")
    update(client, thing, {"state": {"reported": {"gone": True}}}, shadow="old")
    update(client, thing, {"state": {"reported": {"gone": True}}}, shadow="old")
    delete(client, thing, "old")
    classic = get(client, thing)
    hub.stop()

    hub = served()
    client = hub.client
    again = get(client, thing)
    for field in ("state", "metadata", "version"):
        assert again[field] == classic[field], field
    document = get(client, thing, "fw")
    assert document["metadata"] == named["metadata"] and document["version"] == 1
    assert client.list_named_shadows_for_thing(thingName=thing)["results"] == ["fw"]
    # Versions go on: of the live shadow, and of the deleted one (within 48 hours).
    assert update(client, thing, {"state": {"reported": {"a": 1}}, "version": 1})["version"] == 2
    assert update(client, thing, {"state": {}}, shadow="old")["version"] == 3
    hub.stop()
    migrated = RegistryStore(tmp_path / FILE_NAME)
    assert migrated.schema_version == len(MIGRATIONS)
    assert Registry(migrated).get_account(kept).name == "from-before"
    migrated.close()
