"""Alibaba device sign-in over MQTT (reference §3 "CONNECT fields"), as a pure decision.

The CONNECT of an Alibaba device carries::

    clientId = <id>|securemode=3,signmethod=hmacsha1,timestamp=<ms>|
    username = <deviceName>&<productKey>
    password = hex(HMAC_<signmethod>(deviceSecret, <content>))

where ``<content>`` is the name+value pairs of ``clientId`` (the ``<id>`` part), ``deviceName``,
``productKey`` and ``timestamp``, sorted by name and concatenated:
``"clientId" + id + "deviceName" + dn + "productKey" + pk + "timestamp" + ts``. ``clientId`` and
``timestamp`` are optional in the content; when present they must be the values of the clientId
(§3). The server cannot tell which optional fields a device signed, so it accepts any of the
combinations that the clientId allows (at most four), each compared in constant time.

Parsing choices where the reference is silent:

* The parameter list sits between the first and the second ``|`` and must end the clientId;
  a clientId without any ``|`` is read as a bare ``<id>`` with default parameters. Parameters
  are ``key=value`` separated by ``,``; unknown keys (``_v``, ``lan``, ``_ss``, ``gw``,
  ``ext``, seen in real clients, §3) are kept and ignored. A malformed list, a repeated key, or
  an ``<id>`` over 64 characters is "client identifier not valid" (0x85 / 3.1.1 rc 2).
* ``signmethod`` is case-insensitive, default ``hmacmd5``; the password's hex case is ignored
  (the official example is uppercase, most SDKs send lowercase).
* ``securemode`` may be absent, ``2`` (TLS) or ``3`` (TCP); it is recorded, not checked against
  the transport (the cloud does not document a refusal). Other modes (``-2`` registration-free,
  dynamic registration) are not supported and get "bad user name or password".
* The timestamp is not checked against the clock unless ``max_clock_skew_ms`` is given: the
  official SDK samples sign a fixed timestamp (``789`` in §3's example).

Answers (§3 "Bad credentials produce CONNACK 4 or 5"): wrong or unknown device, wrong password,
unsupported method: *bad user name or password* (MQTT 5 0x86, 3.1.1 rc 4). A device that is
disabled, after a correct signature: *not authorized* (0x87, rc 5). An unknown device and a
wrong password get the same answer and the same reason text, and the signature is computed
either way, so that answers and timing do not reveal which DeviceNames exist.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from ..mqtt.types import ConnackReturnCode, ReasonCode
from ..registry.models import Device, DeviceStatus

__all__ = [
    "MAX_CLIENT_ID_LENGTH",
    "ClientIdError",
    "DeviceIdentity",
    "ParsedClientId",
    "Refusal",
    "SignInAccepted",
    "SignInRefused",
    "SignInResult",
    "SignMethod",
    "build_credentials",
    "parse_client_id",
    "sign",
    "sign_content",
    "verify_sign_in",
]

# Reference §3: "<id> is at most 64 characters (MAC or SN)".
MAX_CLIENT_ID_LENGTH = 64
_SUPPORTED_SECURE_MODES = frozenset({"2", "3"})


class SignMethod(StrEnum):
    """``signmethod`` values (reference §3); ``hmacmd5`` is the default."""

    HMACMD5 = "hmacmd5"
    HMACSHA1 = "hmacsha1"
    HMACSHA256 = "hmacsha256"

    @property
    def digest(self) -> str:
        """The ``hashlib`` name of the digest."""
        return _DIGESTS[self]


_DIGESTS: dict[SignMethod, str] = {
    SignMethod.HMACMD5: "md5",
    SignMethod.HMACSHA1: "sha1",
    SignMethod.HMACSHA256: "sha256",
}


class ClientIdError(ValueError):
    """The clientId is not ``<id>|k=v,...|``."""


@dataclass(frozen=True, slots=True)
class ParsedClientId:
    device_client_id: str  # the <id> part, signed as "clientId"
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def sign_method(self) -> str:
        return self.params.get("signmethod", SignMethod.HMACMD5.value)

    @property
    def secure_mode(self) -> str | None:
        return self.params.get("securemode")

    @property
    def timestamp(self) -> str | None:
        return self.params.get("timestamp")


def parse_client_id(client_id: str) -> ParsedClientId:
    """Split ``<id>|k=v,k=v|`` (reference §3). Raises ``ClientIdError``."""
    if "|" not in client_id:
        device_id, params_text = client_id, ""
    else:
        parts = client_id.split("|")
        if len(parts) != 3 or parts[2] != "":
            raise ClientIdError("the clientId must be <id>|key=value,...| with nothing after")
        device_id, params_text = parts[0], parts[1]
    if len(device_id) > MAX_CLIENT_ID_LENGTH:
        raise ClientIdError(f"the <id> part is longer than {MAX_CLIENT_ID_LENGTH} characters")
    params: dict[str, str] = {}
    if params_text:
        for item in params_text.split(","):
            key, eq, value = item.partition("=")
            if not key or not eq:
                raise ClientIdError(f"clientId parameter {item!r} is not key=value")
            if key in params:
                raise ClientIdError(f"clientId parameter {key!r} appears twice")
            params[key] = value
    return ParsedClientId(device_id, params)


def sign_content(
    *,
    product_key: str,
    device_name: str,
    client_id: str | None = None,
    timestamp: str | None = None,
) -> str:
    """The signed string: present fields sorted by name, each name followed by its value
    (clientId < deviceName < productKey < timestamp: the order is fixed)."""
    content = f"deviceName{device_name}productKey{product_key}"
    if client_id is not None:
        content = f"clientId{client_id}{content}"
    if timestamp is not None:
        content = f"{content}timestamp{timestamp}"
    return content


def sign(
    device_secret: str,
    *,
    product_key: str,
    device_name: str,
    client_id: str | None = None,
    timestamp: str | None = None,
    sign_method: SignMethod | str = SignMethod.HMACMD5,
) -> str:
    """The password for these fields: lowercase hex HMAC keyed with the DeviceSecret."""
    method = sign_method if type(sign_method) is SignMethod else SignMethod(sign_method.lower())
    content = sign_content(
        product_key=product_key, device_name=device_name, client_id=client_id, timestamp=timestamp
    )
    # hmac.digest: OpenSSL's one-shot HMAC, without hmac.HMAC's Python object per call (every
    # device sign-in computes one).
    return hmac.digest(device_secret.encode(), content.encode(), _DIGESTS[method]).hex()


def build_credentials(
    product_key: str,
    device_name: str,
    device_secret: str,
    *,
    client_id: str | None = None,
    timestamp: str | None = None,
    sign_method: SignMethod | str = SignMethod.HMACSHA256,
    secure_mode: int = 3,
) -> tuple[str, str, str]:
    """(clientId, username, password) for a device, as the official SDKs build them; for
    demos and the command line. ``client_id`` defaults to ``${pk}.${dn}`` (§3)."""
    device_id = client_id if client_id is not None else f"{product_key}.{device_name}"
    method = SignMethod(str(sign_method).lower())
    params = f"securemode={secure_mode},signmethod={method.value}"
    if timestamp is not None:
        params += f",timestamp={timestamp}"
    password = sign(
        device_secret,
        product_key=product_key,
        device_name=device_name,
        client_id=device_id,
        timestamp=timestamp,
        sign_method=method,
    )
    return f"{device_id}|{params}|", f"{device_name}&{product_key}", password


class Refusal(StrEnum):
    BAD_CREDENTIALS = "bad_credentials"
    NOT_AUTHORIZED = "not_authorized"
    BAD_CLIENT_ID = "bad_client_id"


_CODES: dict[Refusal, tuple[ReasonCode, ConnackReturnCode]] = {
    Refusal.BAD_CREDENTIALS: (
        ReasonCode.BAD_USER_NAME_OR_PASSWORD,
        ConnackReturnCode.BAD_USER_NAME_OR_PASSWORD,
    ),
    Refusal.NOT_AUTHORIZED: (ReasonCode.NOT_AUTHORIZED, ConnackReturnCode.NOT_AUTHORIZED),
    Refusal.BAD_CLIENT_ID: (
        ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
        ConnackReturnCode.IDENTIFIER_REJECTED,
    ),
}


def device_client_id(product_key: str, device_name: str) -> str:
    """The broker session's client id of a signed-in device: one session and one connection
    per device (reference §3: a new connection with the same pk+dn takes over). A ProductKey is
    alphanumeric, so the first "." separates it from the DeviceName. The HTTP API reaches a
    device with ``broker.session_of(account_id, device_client_id(pk, dn))``."""
    return f"{product_key}.{device_name}"


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """Who signed in. ``(product_key, device_name)`` is the device's one-connection key
    (§3 "A new connection with the same pk+dn ... kicks the old one")."""

    account_id: str
    instance_id: str | None
    product_key: str
    device_name: str
    iot_id: str
    client_id: ParsedClientId

    @property
    def device_key(self) -> tuple[str, str]:
        return (self.product_key, self.device_name)

    @property
    def session_client_id(self) -> str:
        """The MQTT client id the broker keys this device's session by (see
        ``device_client_id``), whatever clientId string the device sent."""
        return device_client_id(self.product_key, self.device_name)

    @property
    def ext_rrpc(self) -> bool:
        """``ext=1`` in the clientId: the device takes custom-topic RRPC (reference §2.1)."""
        return self.client_id.params.get("ext") == "1"


@dataclass(frozen=True, slots=True)
class SignInAccepted:
    identity: DeviceIdentity
    device: Device
    allowed: bool = True


@dataclass(frozen=True, slots=True)
class SignInRefused:
    """``reason`` may be sent to the client (MQTT 5 Reason String); ``detail`` is for logs."""

    refusal: Refusal
    reason: str
    detail: str = ""
    allowed: bool = False

    @property
    def reason_code(self) -> ReasonCode:
        """The MQTT 5 CONNACK reason code."""
        return _CODES[self.refusal][0]

    @property
    def return_code(self) -> ConnackReturnCode:
        """The MQTT 3.1.1 CONNACK return code."""
        return _CODES[self.refusal][1]


SignInResult = SignInAccepted | SignInRefused

_BAD = "bad user name or password"


def _bad(detail: str) -> SignInRefused:
    return SignInRefused(Refusal.BAD_CREDENTIALS, _BAD, detail)


# (sign with the clientId, sign with the timestamp), in the order they are tried.
_VARIANTS = ((True, False), (False, False))
_VARIANTS_WITH_TIMESTAMP = ((True, True), (True, False), (False, True), (False, False))


def verify_sign_in(
    client_id: str,
    username: str | None,
    password: bytes | str | None,
    lookup: Callable[[str, str], Device | None],
    *,
    now_ms: int | None = None,
    max_clock_skew_ms: int | None = None,
) -> SignInResult:
    """Decide a CONNECT by the Alibaba device scheme.

    ``lookup(product_key, device_name)`` returns the device (``Registry.lookup_device``).
    ``max_clock_skew_ms`` (with ``now_ms``) additionally requires a ``timestamp`` parameter
    within that distance of now.
    """
    try:
        parsed = parse_client_id(client_id)
    except ClientIdError as exc:
        return SignInRefused(Refusal.BAD_CLIENT_ID, "client identifier not valid", str(exc))

    mode = parsed.secure_mode
    if mode is not None and mode not in _SUPPORTED_SECURE_MODES:
        return _bad(f"securemode={mode} is not supported (2 TLS or 3 TCP)")
    try:
        method = SignMethod(parsed.sign_method.lower())
    except ValueError:
        return _bad(f"signmethod={parsed.sign_method} is not supported")
    timestamp = parsed.timestamp
    if max_clock_skew_ms is not None:
        if timestamp is None or not timestamp.isdigit() or not timestamp.isascii():
            return _bad("the clientId has no millisecond timestamp")
        now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
        if abs(int(timestamp) - now) > max_clock_skew_ms:
            return _bad("the clientId timestamp is too far from the hub's clock")

    if not username:
        return _bad("no user name")
    device_name, amp, product_key = username.partition("&")
    if not amp or not device_name or not product_key or "&" in product_key:
        return _bad("the user name is not deviceName&productKey")
    if password is None:
        return _bad("no password")
    if isinstance(password, bytes):
        try:
            given = password.decode("ascii")
        except UnicodeDecodeError:
            return _bad("the password is not hex text")
    else:
        given = password
    given_bytes = given.lower().encode("ascii", "replace")

    device = lookup(product_key, device_name)
    # Without a device, sign with a throwaway secret: same work, same answer.
    secret = device.device_secret if device is not None else secrets.token_hex(16)
    # The variants devices sign, the SDKs' own first. A right password stops at its variant;
    # a wrong one (or an unknown device) costs every variant, so a refusal takes the same
    # time whatever it was that did not match. Which variant matched tells the device only
    # what it already knows.
    matched = False
    variants = _VARIANTS_WITH_TIMESTAMP if timestamp is not None else _VARIANTS
    for with_client, with_time in variants:
        expected = sign(
            secret,
            product_key=product_key,
            device_name=device_name,
            client_id=parsed.device_client_id if with_client else None,
            timestamp=timestamp if with_time else None,
            sign_method=method,
        )
        if hmac.compare_digest(expected.encode(), given_bytes):
            matched = True
            break
    if device is None:
        return _bad(f"no device {device_name!r} in product {product_key!r}")
    if not matched:
        return _bad(f"wrong password for device {device_name!r} of product {product_key!r}")
    if device.status is DeviceStatus.DISABLE:
        return SignInRefused(
            Refusal.NOT_AUTHORIZED,
            "the device is disabled",
            f"device {device_name!r} of product {product_key!r} is disabled",
        )
    identity = DeviceIdentity(
        account_id=device.account_id,
        instance_id=device.instance_id,
        product_key=device.product_key,
        device_name=device.device_name,
        iot_id=device.iot_id,
        client_id=parsed,
    )
    return SignInAccepted(identity, device)
