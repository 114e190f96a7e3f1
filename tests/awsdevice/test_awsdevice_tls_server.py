"""TLS out of the box: the hub serves MQTT over TLS by default, with a server certificate its
own CA signs for ``mqtt.tls_hosts`` (localhost, 127.0.0.1 and the host name by default),
kept in ``data/ca`` and made again when the hosts change or it nears its end; ``mqtt.tls =
false`` turns the listener off. Plus the server certificate module's rules on their own."""

from __future__ import annotations

import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from devhub import DevHub

from thinghub.config import ConfigError, load_settings
from thinghub.identity import server_cert
from thinghub.identity.ca import HubCA

pytestmark = pytest.mark.thinghub_only


def _names(path: Path) -> tuple[set[str], x509.Certificate]:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
    names.update(sans.get_values_for_type(x509.DNSName))
    return names, certificate


def _handshake(hub: DevHub, server_hostname: str) -> None:
    context = ssl.create_default_context(cafile=str(hub.ca_file))
    with (
        socket.create_connection((hub.host, hub.tls_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname),
    ):
        pass


def test_default_server_certificate_and_its_renewal(tmp_path: Path) -> None:
    data = tmp_path / "data"
    hub = DevHub(data)
    try:
        names, first = _names(data / "ca" / "server.pem")
        assert names == {"localhost", "127.0.0.1", socket.gethostname()}
        assert first.issuer == HubCA.load(data).certificate.subject
        _handshake(hub, "localhost")  # trusting only what `thinghub ca show` printed
        assert (data / "ca" / "server.key").stat().st_mode & 0o777 == 0o600
    finally:
        hub.stop()
    again = DevHub(data)  # same hosts: the same certificate
    try:
        assert _names(data / "ca" / "server.pem")[1].serial_number == first.serial_number
    finally:
        again.stop()
    moved = DevHub(data, MQTT_TLS_HOSTS="mqtt.example.net,10.9.8.7")
    try:
        names, renewed = _names(data / "ca" / "server.pem")
        assert names == {"mqtt.example.net", "10.9.8.7"}
        assert renewed.serial_number != first.serial_number
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(moved, "localhost")  # no longer one of its names
    finally:
        moved.stop()


def test_tls_can_be_turned_off(tmp_path: Path) -> None:
    hub = DevHub(tmp_path / "data", MQTT_TLS=False)
    try:
        assert hub.tls_port == 0
        assert not any("mqtts" in line for line in hub.output)
    finally:
        hub.stop()


def test_server_certificate_rules(tmp_path: Path) -> None:
    ca = HubCA.load_or_create(tmp_path)
    now = datetime.now(UTC)
    cert, key = server_cert.ensure(ca, tmp_path, ["localhost"], now=now)
    serial = _names(cert)[1].serial_number
    assert server_cert.ensure(ca, tmp_path, ["localhost"], now=now) == (cert, key)
    assert _names(cert)[1].serial_number == serial
    # Within RENEW_BEFORE of its end it is made again.
    late = now + server_cert.VALIDITY - server_cert.RENEW_BEFORE + timedelta(days=1)
    server_cert.ensure(ca, tmp_path, ["localhost"], now=late)
    assert _names(cert)[1].serial_number != serial
    # Signed by another CA (the data directory's CA was replaced): made again.
    serial = _names(cert)[1].serial_number
    other = HubCA.load_or_create(tmp_path / "other")
    server_cert.ensure(other, tmp_path, ["localhost"], now=now)
    assert _names(cert)[1].issuer == other.certificate.subject
    assert _names(cert)[1].serial_number != serial


def test_tls_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"tls_cert and mqtt\.tls_key"):
        load_settings(None, environ={"THINGHUB_MQTT_TLS_CERT": "/x.pem"})
    with pytest.raises(ConfigError, match="ports"):
        load_settings(None, environ={"THINGHUB_MQTT_TLS_PORT": "70000"})
    settings = load_settings(None, environ={"THINGHUB_MQTT_TLS": "false"})
    assert settings.mqtt.tls is False
    assert load_settings(None, environ={}).mqtt.tls_port == 8883
