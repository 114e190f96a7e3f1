"""DescribeEndpoint: every endpoint type is this hub (MQTT, its TLS port and the HTTP APIs
share its host name)."""

from __future__ import annotations

from aiohttp import web

from ..aws.errors import AwsError
from .call import Call, Control

__all__ = ["ENDPOINT_TYPES", "describe_endpoint"]

#: the endpoint types AWS IoT answers (iot:Data, the legacy one, when none is named)
ENDPOINT_TYPES = frozenset({"iot:Data", "iot:Data-ATS", "iot:CredentialProvider", "iot:Jobs"})


def request_host(host_header: str | None) -> str:
    """The host a request was sent to, without its port (``[::1]:8080`` -> ``::1``)."""
    host = (host_header or "").strip()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


async def describe_endpoint(control: Control, call: Call) -> web.Response:
    kind = call.params.get("endpointType") or "iot:Data"
    if kind not in ENDPOINT_TYPES:
        raise AwsError.invalid(f"Endpoint type {kind} not recognized.")
    configured = control.ctx.settings.aws.endpoint_host
    host = configured or request_host(call.headers.get("host"))
    return call.ok({"endpointAddress": host})
