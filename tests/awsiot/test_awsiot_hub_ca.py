"""The hub's CA: made in the data directory at the first start (key mode 0600), the same after
a restart (certificates issued before still verify), ``thinghub ca show`` prints it; and what
a restart keeps of the control plane's records. Hubs of their own, with settings of their own
(``[aws]`` endpoint_host, a control-plane rate limit)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import x509util
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes
from iothub import IotHub, refused

from thinghub.cli import main as cli_main
from thinghub.identity.ca import CAError, HubCA


def test_ca_is_made_once_and_survives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    hub = IotHub(data)
    try:
        ca_dir = data / "ca"
        assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600
        assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
        first_pem = (ca_dir / "ca.pem").read_text()
        ca = x509util.load(first_pem)
        assert ca.subject.rfc4514_string().startswith("O=ThingHub,CN=ThingHub CA ")
        lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
        assert lifetime.days >= 3650
        iot = hub.iot()
        issued = iot.create_keys_and_certificate(setAsActive=True)
        iot.create_thing(thingName="kept", attributePayload={"attributes": {"k": "v"}})
        iot.create_policy(
            policyName="kept",
            policyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}],
                }
            ),
        )
        iot.attach_policy(policyName="kept", target=issued["certificateArn"])
    finally:
        hub.stop()
    again = IotHub(data)
    try:
        assert (data / "ca" / "ca.pem").read_text() == first_pem
        iot = again.iot()
        described = iot.describe_certificate(certificateId=issued["certificateId"])
        certificate = x509util.load(described["certificateDescription"]["certificatePem"])
        certificate.verify_directly_issued_by(x509util.load(first_pem))
        newer = x509util.load(iot.create_keys_and_certificate()["certificatePem"])
        newer.verify_directly_issued_by(x509util.load(first_pem))
        assert iot.describe_thing(thingName="kept")["attributes"] == {"k": "v"}
        attached = iot.list_attached_policies(target=issued["certificateArn"])["policies"]
        assert [p["policyName"] for p in attached] == ["kept"]
    finally:
        again.stop()


def test_thinghub_ca_show(tmp_path: Path) -> None:
    data = tmp_path / "data"
    runner = CliRunner()
    missing = runner.invoke(cli_main, ["ca", "show", "--data-dir", str(data)])
    assert missing.exit_code != 0
    assert "the hub creates it at its first start" in missing.output
    IotHub(data).stop()
    shown = runner.invoke(cli_main, ["ca", "show", "--data-dir", str(data)])
    assert shown.exit_code == 0, shown.output
    certificate = x509util.load(shown.output)
    assert shown.output == (data / "ca" / "ca.pem").read_text()
    printed = runner.invoke(cli_main, ["ca", "show", "--fingerprint", "--data-dir", str(data)])
    assert printed.exit_code == 0, printed.output
    expected = ":".join(f"{b:02X}" for b in certificate.fingerprint(hashes.SHA256()))
    assert printed.output.strip() == f"SHA256 Fingerprint={expected}"


def test_a_key_without_its_certificate_is_replaced(tmp_path: Path) -> None:
    """What a crash during the first start leaves: nothing was issued from that key."""
    data = tmp_path / "data"
    (data / "ca").mkdir(parents=True)
    (data / "ca" / "ca.key").write_text("half-written")
    made = HubCA.load_or_create(data)
    assert HubCA.load(data).pem == made.pem


def test_a_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    HubCA.load_or_create(data)
    (data / "ca" / "ca.key").unlink()
    with pytest.raises(CAError, match="its key"):
        HubCA.load_or_create(data)
    other = tmp_path / "other"
    HubCA.load_or_create(other)
    (data / "ca" / "ca.key").write_bytes((other / "ca" / "ca.key").read_bytes())
    with pytest.raises(CAError, match="is not the key of"):
        HubCA.load(data)


def test_endpoint_host_and_rate_limit_settings(tmp_path: Path) -> None:
    hub = IotHub(
        tmp_path / "data",
        **{
            "aws.endpoint_host": "iot.example.internal",
            "aws.region": "eu-west-1",
            # One ListThings per account, then one per 100 s: the second call is refused.
            "api.aws_rate_limits": "ListThings=0.01",
        },
    )
    try:
        iot = hub.iot()
        assert iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"] == (
            "iot.example.internal"
        )
        created = iot.create_thing(thingName="here")
        assert created["thingArn"].startswith("arn:aws:iot:eu-west-1:")
        iot.list_things()
        refused("ThrottlingException", 400, iot.list_things)
        iot.describe_thing(thingName="here")  # other operations have their own budget
    finally:
        hub.stop()
