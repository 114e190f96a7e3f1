"""The cloud SDKs' clients, pointed at a test hub and signed with its root key: each the way a
user's own code builds it, with only the endpoint and the credentials changed (README,
*Calling the cloud APIs*). Each SDK is imported when its client is asked for; one that is not
installed raises ``MissingSDK`` naming the package to install (the pytest fixtures skip the
test with that message)."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = [
    "ALIYUN_REGION",
    "MissingSDK",
    "alibabacloud_iot",
    "aliyun_iot",
    "aws_iot",
    "aws_iot_data",
    "require",
]

#: the region the Alibaba clients sign for: any is accepted, as on the AWS side
ALIYUN_REGION = "cn-shanghai"


class MissingSDK(ImportError):
    """A client's SDK is not installed; the message says which package to install."""


def require(module: str, package: str, what: str) -> ModuleType:
    """``import module``, or MissingSDK telling to ``pip install package`` for ``what``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingSDK(f"{what} needs {package}: pip install {package}") from error


def aws_iot_data(http_url: str, key_id: str, secret: str, region: str) -> Any:
    """boto3's ``iot-data`` client (Publish, shadows, retained messages, connections). No
    retries: a test sees each answer as the hub gave it."""
    return _boto3_client("iot-data", http_url, key_id, secret, region, "aws_iot_data")


def aws_iot(http_url: str, key_id: str, secret: str, region: str) -> Any:
    """boto3's ``iot`` client: the AWS IoT control plane (things, certificates, policies)."""
    return _boto3_client("iot", http_url, key_id, secret, region, "aws_iot")


def _boto3_client(
    service: str, http_url: str, key_id: str, secret: str, region: str, what: str
) -> Any:
    boto3 = require("boto3", "boto3", what)
    config = require("botocore.config", "boto3", what)
    return boto3.client(
        service,
        endpoint_url=http_url,
        region_name=region,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=config.Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )


def aliyun_iot(host_port: str, key_id: str, secret: str) -> Any:
    """aliyun-python-sdk-core's ``AcsClient``, with the hub as the endpoint of the ``Iot``
    product: requests of aliyun-python-sdk-iot (``PubRequest()`` ...) reach the hub without
    ``set_endpoint``. Plain HTTP (the SDK's default), no retries."""
    core = require("aliyunsdkcore.client", "aliyun-python-sdk-core", "aliyun_iot")
    client = core.AcsClient(key_id, secret, ALIYUN_REGION, auto_retry=False)
    client.add_endpoint(ALIYUN_REGION, "Iot", host_port)
    return client


def alibabacloud_iot(host_port: str, key_id: str, secret: str) -> Any:
    """alibabacloud-iot20180120's ``Client`` (the Tea SDK, signature V3), over plain HTTP."""
    package = "alibabacloud-iot20180120"
    iot = require("alibabacloud_iot20180120.client", package, "alibabacloud_iot")
    models = require("alibabacloud_tea_openapi.models", package, "alibabacloud_iot")
    config = models.Config(
        access_key_id=key_id,
        access_key_secret=secret,
        endpoint=host_port,
        protocol="http",
        region_id=ALIYUN_REGION,
    )
    return iot.Client(config)
