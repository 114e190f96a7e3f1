"""Every error the Alibaba RPC dialect answers, in one place.

Two families (reference ``alibaba-iot-api.md`` §1.4 and §2 "Response envelope"):

* **Gateway errors** (:class:`GatewayError`, from ``signing``): the POP gateway's 4xx answers,
  ``{RequestId, HostId, Code, Message}``: signatures, keys, timestamps, nonces
  (``signing.verify``), and here ``Missing{Param}`` for a required parameter that is absent,
  ``InvalidApi.NotFound`` for an unknown Action or Version, ``Throttling.User`` past the rate
  limit.
* **Business errors** (:class:`ApiError`): HTTP 200 with ``Success: false``, ``Code`` and
  ``ErrorMessage`` (§2.5). Registry errors carry their codes already and are rendered the same
  way (:func:`from_registry`).

Codes the reference does not list (§2.5 "Not findable", §6) are ThingHub's choices, always
taken from the published error-code list ([D:87387]) so that a client's table of codes knows
them; each is marked "choice" below with the reason.
"""

from __future__ import annotations

from ...registry.errors import RegistryError
from .signing import GatewayError

__all__ = [
    "ApiError",
    "GatewayError",
    "from_registry",
    "internal_error",
    "invalid_api",
    "missing",
    "request_too_large",
    "throttled",
]


class ApiError(Exception):
    """A business error: HTTP 200, ``Success: false``, ``Code``, ``ErrorMessage``.

    ``fields`` are extra response fields sent beside them (RRpc's ``RrpcCode``/``MessageId``).
    """

    def __init__(self, code: str, message: str, **fields: object) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fields = fields


def from_registry(error: RegistryError) -> ApiError:
    return ApiError(error.code, error.message)


# --- business codes (reference §2.5; [D:87387]) --------------------------------------------

INVALID_PARAMETER = "iot.common.InvalidFormattedParameter"
NULL_TOPIC_NAME = "iot.messagebroker.NullTopicName"
INVALID_TOPIC_NAME = "iot.messagebroker.InvalidFormattedTopicName"
NULL_MESSAGE_CONTENT = "iot.messagebroker.NullMessageContent"
NOT_BASE64 = "iot.messagebroker.MessageContentIsNotBase64Encode"
INVALID_TIMEOUT = "iot.messagebroker.InvalidTimeoutValue"
RRPC_OFFLINE = "iot.messagebroker.OFFLINE"
RRPC_TIMEOUT = "iot.messagebroker.TIMEOUT"
NONE_DEVICE_NAME_ELEMENT = "iot.device.NoneDeviceNameElement"
# choice: BatchPub with more than 100 DeviceName.N (reference §2.1 gives the limit, no code);
# [D:87387] "Number of devices requested exceeds the maximum limit".
DEVICE_COUNT_EXCEEDED = "iot.device.DeviceCountExceeded"
# choice: a Pub topic that exists but that no SUB/ALL category of the product covers, and a
# system or foreign topic (§2.5 "Not findable: which code Pub returns ... a topic without
# permission"). The topic is not one the API may publish to, so the topic code, with a message
# saying exactly why.
TOPIC_NOT_ALLOWED = INVALID_TOPIC_NAME
# choice: a retained message past the account's or the hub's retained-message limits (ours).
QUOTA_EXCEEDED = "thinghub.RetainedQuotaExceeded"
# choice: MessageContent over 256 KB (64 KB for PubBroadcast) after decoding (§2.1 gives the
# limits, no code).
MESSAGE_TOO_LARGE = INVALID_PARAMETER


# --- gateway errors (reference §1.4) ---------------------------------------------------------


def missing(name: str) -> GatewayError:
    """``Missing{Param}``, 400: a required parameter (marked * in §2) is absent or empty."""
    return GatewayError.missing(name)


def invalid_api(action: str | None, version: str | None) -> GatewayError:
    """``InvalidApi.NotFound``, 404 (§1.4): no such Action in this Version."""
    return GatewayError(
        "InvalidApi.NotFound",
        404,
        f"Specified api is not found, please check your url and method. "
        f"(Action={action}, Version={version})",
    )


def throttled() -> GatewayError:
    """``Throttling.User``, 400 (§1.4): the account's quota for this action is used up."""
    return GatewayError("Throttling.User", 400, "Request was denied due to user flow control.")


def request_too_large(detail: str) -> GatewayError:
    """choice: a body larger than the HTTP server accepts. The gateway has no documented code;
    413 with the form of the other gateway errors, so both SDKs raise with a clear message."""
    return GatewayError("RequestEntityTooLarge", 413, f"The request body is too large. {detail}")


def internal_error() -> GatewayError:
    """An unexpected failure inside the hub (a bug): 500, as the gateway's ``InternalError``."""
    return GatewayError(
        "InternalError",
        500,
        "The request processing has failed due to some unknown error, exception or failure.",
    )
