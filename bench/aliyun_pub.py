"""Alibaba ``Pub`` and ``BatchPub`` over HTTP: SDK-shaped V1 requests in, device MQTT out.

    .venv/bin/python -m bench.aliyun_pub [--seconds 5] [--connections 8] [--action Pub ...]

What is measured (targets on this machine: Pub >= 5,000 requests/s, BatchPub to 100
devices >= 50,000 deliveries/s):

* ``healthz``: ``GET /healthz``, the hub's do-nothing endpoint, over the same connections
  for the same time in the same run: what the HTTP stack alone costs.
* ``Pub``: ``POST /?...Action=Pub...`` at QoS 0 to ``/${pk}/${dn}/user/get`` of one online
  device, over ``--connections`` keep-alive HTTP/1.1 connections, one request outstanding on
  each (closed loop). The request is the one aliyun-python-sdk-core sends (reference
  ``alibaba-iot-api.md`` §4.1): business and common parameters in the query,
  ``MessageContent`` in a form body, signed with the V1 signature (§1.2) over both. Every
  request carries its own ``SignatureNonce`` and a fresh ``Timestamp`` (the hub refuses a
  reused nonce), so a pool of requests is signed *before* the run: signing costs the
  generator, not the hub. A probe every ``PROBE_EVERY`` requests carries a numbered payload;
  its request-to-receipt latency (request written -> PUBLISH read by the device) gives
  p50/p99.
* ``BatchPub``: the same message to 100 online devices of the product on
  ``/${pk}/${dn}/user/get`` (everything in the query, as the SDK sends BatchPub), measured
  in device deliveries per second (each device counts what it receives).

The devices sign in with the Alibaba device scheme (clientId ``${pk}.${dn}|securemode=3,
signmethod=hmacsha1|``, user name ``${dn}&${pk}``, password ``hex(HMAC-SHA1(DeviceSecret,
"clientId..deviceName..productKey.."))``, reference §3) over raw-socket MQTT 3.1.1, as the
device SDKs do. The product and the devices are made through the API the bench measures,
with the root key it starts the hub with: ``CreateProduct``, then ``BatchCheckDeviceNames`` +
``BatchRegisterDeviceWithApplyId`` + ``QueryPageByApplyId`` for the secrets (four to six
calls, within the documented rate limits; 101 ``thinghub device register`` processes would
take a minute). The hub runs with ``THINGHUB_API_ALIYUN_RATE_LIMITS`` raised for Pub and
BatchPub (Alibaba's 1,600 and 50 per second would otherwise be what is measured); the
output says so.

``run(seconds)`` returns a dict for ``python -m bench``; ``describe(result)`` prints it. Like
the rest of the harness, it never imports ThingHub: it talks HTTP and MQTT to the hub.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from bench import brokers
from bench.http_publish import (
    CpuProbe,
    KeyedThingHub,
    Phase,
    Subscriber,
    Target,
    _load,
    _ms,
    _pct,
    _percentile,
    _read_response,
    generator_note,
    limits_note,
    measure_healthz,
    probe_payload,
    run_loop,
    wait_for,
)

API_VERSION = "2018-01-20"
REGION = "cn-shanghai"
PAYLOAD_SIZE = 64
PROBE_EVERY = 50
BATCH_DEVICES = 100
# Pre-signed requests per measured second: well above what the hub serves (a do-nothing
# POST of this shape peaks near 11,000/s here, Pub at about half of that), so the pool runs
# out only if the hub is much faster than expected; then the run ends early and says so.
POOL_PER_SECOND = {"Pub": 9_000, "BatchPub": 1_500}
MAX_POOL = 200_000  # about 1 KB each
# What the SDK sends beside its signed query (reference §4.1 "Captured Pub request").
USER_AGENT = "AlibabaCloud (Linux x86_64) Python/3.11.7 Core/2.16.1 python-requests/2.18.3"
RATE_LIMITS = {"THINGHUB_API_ALIYUN_RATE_LIMITS": "Pub=1000000,BatchPub=1000000"}
ACTIONS = ("Pub", "BatchPub")


# --------------------------------------------------------------------------- V1 signing


@lru_cache(maxsize=4096)
def percent_encode(value: str) -> str:
    """The SDK's ``urlencode`` + ``%20``/``%2A``/``~`` fix-ups: RFC 3986, UTF-8."""
    return quote(value, safe="-_.~")


def sdk_timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def sign_v1(
    key_id: str,
    secret: str,
    method: str,
    query: Sequence[tuple[str, str]],
    body: Sequence[tuple[str, str]],
    *,
    timestamp: str,
    nonce: str,
) -> tuple[str, str]:
    """(request target ``/?...``, string to sign), as ``aliyunsdkcore``'s
    ``rpc_signature_composer.get_signed_url`` builds them: the request's query parameters in
    their order, then Timestamp .. AccessKeyId (``Format`` keeps its place), the string to
    sign over query + body sorted by name, and ``Signature`` appended last."""
    url_params = dict(query)
    url_params.update(
        Timestamp=timestamp,
        SignatureMethod="HMAC-SHA1",
        SignatureType="",
        SignatureVersion="1.0",
        SignatureNonce=nonce,
        AccessKeyId=key_id,
    )
    signed = dict(url_params)
    signed.update(body)
    canonical = "&".join(
        f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(signed.items())
    )
    # canonical holds only unreserved characters, %XX, "=" and "&": encoding it again is
    # exactly these replacements (the SDK runs it through pathname2url).
    encoded = canonical.replace("%", "%25").replace("=", "%3D").replace("&", "%26")
    string_to_sign = f"{method}&%2F&{encoded}"
    digest = hmac.new(f"{secret}&".encode(), string_to_sign.encode(), hashlib.sha1).digest()
    url_params["Signature"] = base64.b64encode(digest).decode()
    target = "/?" + "&".join(
        f"{percent_encode(k)}={percent_encode(v)}" for k, v in url_params.items()
    )
    return target, string_to_sign


def check_against_sdk() -> str:
    """Sign one request with the SDK's own composer and with :func:`sign_v1` (same nonce and
    timestamp); they must agree byte for byte. Returns what was checked."""
    try:
        from aliyunsdkcore.auth.composer.rpc_signature_composer import (  # type: ignore[import-untyped]
            get_signed_url,
        )
    except ImportError:
        return "aliyun-python-sdk-core not installed: signer not cross-checked"
    query = [
        ("ProductKey", "a1BwAGVxxxx"),
        ("TopicFullName", "/a1BwAGVxxxx/device 1/user/get~*"),
        ("Qos", "0"),
        ("Version", API_VERSION),
        ("Action", "Pub"),
        ("Format", "JSON"),
        ("RegionId", REGION),
    ]
    body = [("MessageContent", "eyJoZWxsbyI6IndvcmxkIn0=")]
    url, sdk_string = get_signed_url(
        dict(query), "testid", "testsecret", "JSON", "POST", dict(body)
    )
    pairs = dict(part.split("=", 1) for part in url[2:].split("&"))
    ours, our_string = sign_v1(
        "testid",
        "testsecret",
        "POST",
        query,
        body,
        timestamp=unquote(pairs["Timestamp"]),
        nonce=pairs["SignatureNonce"],
    )
    if (ours, our_string) != (url, sdk_string):
        raise AssertionError(f"V1 signer disagrees with aliyunsdkcore:\n{ours}\n{url}")
    return "V1 signer checked against aliyunsdkcore's get_signed_url"


class Signer:
    """Turns (action, query, body) into complete HTTP/1.1 requests as the SDK sends them."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.host = f"{target.host}:{target.http_port}"

    def request(
        self,
        action: str,
        business: Sequence[tuple[str, str]],
        body: Sequence[tuple[str, str]] = (),
    ) -> bytes:
        query = [
            *business,
            ("Version", API_VERSION),
            ("Action", action),
            ("Format", "JSON"),  # do_action_with_exception forces JSON (§4.1)
            ("RegionId", REGION),
        ]
        path, _ = sign_v1(
            self.target.key_id,
            self.target.secret,
            "POST",
            query,
            body,
            timestamp=sdk_timestamp(),
            nonce=secrets.token_hex(16),  # the SDK's nonce is 32 hex digits too
        )
        content = "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in body)
        lines = [
            f"POST {path} HTTP/1.1",
            f"Host: {self.host}",
            f"User-Agent: {USER_AGENT}",
            "Accept-Encoding: identity",
            "Accept: */*",
            "Connection: keep-alive",
            f"x-acs-action: {action}",
            f"x-acs-version: {API_VERSION}",
            "x-sdk-invoke-type: normal",
            "x-sdk-client: python/2.0.0",
        ]
        raw = content.encode()
        if body:
            md5 = base64.b64encode(hashlib.md5(raw).digest()).decode()
            lines += ["Content-Type: application/x-www-form-urlencoded", f"Content-MD5: {md5}"]
        lines.append(f"Content-Length: {len(raw)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + raw


def _success(status: int, body: bytes) -> bool:
    # Business errors are HTTP 200 with Success:false (§2): both must be right.
    return status == 200 and b'"Success":true' in body


# --------------------------------------------------------------------------- setup


class SetupError(Exception):
    """The hub refused a setup call."""


async def call(target: Target, action: str, params: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """One signed API call on its own connection; the JSON answer, or SetupError."""
    request = Signer(target).request(action, params)
    reader, writer = await asyncio.open_connection(target.host, target.http_port)
    try:
        writer.write(request)
        status, body = await asyncio.wait_for(_read_response(reader), 10)
    finally:
        writer.close()
    answer: dict[str, Any] = json.loads(body) if body else {}
    if status != 200 or answer.get("Success") is False:
        raise SetupError(f"{action}: HTTP {status} {body[:300]!r}")
    return answer


async def make_devices(target: Target, count: int) -> tuple[str, list[tuple[str, str]]]:
    """A new product and ``count`` devices: (ProductKey, [(DeviceName, DeviceSecret)])."""
    name = f"bench_{secrets.token_hex(4)}"
    product = await call(target, "CreateProduct", [("ProductName", name), ("NodeType", "0")])
    pk = str(product["ProductKey"])
    names = [f"bench-{i:03d}" for i in range(count)]
    listed = [(f"DeviceName.{i + 1}", n) for i, n in enumerate(names)]
    apply = await call(target, "BatchCheckDeviceNames", [("ProductKey", pk), *listed])
    apply_id = str(apply["Data"]["ApplyId"])
    await call(
        target, "BatchRegisterDeviceWithApplyId", [("ProductKey", pk), ("ApplyId", apply_id)]
    )
    secrets_by_name: dict[str, str] = {}
    for page in range(1, count // 50 + 2):  # bounded: 50 per page
        answer = await call(
            target,
            "QueryPageByApplyId",
            [("ApplyId", apply_id), ("CurrentPage", str(page)), ("PageSize", "50")],
        )
        for info in answer["ApplyDeviceList"]["ApplyDeviceInfo"]:
            secrets_by_name[info["DeviceName"]] = info["DeviceSecret"]
        if len(secrets_by_name) >= count:
            break
    missing = [n for n in names if n not in secrets_by_name]
    if missing:
        raise SetupError(f"QueryPageByApplyId did not return {len(missing)} devices")
    return pk, [(n, secrets_by_name[n]) for n in names]


def device_credentials(pk: str, dn: str, secret: str) -> tuple[str, str, str]:
    """(clientId, username, password) of the Alibaba device sign-in (reference §3)."""
    client = f"{pk}.{dn}"
    content = f"clientId{client}deviceName{dn}productKey{pk}"
    password = hmac.new(secret.encode(), content.encode(), hashlib.sha1).hexdigest()
    return f"{client}|securemode=3,signmethod=hmacsha1|", f"{dn}&{pk}", password


async def connect_devices(
    target: Target,
    pk: str,
    devices: Sequence[tuple[str, str]],
    sent_at: dict[int, int],
    timed: str | None,
) -> list[Subscriber]:
    """Each device signs in (MQTT 3.1.1) and subscribes to its ``/user/get``; only the device
    named ``timed`` times the probes."""
    loop = asyncio.get_running_loop()
    out: list[Subscriber] = []
    for dn, secret in devices:
        client_id, username, password = device_credentials(pk, dn, secret)
        _, sub = await loop.create_connection(
            lambda dn=dn, c=client_id, u=username, p=password: Subscriber(  # type: ignore[misc]
                f"/{pk}/{dn}/user/get",
                sent_at,
                client_id=c,
                username=u,
                password=p,
                version=4,
                timed=dn == timed,
            ),
            target.host,
            target.mqtt_port,
        )
        out.append(sub)
    await asyncio.gather(*(s.subscribe() for s in out))
    return out


# --------------------------------------------------------------------------- the runs


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _action_phase(
    target: Target,
    action: str,
    pk: str,
    devices: Sequence[tuple[str, str]],
    seconds: float,
    connections: int,
    warmup: float,
    hub: CpuProbe | None,
) -> dict[str, Any]:
    signer = Signer(target)
    sent_at: dict[int, int] = {}
    if action == "Pub":
        dn = devices[0][0]
        targets = devices[:1]
        topic = f"/{pk}/{dn}/user/get"

        def make(payload: bytes) -> bytes:
            return signer.request(
                "Pub",
                [("ProductKey", pk), ("TopicFullName", topic), ("Qos", "0")],
                [("MessageContent", _b64(payload))],
            )

    else:
        targets = devices[:BATCH_DEVICES]
        names = [(f"DeviceName.{i + 1}", n) for i, (n, _s) in enumerate(targets)]

        def make(payload: bytes) -> bytes:
            # BatchPub: everything in the query, Content-Length 0 (§4.1).
            return signer.request(
                "BatchPub",
                [
                    ("ProductKey", pk),
                    *names,
                    ("TopicShortName", "get"),
                    ("MessageContent", _b64(payload)),
                    ("Qos", "0"),
                ],
            )

    # The last device in the list times the probes: its receipt is the last of a BatchPub.
    subscribers = await connect_devices(target, pk, targets, sent_at, targets[-1][0])
    timed = subscribers[-1]
    fixed = b"x" * PAYLOAD_SIZE
    t_sign = time.perf_counter()
    warm = [make(fixed) for _ in range(int(warmup * POOL_PER_SECOND[action] / 4))]
    count = min(MAX_POOL, int(seconds * POOL_PER_SECOND[action]) + 100)
    pool = [
        make(probe_payload(i // PROBE_EVERY) if i % PROBE_EVERY == 0 else fixed)
        for i in range(count)
    ]
    sign_s = time.perf_counter() - t_sign
    position = 0

    def next_request() -> bytes | None:
        nonlocal position
        if position >= len(pool):
            return None
        request = pool[position]
        if position % PROBE_EVERY == 0:
            sent_at[position // PROBE_EVERY] = time.perf_counter_ns()
        position += 1
        return request

    if warm:
        it = iter(warm)
        await _load(target, Phase("warm-up"), warmup, connections, lambda: next(it, None))
        await asyncio.sleep(0.2)
    for s in subscribers:
        s.received = 0
    phase = Phase(action)
    await _load(target, phase, seconds, connections, next_request, ok=_success, hub=hub)
    fanout = len(targets)
    expected = (phase.requests - phase.errors) * fanout
    await wait_for(lambda: sum(s.received for s in subscribers) >= expected)
    delivered = sum(s.received for s in subscribers)
    for s in subscribers:
        if s.transport is not None:
            s.transport.close()
    latencies = sorted(timed.latencies_ns)
    result = phase.summary()
    result.update(
        devices=fanout,
        delivered=delivered,
        deliveries_rate=round(delivered / phase.elapsed, 1) if phase.elapsed else 0.0,
        probes=len(latencies),
        receipt_p50_ms=_ms(_percentile(latencies, 0.50)),
        receipt_p99_ms=_ms(_percentile(latencies, 0.99)),
        presigned=len(pool),
        signing_s=round(sign_s, 2),
    )
    return result


async def _measure(
    target: Target,
    seconds: float,
    connections: int,
    actions: Sequence[str],
    hub: CpuProbe | None,
    warmup: float,
    baseline_seconds: float | None = None,
) -> dict[str, Any]:
    checked = check_against_sdk()
    pk, devices = await make_devices(target, BATCH_DEVICES if "BatchPub" in actions else 1)
    baseline = await measure_healthz(target, baseline_seconds or seconds, connections, hub)
    result: dict[str, Any] = {
        "scenario": "aliyun",
        "seconds": seconds,
        "connections": connections,
        "payload_bytes": PAYLOAD_SIZE,
        "product_key": pk,
        "healthz": baseline.summary(),
        "signer": checked,
        "notes": [],
    }
    for action in actions:
        result[action] = await _action_phase(
            target, action, pk, devices, seconds, connections, warmup, hub
        )
        note = generator_note(action, result[action])
        if note:
            result["notes"].append(note)
    return result


def measure(
    target: Target,
    seconds: float = 5.0,
    connections: int = 8,
    actions: Sequence[str] = ACTIONS,
    warmup: float = 0.0,
) -> dict[str, Any]:
    """Measure against a hub that is already running (its rate limits as they are)."""
    return run_loop(_measure(target, seconds, connections, actions, None, warmup))


def run(
    seconds: float = 5.0,
    connections: int = 8,
    pin: bool = True,
    *,
    actions: Sequence[str] = ACTIONS,
    warmup: float = 0.0,
    binary: str | None = None,
    baseline_seconds: float | None = None,
    cpus: tuple[int | None, int | None] | None = None,
) -> dict[str, Any]:
    """Start a hub (rate limits raised), measure, stop it; the dict for ``python -m bench``.
    The do-nothing endpoint is measured for ``baseline_seconds`` (default: ``seconds``)."""
    # (hub cpu, generator cpu); a caller that has pinned itself already passes its plan.
    broker_cpu, generator_cpu = cpus if cpus is not None else brokers.cpu_plan(pin)
    key_id = "LTAIBENCH" + secrets.token_hex(6).upper()
    hub = KeyedThingHub(broker_cpu, key_id, secrets.token_urlsafe(30), RATE_LIMITS, binary)
    hub.start()
    try:
        if generator_cpu is not None:
            os.sched_setaffinity(0, {generator_cpu})
        target = Target(brokers.HOST, hub.http_port, hub.port, hub.key_id, hub.secret)
        result = run_loop(
            _measure(target, seconds, connections, actions, hub.probe, warmup, baseline_seconds)
        )
        result["peak_rss_kb"] = hub.probe.peak_rss_kb() if hub.probe else None
        result["broker"] = "thinghub"
        result["at"] = datetime.now(UTC).isoformat(timespec="seconds")
        result["notes"].append(limits_note(RATE_LIMITS))
        return result
    finally:
        hub.stop()


def describe(result: dict[str, Any]) -> str:
    h = result["healthz"]
    lines = []
    for action in ACTIONS:
        r = result.get(action)
        if r is None:
            continue
        ratio = r["rate"] / h["rate"] if h["rate"] else 0.0
        what = (
            f"{r['rate']:,.0f} req/s"
            if action == "Pub"
            else f"{r['deliveries_rate']:,.0f} deliveries/s ({r['rate']:,.0f} req/s x "
            f"{r['devices']} devices)"
        )
        lines.append(
            f"aliyun-{action.lower()}: {what} (QoS 0, {result['connections']} keep-alive "
            f"connections, {r['errors']} errors), request-to-receipt p50 {r['receipt_p50_ms']} "
            f"ms p99 {r['receipt_p99_ms']} ms ({r['probes']} probes, {r['delivered']} "
            f"delivered), hub CPU {_pct(r['hub_cpu'])}, {action}/healthz = {ratio:.2f}"
            + (", pool of signed requests ran out" if r.get("pool_exhausted") else "")
        )
        if r.get("first_error"):
            lines.append(f"  first error: {r['first_error']}")
    lines.append(
        f"healthz: {h['rate']:,.0f} req/s (do-nothing endpoint, same run), response p50 "
        f"{h['response_p50_ms']} ms p99 {h['response_p99_ms']} ms, hub CPU {_pct(h['hub_cpu'])}"
    )
    lines += [f"note: {note}" for note in [result["signer"], *result.get("notes", [])]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.0, help="requests before measuring")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--action", nargs="+", choices=ACTIONS, help="default: both")
    parser.add_argument("--no-pin", action="store_true", help="do not pin hub and generator")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument(
        "--target",
        metavar="HOST:HTTP_PORT:MQTT_PORT",
        help="measure a hub that is already running (key from THINGHUB_ROOT_ACCESS_KEY_*)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 300 or not 1 <= args.connections <= 1000:
        parser.error("--seconds must be in (0, 300] and --connections in [1, 1000]")
    actions = args.action or ACTIONS
    if args.target:
        host, http_port, mqtt_port = args.target.rsplit(":", 2)
        target = Target(
            host,
            int(http_port),
            int(mqtt_port),
            os.environ["THINGHUB_ROOT_ACCESS_KEY_ID"],
            os.environ["THINGHUB_ROOT_ACCESS_KEY_SECRET"],
        )
        result = measure(target, args.seconds, args.connections, actions, args.warmup)
    else:
        try:
            result = run(
                args.seconds,
                args.connections,
                pin=not args.no_pin,
                actions=actions,
                warmup=args.warmup,
            )
        finally:
            brokers.stop_all()
    print(describe(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if any(result.get(a, {}).get("errors") for a in ACTIONS) else 0


if __name__ == "__main__":
    raise SystemExit(main())
