"""Pure parts of thinghub/observe: bucket counts, the audit log's token bucket and its
summary of suppressed lines, the JSON log format, who may read $SYS, and the new settings."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from thinghub.broker.auth import ClientInfo, Decision, DenyList
from thinghub.config import ConfigError, load_settings
from thinghub.mqtt.types import ReasonCode
from thinghub.observe.audit import MAX_FIELD, AuditLog, clean
from thinghub.observe.histogram import Buckets
from thinghub.observe.logs import JsonFormatter, start_logging
from thinghub.observe.requests import ApiCall
from thinghub.observe.sysaccess import SysReaders, is_sys_filter

# --- histogram ---------------------------------------------------------------------------


def test_buckets_are_inclusive_upper_bounds_and_cumulative() -> None:
    buckets = Buckets((0.001, 0.01, 1.0))
    for value in (0.0005, 0.001, 0.002, 0.5, 7.0):
        buckets.observe(value)
    assert buckets.cumulative() == [(0.001, 2), (0.01, 3), (1.0, 4), (float("inf"), 5)]
    assert buckets.count == 5
    assert buckets.sum == pytest.approx(0.0005 + 0.001 + 0.002 + 0.5 + 7.0)


def test_bucket_bounds_must_increase() -> None:
    with pytest.raises(ValueError, match="increasing"):
        Buckets((0.1, 0.01))


# --- audit log ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Timers:
    """``loop.call_later`` for a test: the callbacks wait until ``run_due``."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.pending: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> object:
        self.pending.append((self.clock.now + delay, callback))
        return None

    def run_due(self) -> None:
        due = [c for at, c in self.pending if at <= self.clock.now]
        self.pending = [(at, c) for at, c in self.pending if at > self.clock.now]
        for callback in due:
            callback()


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _audit(rate: float, burst: int) -> tuple[AuditLog, Clock, Timers, Lines]:
    clock = Clock()
    timers = Timers(clock)
    logger = logging.getLogger(f"test.audit.{id(clock)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    lines = Lines()
    logger.addHandler(lines)
    return (
        AuditLog(rate, burst, clock=clock, call_later=timers, logger=logger),
        clock,
        timers,
        lines,
    )


def _call(key: str = "AK1") -> ApiCall:
    call = ApiCall("aws", 0.0)
    call.operation, call.access_key_id, call.account = "Publish", key, "acct"
    return call


def test_audit_lines_carry_the_call() -> None:
    audit, _clock, _timers, lines = _audit(10, 10)
    call = _call()
    call.result = "ThrottlingException"
    audit.api_call(call, 429)
    (record,) = lines.records
    assert record.getMessage() == (
        "api aws Publish key=AK1 account=acct status=429 result=ThrottlingException"
    )
    fields = vars(record)
    assert fields["event"] == "api_call"
    assert (fields["access_key_id"], fields["account"], fields["status"]) == ("AK1", "acct", 429)


def test_a_flood_is_cut_to_the_burst_then_the_rate_and_summarised_once_a_second() -> None:
    audit, clock, timers, lines = _audit(rate=5, burst=10)

    def flood() -> None:
        for _ in range(100):
            audit.signin_refused("10.0.0.1:1234", "dev", None, "not_authorized", "bad password")

    def summaries() -> list[str]:
        return [
            r.getMessage() for r in lines.records if getattr(r, "event", "") == "audit_suppressed"
        ]

    flood()
    assert len(lines.records) == 10  # the burst
    assert audit.suppressed == 90
    # Half a second on, 2.5 tokens: the first line through says how many were dropped.
    clock.now += 0.5
    flood()
    assert len(lines.records) == 10 + 1 + 2
    assert summaries() == ["90 audit lines suppressed (more than 5 a second, 10 at once)"]
    # The flood's tail: no second summary within the second...
    clock.now += 0.5
    timers.run_due()
    assert len(summaries()) == 1
    # ... one a second later, though no line gets through any more.
    clock.now += 1.0
    timers.run_due()
    assert summaries()[1].startswith("98 audit lines suppressed")
    assert audit.suppressed == 0 and audit.suppressed_total == 188
    # The flood is over: the next check finds nothing, and stops looking.
    clock.now += 1.0
    timers.run_due()
    assert not timers.pending
    assert len(summaries()) == 2
    assert all(r.levelno == logging.WARNING for r in lines.records if "suppressed" in r.msg)


def test_clean_bounds_and_escapes_what_a_client_chooses() -> None:
    assert clean("plain") == "plain"
    assert clean("a\nb\x1b[31m") == "a\\nb\\x1b[31m"
    long = clean("x" * 1000)
    assert len(long) == MAX_FIELD + 3 and long.endswith("...")
    assert clean(None) == ""


# --- JSON log format -----------------------------------------------------------------------


def test_json_lines_hold_time_level_logger_message_and_extra_fields() -> None:
    record = logging.LogRecord("thinghub.audit", logging.INFO, __file__, 1, "api %s", ("x",), None)
    record.status = 200
    record.account = "acct"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    body = json.loads(line)
    assert body["level"] == "INFO" and body["logger"] == "thinghub.audit"
    assert body["message"] == "api x"
    assert body["time"].endswith("Z") and "T" in body["time"]
    assert (body["status"], body["account"]) == (200, "acct")


def test_the_log_pipe_writes_json_lines_with_tracebacks_and_counts_drops() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    pipe = start_logging("info", "json", 1000, stream)
    try:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("thinghub.test").exception("it failed: %d", 42)
        logging.getLogger("thinghub.test").debug("below the level")
    finally:
        pipe.close()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    (line,) = stream.getvalue().splitlines()
    body = json.loads(line)
    assert body["message"] == "it failed: 42" and body["level"] == "ERROR"
    assert "RuntimeError: boom" in body["exception"]
    assert pipe.dropped == 0


def test_audit_lines_are_written_when_the_log_is_turned_down_to_warning() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    pipe = start_logging("warning", "text", 1000, stream, audit=True)
    try:
        logging.getLogger("thinghub.broker").info("not written")
        AuditLog(10, 10).api_call(_call(), 200)
    finally:
        pipe.close()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    (line,) = stream.getvalue().splitlines()
    assert " INFO thinghub.audit: api aws Publish key=AK1 account=acct status=200" in line


# --- $SYS readers --------------------------------------------------------------------------

ROOT, OTHER = "root-account", "other-account"


def _client(
    client_id: str, *, user: str | None = None, device: bool = False, account: str = ROOT
) -> ClientInfo:
    return ClientInfo(client_id, user, "127.0.0.1:1", 5, account, object() if device else None)


class Everything:
    def may_publish(self, client: ClientInfo, topic: str) -> Decision:
        return Decision.allow()

    def may_subscribe(self, client: ClientInfo, topic_filter: str) -> Decision:
        return Decision.allow()


def test_sys_filters_are_only_those_that_begin_with_sys() -> None:
    for sys_filter in ("$SYS/#", "$SYS/broker/uptime", "$share/g/$SYS/#", "$SYS"):
        assert is_sys_filter(sys_filter)
    for other in ("#", "+/broker/#", "$SYSX/#", "a/$SYS/#", "$share/g/#"):
        assert not is_sys_filter(other)


def test_who_reads_sys() -> None:
    readers = SysReaders(Everything(), ("anonymous", "client:ops-*", "user:dev&pk1"), ROOT)
    assert readers.may_subscribe(_client("anyone"), "$SYS/#").allowed
    device = _client("pk1.dev", user="dev&pk1", device=True)
    assert readers.may_subscribe(device, "$SYS/#").allowed  # named by user
    stranger = _client("pk1.other", user="other&pk1", device=True)
    refusal = readers.may_subscribe(stranger, "$SYS/broker/#")
    assert not refusal.allowed and refusal.reason_code == ReasonCode.NOT_AUTHORIZED
    assert readers.may_subscribe(_client("ops-1", device=True), "$share/g/$SYS/#").allowed
    # Another account's clients never read the hub-wide figures, whatever their name.
    assert not readers.may_subscribe(_client("ops-1", account=OTHER), "$SYS/#").allowed
    # Everything else is the inner authorizer's business.
    assert readers.may_subscribe(stranger, "#").allowed


def test_devices_read_sys_only_when_named_and_nobody_writes_it() -> None:
    readers = SysReaders(Everything(), ("anonymous",), ROOT, DenyList((), ("$SYS/broker/load/#",)))
    assert not readers.may_subscribe(_client("pk.dev", device=True), "$SYS/#").allowed
    assert not readers.may_subscribe(_client("anyone"), "$SYS/broker/load/#").allowed  # deny list
    assert not readers.may_publish(_client("anyone"), "$SYS/broker/uptime").allowed
    assert readers.may_publish(_client("anyone"), "$SYSTEM/x").allowed


# --- settings ------------------------------------------------------------------------------


def test_new_settings_from_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(
        'log_level = "DEBUG"\n[log]\nformat = "json"\naudit_rate = 5\n'
        '[mqtt]\nsys_interval = 2.5\nsys_readers = ["client:ops-*"]\n'
    )
    s = load_settings(config, environ={"THINGHUB_LOG_AUDIT": "false"})
    assert (s.log_level, s.log.format, s.log.audit_rate, s.log.audit) == ("DEBUG", "json", 5, False)
    assert (s.mqtt.sys_interval, s.mqtt.sys_readers) == (2.5, ("client:ops-*",))
    # THINGHUB_LOG_LEVEL is still the top-level log_level, not a key of [log].
    s = load_settings(environ={"THINGHUB_LOG_LEVEL": "warning", "THINGHUB_LOG_FORMAT": "json"})
    assert (s.log_level, s.log.format) == ("warning", "json")
    defaults = load_settings(environ={})
    assert (defaults.log.format, defaults.log.audit) == ("text", True)
    assert (defaults.mqtt.sys_interval, defaults.mqtt.sys_readers) == (10.0, ("anonymous",))


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"THINGHUB_LOG_FORMAT": "xml"}, "log.format"),
        ({"THINGHUB_LOG_AUDIT_RATE": "0"}, "log.audit_rate"),
        ({"THINGHUB_LOG_AUDIT_BURST": "0"}, "log.audit_burst"),
        ({"THINGHUB_LOG_QUEUE": "0"}, "log.queue"),
        ({"THINGHUB_LOG_LEVEL": "chatty"}, "log_level"),
        ({"THINGHUB_MQTT_SYS_INTERVAL": "-1"}, "mqtt.sys_interval"),
        ({"THINGHUB_MQTT_SYS_INTERVAL": "0.01"}, "mqtt.sys_interval"),
        ({"THINGHUB_MQTT_SYS_READERS": "anonymous,everyone"}, "mqtt.sys_readers"),
        ({"THINGHUB_MQTT_SYS_READERS": "client:"}, "mqtt.sys_readers"),
    ],
)
def test_bad_new_settings_are_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=environ)
