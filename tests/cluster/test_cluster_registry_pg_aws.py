"""AWS IoT identities in a registry on PostgreSQL: a thing, its certificate and policy made with
boto3's ``iot`` client on a ``thinghub serve --registry postgresql://...`` hub, and the
device signing in with that certificate over mutual TLS. While PostgreSQL is out of reach
(stopped by its PID) a certificate the hub has already seen signs in again, one it has never
seen is refused with CONNACK 0x88 (Server unavailable; 3.1.1: 3) rather than judged on a copy
that may be stale; once PostgreSQL is back the new one signs in too, without a restart. A
certificate revoked while the hub heard no change is disconnected once it copies the
registry again."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pgserver
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "awsdevice"))
from certs import tls_answer
from devhub import DevHub, wait_for
from sdk import Sdk311

pytestmark = pytest.mark.thinghub_only


@pytest.fixture(scope="module")
def pg() -> Iterator[pgserver.PgServer]:
    """This module's own PostgreSQL: the test stops and starts it."""
    if not pgserver.available():
        pytest.skip(f"PostgreSQL 15 is not installed in {pgserver.BIN}")
    server = pgserver.PgServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def hub(pg: pgserver.PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevHub]:
    started = DevHub(tmp_path_factory.mktemp("pg-aws"), registry_url=pg.url, cluster_node_id=1)
    try:
        yield started
    finally:
        started.stop()


def test_certificates_sign_in_from_a_registry_on_postgresql(
    hub: DevHub, pg: pgserver.PgServer
) -> None:
    iot = hub.iot()
    seen = hub.device(iot)
    unseen = hub.device(iot)
    assert tls_answer(hub, seen.cert_file, seen.key_file, seen.thing) == "connack:0"
    assert iot.describe_thing(thingName=seen.thing)["thingName"] == seen.thing

    pg.kill()
    try:
        wait_for(
            lambda: tls_answer(hub, unseen.cert_file, unseen.key_file, unseen.thing) == "connack:3",
            what="a certificate never seen to be refused with 3 (MQTT 5: 0x88)",
        )
        assert tls_answer(hub, seen.cert_file, seen.key_file, seen.thing) == "connack:0"
    finally:
        pg.restart()
    wait_for(
        lambda: tls_answer(hub, unseen.cert_file, unseen.key_file, unseen.thing) == "connack:0",
        what="the hub to recover by itself once PostgreSQL is back",
    )


def test_a_certificate_revoked_while_no_change_was_heard_is_disconnected_after_the_copy(
    hub: DevHub, pg: pgserver.PgServer
) -> None:
    iot = hub.iot()
    device = hub.device(iot)
    sdk = Sdk311(hub, device, device.thing)
    try:
        sdk.connect()
        # Revoked behind the hub's back: no NOTIFY (as when the change lands while this
        # node's listener is away).
        trigger = "iot_certificates_notify"
        pg.psql(
            f"ALTER TABLE iot_certificates DISABLE TRIGGER {trigger}; "
            "UPDATE iot_certificates SET status = 'REVOKED' "
            f"WHERE certificate_id = '{device.certificate_id}'; "
            f"ALTER TABLE iot_certificates ENABLE TRIGGER {trigger}",
            as_hub=True,
        )
        assert sdk.interrupted.empty()
        # The listener loses PostgreSQL and, once it is back, copies the registry whole.
        pg.kill()
        pg.restart()
        sdk.interrupted.get(timeout=30)  # closed: the revocation was found in the copy
    finally:
        sdk.close()
    assert tls_answer(hub, device.cert_file, device.key_file, device.thing) == "connack:5"
