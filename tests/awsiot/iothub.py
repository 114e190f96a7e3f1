"""A real hub for the AWS IoT control-plane tests: ``thinghub.app.Hub`` (as ``thinghub serve``
wires it: registry writer thread, the hub's CA in the data directory, both AWS dialects on the
one HTTP port) on its own event loop thread, on loopback with free ports, driven with boto3's
``iot`` and ``iot-data`` clients unchanged but for ``endpoint_url`` and the keys.

``IotHub(data_dir, **overrides)``: ``iot(key)`` / ``iot_data(key)`` boto3 clients (no retries:
each call is one request), ``tenant()`` a fresh account with its own key and ``iot`` client,
``raw(...)`` a botocore-signed request boto3 would not send, ``on_loop(fn)`` to read hub state
where it lives, ``stop()``."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from thinghub.identity.service import IdentityService
from thinghub.registry.models import AccessKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scenarios"))
from loophub import LoopHub

KEY_ID, SECRET = "AKIAAWSIOTCONTROLTEST", "aws-iot-control-plane-tests-secret-0123"
TIMEOUT = 10.0
NO_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 1}, read_timeout=TIMEOUT)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class IotHub(LoopHub):
    def __init__(self, data_dir: Path, **overrides: Any) -> None:
        """``overrides``: settings by dotted key (``"aws.endpoint_host"``)."""
        self._pool = urllib3.PoolManager()
        super().__init__(
            data_dir, (KEY_ID, SECRET), overrides, thread_name="iothub-loop", timeout=TIMEOUT
        )
        assert self.hub.registry is not None
        root_key = self.hub.registry.lookup_access_key(KEY_ID)
        assert root_key is not None
        self.root_key: AccessKey = root_key

    def closing(self) -> None:
        self._pool.clear()

    @property
    def identity(self) -> IdentityService:
        assert self.hub.identity is not None
        return self.hub.identity

    # --- clients ----------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def iot(self, key: AccessKey | None = None, *, secret: str | None = None) -> Any:
        key = key or self.root_key
        return boto3.client(
            "iot",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=key.access_key_id,
            aws_secret_access_key=secret or key.secret,
            config=NO_RETRIES,
        )

    def iot_data(self, key: AccessKey | None = None) -> Any:
        key = key or self.root_key
        return boto3.client(
            "iot-data",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=key.access_key_id,
            aws_secret_access_key=key.secret,
            config=NO_RETRIES,
        )

    def tenant(self) -> tuple[AccessKey, Any]:
        """A new account with its own key, and an ``iot`` client for it."""
        registry = self.hub.registry
        assert registry is not None
        account = registry.create_account(f"tenant-{uuid.uuid4().hex[:8]}")
        key = registry.create_access_key(account.account_id)
        return key, self.iot(key)

    def raw(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        key: AccessKey | None = None,
        service: str = "iot",
    ) -> RawResponse:
        """``method target`` signed by botocore's own SigV4Auth for ``service``, without
        boto3's serializer (wrong verbs, odd paths, oversized bodies)."""
        key = key or self.root_key
        url = self.endpoint + target
        request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
        request.headers["Host"] = urlsplit(url).netloc
        signer = SigV4Auth(Credentials(key.access_key_id, key.secret), service, "us-east-1")
        request.context["timestamp"] = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        signer.add_auth(request)
        response = self._pool.urlopen(
            method,
            url,
            body=body,
            headers=dict(request.headers.items()),
            retries=False,
            redirect=False,
        )
        return RawResponse(
            response.status, {k.lower(): v for k, v in response.headers.items()}, response.data
        )


def refused(code: str, status: int, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)`` raises botocore's ClientError with this code and HTTP status
    (the modelled exception class, when the model has the shape); its error response."""
    from botocore.exceptions import ClientError

    try:
        call(*args, **kwargs)
    except ClientError as error:
        response = error.response
        assert response["Error"]["Code"] == code, response["Error"]
        assert response["ResponseMetadata"]["HTTPStatusCode"] == status, response
        return response
    raise AssertionError(f"{getattr(call, '__name__', call)} succeeded; expected {code}")
