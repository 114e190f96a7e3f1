"""A real ``thinghub serve`` for the AWS IoT device tests, and the things a user makes with
boto3 before a device can sign in.

``DevHub(data_dir, **settings)`` starts the hub (settings as ``THINGHUB_<KEY>``; TLS on a free
port), reads its ready line (``mqtts=`` included), and writes the hub's CA certificate to a
file the way a user would (``thinghub ca show > ca.pem``). ``iot()`` / ``iot_data()`` are
boto3 clients of the root account; ``tenant()`` makes an account and key with the command
line. ``device(iot, policy, ...)`` creates a thing, a key pair and certificate
(``CreateKeysAndCertificate``), a policy, and attaches them, returning a :class:`Device` with
its PEM files."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from click.testing import CliRunner

from thinghub.cli import main as cli_main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scenarios"))
from hubprocess import HubProcess

ROOT = Path(__file__).resolve().parents[2]
KEY_ID, SECRET = "AKIAAWSDEVICETESTS01", "aws-device-tests-secret-0123456789abcdef"
REGION = "us-east-1"
TIMEOUT = 15.0
NO_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 1}, read_timeout=TIMEOUT)


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(action: Any, resource: Any = "*") -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource}


def deny(action: Any, resource: Any = "*") -> dict[str, Any]:
    return {"Effect": "Deny", "Action": action, "Resource": resource}


EVERYTHING = policy(allow("iot:*"))


@dataclass
class Device:
    thing: str
    certificate_id: str
    certificate_arn: str
    cert_file: Path
    key_file: Path
    policy_name: str


class DevHub(HubProcess):
    def __init__(self, data_dir: Path, **settings: Any) -> None:
        self.files = data_dir.parent / f"{data_dir.name}-files"
        self.files.mkdir(parents=True, exist_ok=True)
        super().__init__(data_dir, (KEY_ID, SECRET), settings=settings, timeout=TIMEOUT)
        self.port = self.mqtt_port
        ca = subprocess.run(
            [str(ROOT / ".venv/bin/thinghub"), "ca", "show", "--data-dir", str(data_dir)],
            capture_output=True, text=True, check=True, timeout=TIMEOUT,
        )  # fmt: skip
        self.ca_file = self.files / "ca.pem"
        self.ca_file.write_text(ca.stdout)

    # ------------------------------------------------------------------ clients

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def iot(self, key_id: str = KEY_ID, secret: str = SECRET) -> Any:
        return boto3.client(
            "iot", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=key_id,
            aws_secret_access_key=secret, config=NO_RETRIES,
        )  # fmt: skip

    def iot_data(self, key_id: str = KEY_ID, secret: str = SECRET) -> Any:
        return boto3.client(
            "iot-data", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=key_id, aws_secret_access_key=secret, config=NO_RETRIES,
        )  # fmt: skip

    def cli(self, *args: str) -> Any:
        result = CliRunner().invoke(cli_main, [*args, "--data-dir", str(self.data_dir), "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    def tenant(self) -> tuple[str, str, Any]:
        """A new account: its key id, secret, and an ``iot`` client acting in it."""
        key = self.cli("account", "create", f"tenant-{uuid.uuid4().hex[:8]}")[0]
        return key["access_key_id"], key["secret"], self.iot(key["access_key_id"], key["secret"])

    # ------------------------------------------------------------------ what a user makes

    def device(
        self,
        iot: Any,
        document: str = EVERYTHING,
        *,
        thing: str | None = None,
        attach_thing: bool = True,
        attributes: dict[str, str] | None = None,
    ) -> Device:
        name = thing or f"thing-{uuid.uuid4().hex[:10]}"
        payload = {"attributes": attributes} if attributes else {}
        iot.create_thing(thingName=name, attributePayload=payload)
        created = iot.create_keys_and_certificate(setAsActive=True)
        cert_file = self.files / f"{name}.cert.pem"
        key_file = self.files / f"{name}.key.pem"
        cert_file.write_text(created["certificatePem"])
        key_file.write_text(created["keyPair"]["PrivateKey"])
        policy_name = f"policy-{uuid.uuid4().hex[:10]}"
        iot.create_policy(policyName=policy_name, policyDocument=document)
        iot.attach_policy(policyName=policy_name, target=created["certificateArn"])
        if attach_thing:
            iot.attach_thing_principal(thingName=name, principal=created["certificateArn"])
        return Device(
            name,
            created["certificateId"],
            created["certificateArn"],
            cert_file,
            key_file,
            policy_name,
        )


def wait_for(condition: Callable[[], Any], timeout: float = TIMEOUT, what: str = "it") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
