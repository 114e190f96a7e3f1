"""Unit tests of the console's pure parts: sessions (lifetimes, bound, eviction), the sign-in
limiter, the Origin check and CSRF comparison, the tail's bounded queue and its filter check.
The HTTP and browser tests (test_console_http.py, test_console_browser.py) run the real hub."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import make_mocked_request

from thinghub.console.errors import ConsoleError
from thinghub.console.guard import same_origin, tokens_match
from thinghub.console.sessions import SessionBook
from thinghub.console.signin_limit import SignInLimiter
from thinghub.console.tail import Tail, check_filter
from thinghub.message import Message


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def book(clock: Clock, *, idle: float = 60, most: float = 600, count: int = 3) -> SessionBook:
    return SessionBook(idle_s=idle, max_s=most, max_sessions=count, clock=clock)


def test_a_session_is_found_by_its_cookie_only() -> None:
    clock = Clock()
    sessions = book(clock)
    session = sessions.open("acct", "acct name", "KEY")
    assert sessions.get(session.cookie) is session
    assert sessions.get(session.cookie + "x") is None
    assert sessions.get("") is None
    assert sessions.get(None) is None
    # The book keeps a digest, never the cookie itself, as its key.
    assert session.cookie not in sessions._sessions


def test_idle_sessions_end_and_activity_keeps_them() -> None:
    clock = Clock()
    sessions = book(clock, idle=60, most=600)
    session = sessions.open("acct", "", "KEY")
    for _ in range(5):
        clock.now += 59
        assert sessions.get(session.cookie) is session
    clock.now += 60
    assert sessions.get(session.cookie) is None
    assert session.ended


def test_the_absolute_lifetime_ends_even_a_busy_session() -> None:
    clock = Clock()
    sessions = book(clock, idle=60, most=200)
    session = sessions.open("acct", "", "KEY")
    for _ in range(3):
        clock.now += 50
        assert sessions.get(session.cookie) is session
    clock.now += 50
    assert sessions.get(session.cookie) is None


def test_the_book_is_bounded_and_ends_the_least_recently_used() -> None:
    clock = Clock()
    sessions = book(clock, count=3)
    first, second, third = (sessions.open("acct", "", f"K{i}") for i in range(3))
    clock.now += 1
    assert sessions.get(first.cookie) is first  # now the most recently used
    fourth = sessions.open("acct", "", "K3")
    assert len(sessions) == 3
    assert second.ended and sessions.get(second.cookie) is None
    assert sessions.get(first.cookie) is first
    assert sessions.get(third.cookie) is third
    assert sessions.get(fourth.cookie) is fourth
    assert sessions.evicted == 1


def test_sign_out_and_a_disabled_key_end_sessions() -> None:
    clock = Clock()
    sessions = book(clock, count=10)
    a1, a2, b = (
        sessions.open("a", "", "KA"),
        sessions.open("a", "", "KA"),
        sessions.open("b", "", "KB"),
    )
    sessions.close(a1)
    assert sessions.get(a1.cookie) is None
    assert sessions.end_key("KA") == 1
    assert not sessions.alive(a2)
    assert sessions.alive(b)


def test_sign_in_attempts_per_address() -> None:
    clock = Clock()
    limiter = SignInLimiter(6, clock=clock)  # a burst of 6, then one every 10 s
    assert all(limiter.allow("10.0.0.1") for _ in range(6))
    assert not limiter.allow("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 10
    assert limiter.allow("10.0.0.2")  # another address has its own bucket
    clock.now += 10
    assert limiter.allow("10.0.0.1")
    assert not limiter.allow("10.0.0.1")
    assert limiter.refused == 2


def test_the_limiter_forgets_addresses_within_its_bound() -> None:
    clock = Clock()
    limiter = SignInLimiter(5, max_addresses=100, clock=clock)
    for i in range(1000):
        limiter.allow(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._buckets) <= 100


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"Origin": "http://hub.example:8080"}, True),
        ({"Origin": "https://hub.example:8080"}, True),
        ({"Origin": "http://HUB.example:8080"}, True),
        ({"Origin": "http://evil.example"}, False),
        ({"Origin": "http://hub.example:8081"}, False),
        ({"Origin": "http://hub.example"}, False),
        ({"Origin": "null"}, False),
        ({"Referer": "http://hub.example:8080/console"}, True),
        ({"Referer": "http://evil.example/console"}, False),
        ({"Origin": "http://evil.example", "Referer": "http://hub.example:8080/"}, False),
        ({}, False),
    ],
)
def test_the_origin_must_be_this_host(headers: dict[str, str], allowed: bool) -> None:
    request = make_mocked_request(
        "POST", "/console/api/publish", headers={"Host": "hub.example:8080", **headers}
    )
    if allowed:
        same_origin(request)
    else:
        with pytest.raises(ConsoleError) as refused:
            same_origin(request)
        assert refused.value.status == 403


def test_csrf_tokens_compare_whole() -> None:
    assert tokens_match("abc", "abc")
    assert not tokens_match("abd", "abc")
    assert not tokens_match("ab", "abc")
    assert not tokens_match("", "abc")
    assert not tokens_match(None, "abc")
    assert not tokens_match("é\udcff", "abc")  # not ASCII: no error, just wrong


def test_a_tail_queue_is_bounded_and_counts_what_it_drops() -> None:
    async def run() -> None:
        tail = Tail(max_queue=10, max_payload=4, hidden=None)
        for i in range(1000):
            tail.observe(Message(topic=f"t/{i}", payload=b"0123456789", account="a", id=i + 1))
        assert len(tail) == 10
        assert tail.dropped == 990
        first = tail.take(4)
        assert [m["topic"] for m in first] == ["t/0", "t/1", "t/2", "t/3"]
        assert first[0]["payload"] == "0123" and first[0]["truncated"]
        assert first[0]["bytes"] == 10 and first[0]["messageId"] == "1"
        await tail.wait(0.01)  # six still wait: returns at once
        assert len(tail.take()) == 6
        tail.observe(Message(topic="t/x", payload=b"\xff\xfe", account="a"))
        entry = tail.take()[0]
        assert entry["encoding"] == "base64" and entry["payload"] == "//4="
        assert entry["messageId"] is None

    asyncio.run(run())


@pytest.mark.parametrize(
    ("topic_filter", "ok"),
    [("#", True), ("a/+/c", True), ("$SYS/#", True), ("a/#/c", False), ("$share/g/#", False),
     ("a+", False), ("", False)],
)  # fmt: skip
def test_tail_filters(topic_filter: str, ok: bool) -> None:
    if ok:
        assert check_filter(topic_filter, 1024) == topic_filter
    else:
        with pytest.raises(ConsoleError) as refused:
            check_filter(topic_filter, 1024)
        assert refused.value.status == 400
