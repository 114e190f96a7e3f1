"""``[cluster]``: several hubs acting as one, on NATS (docs/architecture.md, *Cluster*).

Kept apart from ``thinghub/config.py`` (which holds it as ``Settings.cluster`` and fills it
from TOML, ``THINGHUB_CLUSTER_*`` and ``serve --cluster/--node-name``) so that the cluster's
settings, their defaults and their checks read in one place. Clustering is off unless
``nats_urls`` is set: then nothing here is used, and the hub is one process with SQLite and
no other server.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

#: What a node name may hold: one NATS subject token and one JetStream key-value token, the
#: same in both, readable in logs (thinghub/cluster/subjects.py).
NODE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: What the subject prefix may hold: NATS tokens of the same alphabet, dot-separated.
SUBJECT_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,32}(\.[A-Za-z0-9_-]{1,32}){0,3}")

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    # NATS servers of the cluster, e.g. ("nats://h1:4222", "nats://h2:4222"); empty: no
    # cluster. The client connects to one and moves to another when it goes.
    nats_urls: tuple[str, ...] = ()
    # This node's name, unique in the cluster (""): the host name).
    node_name: str = ""
    # This node's number in its MessageIds, 0..1023, unique in the cluster; -1: claimed in
    # the cluster's nodes bucket at the first start and kept (cluster/numbers.py).
    node_id: int = -1
    # Replicas of the JetStream streams and buckets the cluster keeps (session owners,
    # retained messages): 1 for a single NATS server, 3 for a 3-server NATS cluster.
    stream_replicas: int = 1
    # The first tokens of every subject the hubs use, so that two clusters can share NATS.
    subject_prefix: str = "thinghub"
    # Seconds ``serve`` waits for NATS at start before it goes on without it (the connection
    # keeps being tried; meanwhile nothing crosses nodes and /healthz says degraded).
    connect_timeout: float = 10.0
    # Seconds between two attempts to reach NATS once it has been lost.
    reconnect_wait: float = 1.0
    # Seconds a JetStream request (a session ownership claim, a stream lookup) may take.
    request_timeout: float = 5.0
    # Seconds between two heartbeats of this node's interest table (cluster/interest.py), and
    # after which a node that sent nothing is forgotten with its interest.
    heartbeat_interval: float = 1.0
    node_timeout: float = 5.0
    # Bytes of messages waiting to be handed to NATS: past it, a QoS 0 message for other
    # nodes is dropped (counted) and a QoS 1/2 one refused (MQTT 5: 0x97), never queued
    # without bound.
    outbound_buffer_bytes: int = 8 * MIB
    # QoS 0 messages for one subject published in one loop turn cross as one NATS message
    # (cluster/bus.py); a batch is sent before it grows past this many bytes (at most half
    # of NATS' default max_payload, 1 MiB, so that a batch and its last message fit).
    batch_bytes: int = 64 * 1024
    # Session ownership claims waiting for JetStream (cluster/owners.py); past it a claim is
    # dropped and counted: that connection does not take over a session held elsewhere.
    max_pending_claims: int = 100_000
    # Requests from other nodes this node handles at once (a session's state, a disconnect, a
    # direct message, an RRpc, which waits for its device: cluster/rpc.py); past it the node
    # answers "busy" and the asking node's API call gets a 503.
    rpc_max_concurrent: int = 256
    # QoS 1/2 messages handed to the cluster's message stream (cluster/stream.py) and not yet
    # acknowledged by JetStream: past it a QoS 1/2 publish is refused (MQTT 5: 0x97, HTTP
    # 503) until acknowledgements come back. Each one waits at most ``request_timeout``.
    max_unacked_publishes: int = 10_000
    # Bounds of that stream (``<prefix>_msgs``): bytes, messages, and seconds a message is
    # kept for persistent sessions that have not taken it. Past the first two JetStream
    # refuses new messages (discard new), so their publishers are refused, never acknowledged.
    stream_max_bytes: int = 256 * MIB
    stream_max_msgs: int = 1_000_000
    stream_max_age: float = 7 * 24 * 3600.0
    # Seconds JetStream waits for a persistent session's acknowledgement of a message before
    # delivering it again (its node died with it in flight: cluster/consumers.py).
    consumer_ack_wait: float = 30.0
    # Seconds a node remembers which stream messages a receiver acknowledged, so that
    # JetStream delivering one again (an acknowledgement lost with a NATS server, a new
    # consumer leader) is acknowledged again, not sent again: a QoS 2 receiver would take it
    # for a new message (cluster/completed.py). At least the consumers' ack wait plus the
    # time a NATS server takes to be replaced.
    redelivery_memory: float = 120.0
    # Copies of a shared group's QoS 1/2 messages (cluster/groups.py) its members, on every
    # node together, may have unacknowledged; JetStream delivers no more to the group until
    # some are acknowledged.
    shared_max_inflight: int = 1_000
    # Seconds between two sweeps of the session records for sessions whose node died and
    # whose expiry has passed (their consumers and records are removed).
    session_sweep_interval: float = 60.0
    # Seconds between two trims of the message stream (cluster/stream.py) by the node whose
    # name sorts first: what the stream holds beyond what the persistent sessions still need.
    stream_trim_interval: float = 1.0
    # Seconds a message stays in that stream at least, whatever the consumers say: one whose
    # NATS server is catching up after a restart may say nothing is pending of messages that
    # server has not received yet (cluster/stream.py, ``_trim``).
    stream_trim_delay: float = 10.0

    @property
    def enabled(self) -> bool:
        return bool(self.nats_urls)

    def node(self) -> str:
        """This node's name: ``node_name``, else the host name made into a valid one."""
        if self.node_name:
            return self.node_name
        name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64]
        return name or "node"

    def problems(self) -> list[str]:
        """What is wrong with these settings, each naming its setting; empty if nothing."""
        found = [
            f"cluster.nats_urls: {url!r} is not a nats://host:port URL"
            for url in self.nats_urls
            if not re.fullmatch(r"(nats|tls)://[^\s,/]+(:\d+)?/?", url)
        ]
        if self.node_name and not NODE_NAME.fullmatch(self.node_name):
            found.append("cluster.node_name must be 1-64 letters, digits, '-' or '_'")
        if not -1 <= self.node_id <= 1023:
            found.append("cluster.node_id must be 0..1023 (or -1: claimed in the cluster)")
        if not SUBJECT_PREFIX.fullmatch(self.subject_prefix):
            found.append("cluster.subject_prefix must be dot-separated letters, digits, - or _")
        if not 1024 <= self.batch_bytes <= MIB // 2:
            found.append("cluster.batch_bytes must be 1024..524288")
        if not 0 <= self.stream_trim_delay <= 86400:
            found.append("cluster.stream_trim_delay must be 0..86400 seconds")
        if not 0.1 <= self.stream_trim_interval <= 3600:
            found.append("cluster.stream_trim_interval must be 0.1..3600 seconds")
        if self.rpc_max_concurrent < 1:
            found.append("cluster.rpc_max_concurrent must be at least 1")
        if not 1 <= self.stream_replicas <= 5:
            found.append("cluster.stream_replicas must be 1..5 (JetStream's limit)")
        if min(self.connect_timeout, self.reconnect_wait, self.request_timeout) <= 0:
            found.append("cluster timeouts must be above 0")
        if not 0 < self.heartbeat_interval < self.node_timeout:
            found.append("cluster.heartbeat_interval must be above 0 and below node_timeout")
        if self.outbound_buffer_bytes < 64 * 1024:
            found.append("cluster.outbound_buffer_bytes must be at least 65536")
        if self.redelivery_memory < 2 * self.consumer_ack_wait:
            found.append("cluster.redelivery_memory must be at least twice consumer_ack_wait")
        if self.shared_max_inflight < 1:
            found.append("cluster.shared_max_inflight must be at least 1")
        if self.max_pending_claims < 1:
            found.append("cluster.max_pending_claims must be at least 1")
        if self.consumer_ack_wait < 1 or self.session_sweep_interval <= 0:
            found.append(
                "cluster.consumer_ack_wait must be at least 1, session_sweep_interval above 0"
            )
        if self.max_unacked_publishes < 1:
            found.append("cluster.max_unacked_publishes must be at least 1")
        if self.stream_max_bytes < MIB or self.stream_max_msgs < 1 or self.stream_max_age <= 0:
            found.append(
                "cluster.stream_max_bytes must be at least 1 MiB, stream_max_msgs at least 1, "
                "stream_max_age above 0"
            )
        return found
