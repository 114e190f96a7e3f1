"""The benchmark scenarios and the per-run result record.

Window/batch sizes were chosen against mosquitto on the 2-core reference machine:
large enough that the broker never waits for the generator (throughput plateaued),
small enough that the broker is not just queueing (latency stays in the ms range).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bench.mqttload import IdleResult, StreamResult, StreamSpec


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    unit: str  # what ``rate`` counts
    spec: StreamSpec | None  # None: the idle-connections scenario (or an HTTP one)
    # An HTTP API scenario (bench/http_publish.py, bench/aliyun_pub.py): ThingHub only, no
    # null-broker ceiling, reported in its own table beside the do-nothing endpoint.
    http: bool = False
    # The sign-in scenario (bench/signin.py): ThingHub only, its own hubs and its own table;
    # its generator ceiling is measured inside it.
    signin: bool = False
    # The mutual-TLS sign-in scenario (bench/mtls.py): its own hub and mosquitto, its own
    # table.
    mtls: bool = False

    @property
    def traced(self) -> bool:
        """Run with the delivery trace on too (broker ``thinghub-traced``): the MQTT message
        streams, where the trace has something to record."""
        return self.spec is not None and not (self.http or self.signin or self.mtls)


def _fanin() -> StreamSpec:
    return StreamSpec(
        name="fan-in",
        pub_topics=[["bench/fanin"] for _ in range(4)],
        sub_topics=["bench/fanin"],
        window=2000,
        batch=50,
    )


def _fanout() -> StreamSpec:
    # Window counted in published messages: 40 messages = 4,000 deliveries in the pipe.
    return StreamSpec(
        name="fan-out",
        pub_topics=[["bench/fanout"]],
        sub_topics=["bench/fanout"] * 100,
        fanout=100,
        window=40,
        batch=10,
    )


def _qos1() -> StreamSpec:
    return StreamSpec(
        name="qos1",
        pub_topics=[["bench/qos1"]],
        sub_topics=["bench/qos1"],
        qos=1,
        window=1000,  # end-to-end cap on top of the 100-PUBLISH PUBACK window
        batch=25,
        ack_window=100,
    )


def _qos1_persistent() -> StreamSpec:
    # qos1 into a persistent session (clean session 0, connected before the publisher): every
    # delivery goes through the broker's store ("QoS 1 end to end into a persistent
    # session, with durability on"). Compare with qos1 in the same run.
    return StreamSpec(
        name="qos1-persistent",
        pub_topics=[["bench/qos1p"]],
        sub_topics=["bench/qos1p"],
        qos=1,
        window=1000,
        batch=25,
        ack_window=100,
        persistent_subs=True,
    )


def _topics1000() -> StreamSpec:
    topics = [f"bench/t/{i:04d}" for i in range(1000)]
    return StreamSpec(
        name="topics1000",
        pub_topics=[topics],
        sub_topics=topics,
        window=2000,
        batch=50,
    )


IDLE_CONNECTIONS = 10_000

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("fan-in", "fan-in: 4 pub -> 1 sub, QoS 0", "msgs/s", _fanin()),
        Scenario("fan-out", "fan-out: 1 pub -> 100 subs, QoS 0", "deliveries/s", _fanout()),
        Scenario("qos1", "qos1: 1 pub -> 1 sub, QoS 1, window 100", "msgs/s", _qos1()),
        Scenario(
            "qos1-persistent",
            "qos1-persistent: as qos1, into a persistent session",
            "msgs/s",
            _qos1_persistent(),
        ),
        Scenario("topics1000", "topics1000: 1 pub -> 1,000 topics/subs", "msgs/s", _topics1000()),
        Scenario("idle10k", "idle10k: 10,000 idle connections", "connects/s", None),
        Scenario(
            "signin",
            "signin: Alibaba devices signing in, cold and in a reconnect storm",
            "connects/s",
            None,
            signin=True,
        ),
        Scenario(
            "mtls",
            "mtls: AWS IoT devices signing in with client certificates, beside mosquitto",
            "connects/s",
            None,
            mtls=True,
        ),
        Scenario(
            "aws-publish",
            "aws-publish: AWS Publish (SigV4), QoS 0 -> 1 MQTT 5 subscriber",
            "req/s",
            None,
            http=True,
        ),
        Scenario(
            "aliyun-pub",
            "aliyun-pub: Alibaba Pub (V1 signature), QoS 0 -> 1 device",
            "req/s",
            None,
            http=True,
        ),
        Scenario(
            "aliyun-batchpub",
            "aliyun-batchpub: Alibaba BatchPub, QoS 0 -> 100 devices",
            "deliveries/s",
            None,
            http=True,
        ),
    )
}
MQTT_SCENARIOS = [name for name, sc in SCENARIOS.items() if not (sc.http or sc.signin or sc.mtls)]
HTTP_SCENARIOS = [name for name, sc in SCENARIOS.items() if sc.http]


@dataclass
class RunResult:
    """One run of one scenario against one broker (the unit that gets median'd)."""

    scenario: str
    broker: str
    ok: bool
    error: str | None = None
    rate: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    peak_rss_kb: int | None = None
    kb_per_conn: float | None = None
    connections: int | None = None
    broker_cpu: float | None = None
    gen_cpu: float | None = None
    sent: int | None = None
    delivered: int | None = None
    lost: int | None = None
    latency_samples: int | None = None
    # HTTP scenarios: the do-nothing endpoint (GET /healthz) in the same run, and the request
    # rate (equal to ``rate`` but for BatchPub, whose ``rate`` counts deliveries).
    baseline_rate: float | None = None
    requests_rate: float | None = None
    warnings: list[str] = field(default_factory=list)
    # The sign-in scenario: its named figures (bench/signin.py ``_figures``), and what makes it
    # fail (connects refused, wrong device statuses) as opposed to missing a target.
    figures: dict[str, float | None] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @classmethod
    def from_stream(cls, scenario: str, broker: str, r: StreamResult) -> RunResult:
        return cls(
            scenario=scenario,
            broker=broker,
            ok=True,
            rate=r.rate,
            p50_ms=r.p50_ms,
            p99_ms=r.p99_ms,
            peak_rss_kb=r.peak_rss_kb,
            broker_cpu=r.broker_cpu,
            gen_cpu=r.gen_cpu,
            sent=r.sent,
            delivered=r.delivered,
            lost=r.lost,
            latency_samples=r.latency_samples,
            warnings=list(r.errors),
        )

    @classmethod
    def from_idle(cls, scenario: str, broker: str, r: IdleResult) -> RunResult:
        warnings = list(r.errors)
        if r.connections < r.attempted:
            warnings.append(f"only {r.connections}/{r.attempted} connections succeeded")
        return cls(
            scenario=scenario,
            broker=broker,
            ok=r.connections > 0,
            error=None if r.connections else "no connection succeeded",
            rate=r.connects_per_s,
            kb_per_conn=r.kb_per_conn,
            connections=r.connections,
            peak_rss_kb=r.peak_rss_kb,
            broker_cpu=r.broker_cpu,
            gen_cpu=r.gen_cpu,
            warnings=warnings,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
