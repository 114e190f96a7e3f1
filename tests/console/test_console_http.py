"""The console over plain HTTP against a real ``thinghub serve``: what a browser's requests
get, and what a forged, foreign or expired one gets instead.

* sign-in: right key, wrong id or secret (one answer for both), a disabled key, no Origin or
  another site's, too many attempts from one address (429 with Retry-After);
* sessions: no cookie or a forged one (401), sign-out, a short idle and absolute lifetime
  (``[console] session_idle_s``/``session_max_s``), the least recently used one ended past
  ``max_sessions``, a key disabled after the sign-in;
* CSRF: a state-changing request without the token, with a forged one, or from another
  Origin (403), and nothing changed;
* tenancy: another account's device, product, retained topic and MessageId (404), absent
  from searches and lists, and not changed;
* the live tail's WebSocket: refused without a session, without the CSRF subprotocol and
  from another Origin; a message published through the console arrives; a burst the page
  cannot take is dropped and counted, and every message is either shown or counted.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from consolehub import KEY_ID, SECRET, TIMEOUT, Browserless, ConsoleHub, PahoDevice, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scenarios"))
import rawmqtt


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleHub]:
    started = ConsoleHub(
        tmp_path_factory.mktemp("console-http"),
        console_signin_per_minute=1000,
        console_tail_queue=20,
        console_max_tails_per_session=2,
    )
    yield started
    started.stop()


@pytest.fixture(scope="module")
def short_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleHub]:
    """Short session lifetimes, two sessions at most, six sign-in attempts a minute."""
    started = ConsoleHub(
        tmp_path_factory.mktemp("console-short"),
        console_session_idle_s=1.5,
        console_session_max_s=4,
        console_max_sessions=2,
        console_signin_per_minute=6,
    )
    yield started
    started.stop()


@pytest.fixture
def root(hub: ConsoleHub) -> Browserless:
    console = hub.console()
    assert console.sign_in().status == 200
    return console


# --------------------------------------------------------------------------- the page


def test_the_page_and_its_assets_are_served_with_a_strict_policy(hub: ConsoleHub) -> None:
    console = hub.console()
    page = console.request("GET", "/console")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["X-Frame-Options"] == "DENY"
    for name, kind in [("console.js", "text/javascript"), ("console.css", "text/css")]:
        asset = console.request("GET", f"/console/static/{name}")
        assert asset.status == 200 and asset.headers["Content-Type"].startswith(kind)
        again = console.request(
            "GET", f"/console/static/{name}", headers={"If-None-Match": asset.headers["ETag"]}
        )
        assert again.status == 304
    assert console.request("GET", "/console/static/nothing.js").status == 404
    assert console.get("/no/such/thing").error == "NotFound"


# --------------------------------------------------------------------------- sign-in


def test_sign_in_with_a_key_of_the_registry(hub: ConsoleHub) -> None:
    console = hub.console()
    answer = console.sign_in()
    assert answer.status == 200
    assert answer.body["accountId"] == "root" and answer.body["accessKeyId"] == KEY_ID
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP here
    assert answer.headers["Cache-Control"] == "no-store"
    who = console.get("/session")
    assert who.status == 200 and who.body["csrfToken"] == console.csrf


@pytest.mark.parametrize(
    ("key_id", "secret"),
    [(KEY_ID, SECRET + "x"), (KEY_ID, ""), ("LTAInoSuchKey000000000000", SECRET), ("", "")],
)
def test_wrong_keys_are_refused_alike(hub: ConsoleHub, key_id: str, secret: str) -> None:
    console = hub.console()
    answer = console.sign_in(key_id, secret)
    if key_id and secret:
        assert answer.status == 401, answer.body
        assert answer.body["error"]["message"] == "The AccessKeyId or AccessKeySecret is wrong."
    else:
        assert answer.status == 400, answer.body
    assert "Set-Cookie" not in answer.headers
    assert console.get("/overview").status == 401


def test_a_disabled_key_cannot_sign_in(hub: ConsoleHub) -> None:
    _account, key_id, secret = hub.account("disabled_keys")
    hub.cli("account", "disable-key", key_id)
    answer = hub.console().sign_in(key_id, secret)
    assert answer.status == 401
    assert answer.body["error"]["message"] == "This access key is disabled."
    # Told only to whoever knows the secret.
    wrong = hub.console().sign_in(key_id, secret + "x")
    assert wrong.body["error"]["message"] == "The AccessKeyId or AccessKeySecret is wrong."


@pytest.mark.parametrize("origin", [None, "http://evil.example", "null"])
def test_sign_in_from_another_site_is_refused(hub: ConsoleHub, origin: str | None) -> None:
    console = hub.console()
    console.origin = origin
    answer = console.sign_in()
    assert answer.status == 403, answer.body
    assert "Set-Cookie" not in answer.headers


# --------------------------------------------------------------------------- sessions


def test_no_session_or_a_forged_one_is_refused(hub: ConsoleHub) -> None:
    console = hub.console()
    for path in ("/overview", "/devices", "/products", "/retained", "/trace", "/session"):
        answer = console.get(path)
        assert answer.status == 401 and answer.error == "Unauthorized", (path, answer.body)
    console.cookie = "forged-" + "A" * 43
    assert console.get("/overview").status == 401


def test_sign_out_ends_the_session(root: Browserless) -> None:
    assert root.get("/overview").status == 200
    out = root.delete("/session")
    assert out.status == 200
    assert "thinghub_console=" in out.headers["Set-Cookie"]  # cleared
    assert root.get("/overview").status == 401


def test_a_key_disabled_after_sign_in_ends_its_sessions(hub: ConsoleHub) -> None:
    _account, key_id, secret = hub.account("revoked_later")
    console = hub.console()
    assert console.sign_in(key_id, secret).status == 200
    assert console.get("/overview").status == 200
    hub.cli("account", "disable-key", key_id)
    # The console looks at the key again every few seconds (guard.KEY_RECHECK_S).
    wait_for(lambda: console.get("/overview").status == 401, what="the session to end")


def test_idle_and_absolute_lifetimes(short_hub: ConsoleHub) -> None:
    """idle 1.5 s, at most 4 s. Times are the test's, taken after each sign-in answered:
    the hub's sessions are at least that old when a later request reaches it, so "asked at
    or past the limit" is always refused; "asked well before it" always served."""
    idle = short_hub.console()
    assert idle.sign_in().status == 200
    idle_since = time.monotonic()
    busy = short_hub.console()
    assert busy.sign_in().status == 200
    busy_since = time.monotonic()
    # The busy page asks three times a second: idle time never builds up, and it is served
    # until shortly before its absolute lifetime...
    idle_checked = False
    while (age := time.monotonic() - busy_since) < 3.4:
        assert busy.get("/overview").status == 200, f"busy session refused at {age:.2f} s"
        if not idle_checked and time.monotonic() - idle_since >= 1.5:
            # ...while the session that asked nothing since its sign-in has ended.
            assert idle.get("/overview").status == 401
            idle_checked = True
        time.sleep(0.3)  # the busy page's pace, not a wait for an event
    assert idle_checked
    # ...which ends it however busy it is.
    time.sleep(max(0.0, 4.0 - (time.monotonic() - busy_since)))  # the deadline itself
    assert busy.get("/overview").status == 401


def test_past_max_sessions_the_least_recently_used_ends(short_hub: ConsoleHub) -> None:
    first, second, third = short_hub.console(), short_hub.console(), short_hub.console()
    assert first.sign_in().status == 200
    assert second.sign_in().status == 200
    assert first.get("/overview").status == 200  # second is now the least recently used
    assert third.sign_in().status == 200
    assert second.get("/overview").status == 401
    assert first.get("/overview").status == 200
    assert third.get("/overview").status == 200


def test_sign_in_attempts_are_limited_per_address(short_hub: ConsoleHub) -> None:
    """Last of the short hub's tests: it uses up the address's attempts."""
    console = short_hub.console()
    refused = None
    for _ in range(8):
        answer = console.sign_in(KEY_ID, "wrong")
        if answer.status == 429:
            refused = answer
            break
        assert answer.status == 401
    assert refused is not None, "never limited"
    assert int(refused.headers["Retry-After"]) >= 1
    # Every attempt counts, a right one too.
    assert console.sign_in().status == 429


# --------------------------------------------------------------------------- CSRF


def test_changes_need_the_csrf_token_and_this_origin(hub: ConsoleHub, root: Browserless) -> None:
    topic = "console/csrf/retained"
    publish = {"topic": topic, "payload": "x", "retain": True, "qos": 0}
    token = root.csrf
    for csrf, origin in [(None, root.url), ("forged-token", root.url), (token, "http://evil")]:
        root.csrf, root.origin = csrf, origin
        answer = root.post("/publish", publish)
        assert answer.status == 403 and answer.error == "Forbidden", answer.body
    root.csrf = token
    root.origin = None  # neither Origin nor Referer
    assert root.post("/publish", publish).status == 403
    root.origin = root.url
    # Nothing was published by the refused requests.
    assert root.get(f"/retained/message?topic={topic}").status == 404
    mixed = root.request(
        "POST",
        "/console/api/publish",
        publish,
        headers={"Origin": "http://evil", "Referer": f"{root.url}/console"},
    )
    assert mixed.status == 403  # the Origin decides when there is one
    assert root.get(f"/retained/message?topic={topic}").status == 404
    # With the token and from the console itself: it works; so does a Referer alone.
    assert root.post("/publish", publish).status == 200
    root.origin = None
    delete = root.request(
        "DELETE",
        f"/console/api/retained/message?topic={topic}",
        headers={"Referer": f"{root.url}/console"},
    )
    assert delete.status == 200, delete.body


def test_sign_out_needs_the_token_too(root: Browserless) -> None:
    token, root.csrf = root.csrf, "wrong"
    assert root.delete("/session").status == 403
    root.csrf = token
    assert root.get("/overview").status == 200


# --------------------------------------------------------------------------- tenancy


def test_another_accounts_resources_are_not_found(hub: ConsoleHub, root: Browserless) -> None:
    account, key_id, secret = hub.account("other_tenant")
    theirs = hub.console()
    assert theirs.sign_in(key_id, secret).status == 200
    product = hub.product("theirprod", account=account)
    device = hub.device(product, "their_device", account=account)
    retained = f"/{product}/their_device/user/state"
    published = theirs.post("/publish", {"topic": retained, "payload": "t", "retain": True})
    assert published.status == 200, published.body
    message_id = published.body["messageId"]
    # They see their own...
    assert theirs.get(f"/devices/{device.iot_id}").status == 200
    assert theirs.get(f"/products/{product}").status == 200
    assert theirs.get(f"/retained/message?topic={retained}").status == 200
    assert theirs.get(f"/trace/{message_id}").status == 200
    # ...and the root account sees none of it.
    for path in (
        f"/devices/{device.iot_id}",
        f"/products/{product}",
        f"/retained/message?topic={retained}",
        f"/trace/{message_id}",
    ):
        answer = root.get(path)
        assert answer.status == 404 and answer.error == "NotFound", (path, answer.body)
    for action in ("disable", "enable", "disconnect"):
        assert root.post(f"/devices/{device.iot_id}/{action}").status == 404
    assert root.delete(f"/retained/message?topic={retained}").status == 404
    found = root.get("/devices?name=their_device")
    assert found.status == 200 and found.body["devices"] == [] and found.body["total"] == 0
    assert root.get(f"/devices?product={product}").body["total"] == 0
    assert product not in {p["productKey"] for p in root.get("/products").body["products"]}
    assert retained not in {m["topic"] for m in root.get("/retained").body["messages"]}
    # Nothing of theirs changed.
    assert theirs.get(f"/devices/{device.iot_id}").body["device"]["status"] == "UNACTIVE"
    assert theirs.get(f"/retained/message?topic={retained}").status == 200


# --------------------------------------------------------------------------- devices


def test_device_page_and_its_buttons(hub: ConsoleHub, root: Browserless) -> None:
    product = hub.product("buttons")
    device = hub.device(product, "button_dev")
    paho = PahoDevice(hub, device)
    paho.connect()
    try:
        paho.subscribe(device.topic("user/get"))
        page = root.get(f"/devices/{device.iot_id}")
        assert page.status == 200
        body = page.body
        assert body["device"]["status"] == "ONLINE"
        assert "deviceSecret" not in json.dumps(body) and device.secret not in json.dumps(body)
        session = body["session"]
        assert session["connected"] and session["connection"]["protocol"] == "5.0"
        assert [s["filter"] for s in session["subscriptions"]] == [device.topic("user/get")]
        assert root.post(f"/devices/{device.iot_id}/disconnect").status == 200
        assert paho.closed.wait(TIMEOUT), "the connection did not close"
        assert paho.reason == 0x98  # Administrative action
        again = root.post(f"/devices/{device.iot_id}/disconnect")
        assert again.status == 409, again.body
        assert root.post(f"/devices/{device.iot_id}/explode").status == 404
    finally:
        paho.stop()


def test_publish_input_is_checked(root: Browserless) -> None:
    cases: list[dict[str, Any]] = [
        {"topic": "a/+/c", "payload": "x"},
        {"topic": "", "payload": "x"},
        {"topic": "a", "payload": "x", "qos": 3},
        {"topic": "a", "payload": "x", "qos": "1"},
        {"topic": "a", "payload": "%%%", "encoding": "base64"},
        {"topic": "a", "payload": "x", "encoding": "latin1"},
        {"topic": "a", "payload": "x", "messageExpiry": -1},
        {"topic": "a", "payload": "x", "responseTopic": "r/#"},
        {"topic": "a", "payload": "x", "userProperties": [["only one"]]},
        {"topic": "$SYS/broker/uptime", "payload": "x"},
        {"topic": "a", "payload": "x", "retain": "yes"},
        {"topic": "$aws/things/lamp/shadow/update", "payload": "{}", "retain": True},
        {"topic": "a/" * 200 + "b", "payload": "x"},  # past mqtt.max_topic_levels (128)
    ]
    for body in cases:
        answer = root.post("/publish", body)
        assert answer.status == 400 and answer.error == "BadRequest", (body, answer.body)
    assert root.request("POST", "/console/api/publish", headers={}).status == 400  # no body
    # Of the reserved topics, the shadow service's requests can be published to.
    shadow = {"topic": "$aws/things/lamp/shadow/update", "payload": '{"state": {}}'}
    assert root.post("/publish", shadow).status == 200


# --------------------------------------------------------------------------- the live tail


async def _tail(
    hub: ConsoleHub,
    console: Browserless,
    topic_filter: str,
    *,
    protocols: tuple[str, ...] | None = None,
    origin: str | None = None,
) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    headers = {} if console.cookie is None else {"Cookie": f"thinghub_console={console.cookie}"}
    session = aiohttp.ClientSession(headers=headers)
    if protocols is None:
        protocols = ("thinghub-console", f"csrf.{console.csrf}")
    try:
        ws = await session.ws_connect(
            f"{hub.url}/console/ws/tail?filter={topic_filter}",
            protocols=protocols,
            origin=origin or hub.url,
            timeout=aiohttp.ClientWSTimeout(ws_close=TIMEOUT),
        )
    except BaseException:
        await session.close()
        raise
    return session, ws


async def _frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message = await ws.receive(timeout=TIMEOUT)
    assert message.type is aiohttp.WSMsgType.TEXT, message
    frame: dict[str, Any] = json.loads(message.data)
    return frame


def test_the_tail_is_refused_without_a_session_token_or_origin(
    hub: ConsoleHub, root: Browserless
) -> None:
    async def refused(console: Browserless, **options: Any) -> int:
        with pytest.raises(aiohttp.WSServerHandshakeError) as error:
            session, _ws = await _tail(hub, console, "%23", **options)
            await session.close()
        return error.value.status

    async def run() -> None:
        assert await refused(hub.console()) == 401
        forged = Browserless(hub.url)
        forged.cookie, forged.csrf = "forged", "forged"
        assert await refused(forged) == 401
        assert await refused(root, protocols=("thinghub-console",)) == 403
        assert await refused(root, protocols=("thinghub-console", "csrf.wrong")) == 403
        assert await refused(root, origin="http://evil.example") == 403
        assert await refused(root, protocols=(f"csrf.{root.csrf}",)) == 400
        assert (await _status(hub, root, "a/%23/b")) == 400
        assert (await _status(hub, root, "%24share/g/%23")) == 400

    asyncio.run(run())


async def _status(hub: ConsoleHub, console: Browserless, topic_filter: str) -> int:
    with pytest.raises(aiohttp.WSServerHandshakeError) as error:
        session, _ws = await _tail(hub, console, topic_filter)
        await session.close()
    return error.value.status


def test_the_tail_shows_what_is_published_and_ends_with_its_session(
    hub: ConsoleHub, root: Browserless
) -> None:
    async def run() -> None:
        session, ws = await _tail(hub, root, "console/tail/%2B")
        try:
            assert await _frame(ws) == {"type": "ready", "filter": "console/tail/+"}
            # Publishing blocks (urllib): on a thread, so the loop reads the tail meanwhile.
            answer = await asyncio.to_thread(
                root.post,
                "/publish",
                {
                    "topic": "console/tail/a",
                    "payload": "héllo",
                    "qos": 1,
                    "contentType": "text/plain",
                },
            )
            assert answer.status == 200, answer.body
            await asyncio.to_thread(
                root.post, "/publish", {"topic": "console/other", "payload": "no"}
            )
            frame = await _frame(ws)
            assert frame["type"] == "messages" and frame["dropped"] == 0
            [item] = frame["items"]
            assert item["topic"] == "console/tail/a" and item["payload"] == "héllo"
            assert item["messageId"] == answer.body["messageId"]
            assert item["qos"] == 1 and item["contentType"] == "text/plain"
            # A third tail of this session is refused (console_max_tails_per_session = 2).
            second_session, second = await _tail(hub, root, "%23")
            try:
                assert (await _status(hub, root, "%23")) == 429
            finally:
                await second.close()
                await second_session.close()
            # Signing out ends the tail.
            assert (await asyncio.to_thread(root.delete, "/session")).status == 200
            frame = await _frame(ws)
            assert frame == {"type": "end", "reason": "the session ended"}
            closed = await ws.receive(timeout=TIMEOUT)
            assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        finally:
            await ws.close()
            await session.close()

    asyncio.run(run())


def test_a_burst_the_page_cannot_take_is_counted_not_kept(
    hub: ConsoleHub, root: Browserless
) -> None:
    """1,000 QoS 0 messages arrive in one read of one MQTT connection: the broker calls the
    tail 1,000 times before its sender runs once, and the tail's queue holds 20
    (console_tail_queue). The page gets what the queue held and the count of the rest."""
    burst = 1000

    async def run() -> None:
        session, ws = await _tail(hub, root, "console/burst/%23")
        try:
            assert (await _frame(ws))["type"] == "ready"
            publisher = rawmqtt.RawClient(hub.host, hub.mqtt_port, version=5, timeout=TIMEOUT)
            try:
                publisher.connect("console-burst")
                data = b"".join(
                    rawmqtt.publish(f"console/burst/{i}", b"m%d" % i) for i in range(burst)
                )
                await asyncio.to_thread(publisher.send, data + rawmqtt.pingreq())
                await asyncio.to_thread(publisher.expect, rawmqtt.PINGRESP)
            finally:
                publisher.close()
            shown: list[str] = []
            dropped = 0
            while len(shown) + dropped < burst:
                frame = await _frame(ws)
                shown += [item["topic"] for item in frame["items"]]
                dropped = frame["dropped"]
            assert len(shown) + dropped == burst
            assert dropped >= burst - 20 * 10, (len(shown), dropped)
            assert shown == sorted(shown, key=lambda t: int(t.rsplit("/", 1)[1]))  # in order
        finally:
            await ws.close()
            await session.close()

    asyncio.run(run())


def test_stopping_the_hub_ends_its_tails(tmp_path: Path) -> None:
    hub = ConsoleHub(tmp_path / "data")
    try:
        console = hub.console()
        assert console.sign_in().status == 200

        async def run() -> int:
            session, ws = await _tail(hub, console, "%23")
            try:
                assert (await _frame(ws))["type"] == "ready"
                stopping = asyncio.create_task(asyncio.to_thread(hub.stop))
                assert await _frame(ws) == {"type": "end", "reason": "the hub is stopping"}
                return await stopping
            finally:
                await ws.close()
                await session.close()

        assert asyncio.run(run()) == 0, hub.log()
    finally:
        hub.stop()


def test_a_hub_without_the_console_serves_none_of_it(tmp_path: Path) -> None:
    hub = ConsoleHub(tmp_path / "data", console_enabled=False)
    try:
        console = hub.console()
        assert console.request("GET", "/console").status == 404
        assert console.sign_in().status == 404
        assert console.request("GET", "/healthz").status == 200
    finally:
        hub.stop()
