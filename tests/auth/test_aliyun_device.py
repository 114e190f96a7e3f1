"""thinghub.auth.aliyun_device: the Alibaba device sign-in (reference §3).

Expected passwords are computed here the way the Alibaba device SDK docs describe (HMAC of the
sorted name+value pairs keyed with the DeviceSecret, hex), with ``hmac`` directly, not with the
module under test.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from thinghub.auth.aliyun_device import (
    ClientIdError,
    Refusal,
    SignInAccepted,
    SignInRefused,
    build_credentials,
    parse_client_id,
    sign,
    sign_content,
    verify_sign_in,
)
from thinghub.mqtt.types import ConnackReturnCode, ReasonCode
from thinghub.registry import Device, DeviceStatus, Registry, RegistryStore

PK = "a1BwAGVxxxx"
DN = "device1"
SECRET = "tXHf4ezGEHcwdyMwoCDHGBmk9aviabcd"


def make_device(
    status: DeviceStatus = DeviceStatus.OFFLINE, pk: str = PK, dn: str = DN, secret: str = SECRET
) -> Device:
    return Device(
        iot_id="CqXL5h5ysRTA4NxjABjj0010fa",
        product_key=pk,
        device_name=dn,
        device_secret=secret,
        nickname="",
        status=status,
        account_id="acct-1",
        instance_id=None,
        created_at=1,
        activated_at=None,
        last_online_at=None,
        status_changed_at=1,
    )


def lookup_for(*devices: Device):  # type: ignore[no-untyped-def]
    table = {(d.product_key, d.device_name): d for d in devices}
    calls: list[tuple[str, str]] = []

    def lookup(pk: str, dn: str) -> Device | None:
        calls.append((pk, dn))
        return table.get((pk, dn))

    lookup.calls = calls  # type: ignore[attr-defined]
    return lookup


def doc_password(secret: str, algo: str, **fields: str) -> str:
    """Reference §3: sort the present fields by name, concatenate name+value, HMAC, hex."""
    content = "".join(name + fields[name] for name in sorted(fields))
    digest = {"hmacmd5": hashlib.md5, "hmacsha1": hashlib.sha1, "hmacsha256": hashlib.sha256}
    return hmac.new(secret.encode(), content.encode(), digest[algo]).hexdigest()


def test_official_worked_example() -> None:
    """Reference §3: id 12345, device ``device``, pk ``pk``, ts 789, secret ``secret``."""
    device = make_device(pk="pk", dn="device", secret="secret")
    result = verify_sign_in(
        "12345|securemode=3,signmethod=hmacsha1,timestamp=789|",
        "device&pk",
        b"FAFD82A3D602B37FB0FA8B7892F24A477F851A14",
        lookup_for(device),
    )
    assert isinstance(result, SignInAccepted)
    assert result.allowed
    assert result.identity.device_key == ("pk", "device")
    assert result.identity.client_id.device_client_id == "12345"
    assert result.identity.client_id.secure_mode == "3"
    assert (
        sign(
            "secret",
            product_key="pk",
            device_name="device",
            client_id="12345",
            timestamp="789",
            sign_method="hmacsha1",
        )
        == "FAFD82A3D602B37FB0FA8B7892F24A477F851A14".lower()
    )


@pytest.mark.parametrize("algo", ["hmacmd5", "hmacsha1", "hmacsha256"])
@pytest.mark.parametrize("signed", ["all", "no_client", "no_timestamp", "neither"])
def test_every_method_and_optional_field_combination(algo: str, signed: str) -> None:
    client = f"{PK}.{DN}"
    fields = {"clientId": client, "deviceName": DN, "productKey": PK, "timestamp": "1700000000000"}
    if signed in ("no_client", "neither"):
        del fields["clientId"]
    if signed in ("no_timestamp", "neither"):
        del fields["timestamp"]
    password = doc_password(SECRET, algo, **fields)
    client_id = f"{client}|securemode=2,signmethod={algo},timestamp=1700000000000|"
    result = verify_sign_in(client_id, f"{DN}&{PK}", password.encode(), lookup_for(make_device()))
    assert isinstance(result, SignInAccepted), result
    assert result.identity.account_id == "acct-1"
    assert result.identity.iot_id == "CqXL5h5ysRTA4NxjABjj0010fa"


def test_default_sign_method_is_hmacmd5_and_case_is_ignored() -> None:
    password = doc_password(SECRET, "hmacmd5", clientId="abc", deviceName=DN, productKey=PK)
    lookup = lookup_for(make_device())
    for client_id in ("abc|securemode=3|", "abc||", "abc"):
        result = verify_sign_in(client_id, f"{DN}&{PK}", password.upper(), lookup)
        assert isinstance(result, SignInAccepted), client_id
    sha = doc_password(SECRET, "hmacsha256", clientId="abc", deviceName=DN, productKey=PK)
    result = verify_sign_in("abc|signmethod=HmacSHA256|", f"{DN}&{PK}", sha, lookup)
    assert isinstance(result, SignInAccepted)


def test_extra_client_params_are_kept() -> None:
    password = doc_password(SECRET, "hmacsha1", clientId="id1", deviceName=DN, productKey=PK)
    client_id = "id1|securemode=3,signmethod=hmacsha1,_v=sdk-c-4.0,lan=C,ext=1,gw=0|"
    result = verify_sign_in(client_id, f"{DN}&{PK}", password, lookup_for(make_device()))
    assert isinstance(result, SignInAccepted)
    assert result.identity.ext_rrpc
    assert result.identity.client_id.params["_v"] == "sdk-c-4.0"


def refused(result: SignInAccepted | SignInRefused) -> SignInRefused:
    assert isinstance(result, SignInRefused), result
    assert not result.allowed
    return result


def assert_bad_credentials(result: SignInAccepted | SignInRefused) -> None:
    refusal = refused(result)
    assert refusal.refusal is Refusal.BAD_CREDENTIALS
    assert refusal.reason_code is ReasonCode.BAD_USER_NAME_OR_PASSWORD  # 0x86
    assert refusal.return_code is ConnackReturnCode.BAD_USER_NAME_OR_PASSWORD  # rc 4
    assert refusal.reason == "bad user name or password"


GOOD_CLIENT = "id1|securemode=3,signmethod=hmacsha1,timestamp=42|"
GOOD_PASSWORD = doc_password(
    SECRET, "hmacsha1", clientId="id1", deviceName=DN, productKey=PK, timestamp="42"
)


def test_good_baseline() -> None:
    result = verify_sign_in(GOOD_CLIENT, f"{DN}&{PK}", GOOD_PASSWORD, lookup_for(make_device()))
    assert isinstance(result, SignInAccepted)


@pytest.mark.parametrize(
    ("client_id", "username", "password"),
    [
        # wrong password / wrong secret / tampered fields
        (GOOD_CLIENT, f"{DN}&{PK}", "0" * 40),
        (
            GOOD_CLIENT,
            f"{DN}&{PK}",
            doc_password("other", "hmacsha1", deviceName=DN, productKey=PK),
        ),
        ("id2|securemode=3,signmethod=hmacsha1,timestamp=42|", f"{DN}&{PK}", GOOD_PASSWORD),
        ("id1|securemode=3,signmethod=hmacsha1,timestamp=43|", f"{DN}&{PK}", GOOD_PASSWORD),
        ("id1|securemode=3,signmethod=hmacmd5,timestamp=42|", f"{DN}&{PK}", GOOD_PASSWORD),
        (GOOD_CLIENT, f"{DN}&{PK}", ""),
        (GOOD_CLIENT, f"{DN}&{PK}", None),
        (GOOD_CLIENT, f"{DN}&{PK}", b"\xff\xfe"),
        (GOOD_CLIENT, f"{DN}&{PK}", GOOD_PASSWORD + "00"),
        # unknown device or product; malformed username
        (GOOD_CLIENT, f"device2&{PK}", GOOD_PASSWORD),
        (GOOD_CLIENT, f"{DN}&a1Otherxxxx", GOOD_PASSWORD),
        (GOOD_CLIENT, None, GOOD_PASSWORD),
        (GOOD_CLIENT, "", GOOD_PASSWORD),
        (GOOD_CLIENT, DN, GOOD_PASSWORD),
        (GOOD_CLIENT, f"{PK}&{DN}", GOOD_PASSWORD),
        (GOOD_CLIENT, f"&{PK}", GOOD_PASSWORD),
        (GOOD_CLIENT, f"{DN}&", GOOD_PASSWORD),
        (GOOD_CLIENT, f"{DN}&{PK}&x", GOOD_PASSWORD),
        # unsupported modes and methods
        ("id1|securemode=-2,authType=connwl|", f"{DN}&{PK}", GOOD_PASSWORD),
        ("id1|securemode=1,signmethod=hmacsha1,timestamp=42|", f"{DN}&{PK}", GOOD_PASSWORD),
        ("id1|securemode=3,signmethod=sha1,timestamp=42|", f"{DN}&{PK}", GOOD_PASSWORD),
    ],
)
def test_bad_credentials(
    client_id: str, username: str | None, password: str | bytes | None
) -> None:
    result = verify_sign_in(client_id, username, password, lookup_for(make_device()))
    assert_bad_credentials(result)


def test_unknown_device_and_wrong_password_look_the_same() -> None:
    lookup = lookup_for(make_device())
    unknown = refused(verify_sign_in(GOOD_CLIENT, f"nobody&{PK}", GOOD_PASSWORD, lookup))
    wrong = refused(verify_sign_in(GOOD_CLIENT, f"{DN}&{PK}", "ab" * 20, lookup))
    assert (unknown.reason_code, unknown.reason) == (wrong.reason_code, wrong.reason)
    assert unknown.detail != wrong.detail  # the log still says which


def test_disabled_device_is_not_authorized_after_a_good_signature() -> None:
    lookup = lookup_for(make_device(DeviceStatus.DISABLE))
    refusal = refused(verify_sign_in(GOOD_CLIENT, f"{DN}&{PK}", GOOD_PASSWORD, lookup))
    assert refusal.refusal is Refusal.NOT_AUTHORIZED
    assert refusal.reason_code is ReasonCode.NOT_AUTHORIZED  # 0x87
    assert refusal.return_code is ConnackReturnCode.NOT_AUTHORIZED  # rc 5
    # A wrong password for a disabled device says nothing about it being disabled.
    assert_bad_credentials(verify_sign_in(GOOD_CLIENT, f"{DN}&{PK}", "00" * 20, lookup))


@pytest.mark.parametrize(
    "client_id",
    [
        "id1|securemode=3",  # no closing pipe
        "id1|securemode=3|extra",
        "id1|securemode=3|x|",
        "id1|securemode|",
        "id1|=3|",
        "id1|securemode=3,,signmethod=hmacsha1|",
        "id1|securemode=3,securemode=2|",
        "x" * 65 + "|securemode=3|",
    ],
)
def test_malformed_client_id(client_id: str) -> None:
    refusal = refused(verify_sign_in(client_id, f"{DN}&{PK}", GOOD_PASSWORD, lookup_for()))
    assert refusal.refusal is Refusal.BAD_CLIENT_ID
    assert refusal.reason_code is ReasonCode.CLIENT_IDENTIFIER_NOT_VALID
    assert refusal.return_code is ConnackReturnCode.IDENTIFIER_REJECTED
    with pytest.raises(ClientIdError):
        parse_client_id(client_id)


def test_parse_client_id() -> None:
    parsed = parse_client_id("a.b|securemode=2,signmethod=hmacsha256,timestamp=1,empty=|")
    assert parsed.device_client_id == "a.b"
    assert parsed.params == {
        "securemode": "2",
        "signmethod": "hmacsha256",
        "timestamp": "1",
        "empty": "",
    }
    assert (parsed.secure_mode, parsed.sign_method, parsed.timestamp) == ("2", "hmacsha256", "1")
    bare = parse_client_id("plain")
    assert (bare.device_client_id, dict(bare.params), bare.sign_method) == ("plain", {}, "hmacmd5")
    assert parse_client_id("x" * 64 + "||").device_client_id == "x" * 64


def test_optional_clock_skew_check() -> None:
    lookup = lookup_for(make_device())
    now = 1_700_000_000_000
    client_id = f"id1|securemode=3,signmethod=hmacsha1,timestamp={now}|"
    password = doc_password(
        SECRET, "hmacsha1", clientId="id1", deviceName=DN, productKey=PK, timestamp=str(now)
    )
    ok = verify_sign_in(
        client_id, f"{DN}&{PK}", password, lookup, now_ms=now + 1000, max_clock_skew_ms=60_000
    )
    assert isinstance(ok, SignInAccepted)
    late = verify_sign_in(
        client_id, f"{DN}&{PK}", password, lookup, now_ms=now + 61_000, max_clock_skew_ms=60_000
    )
    assert_bad_credentials(late)
    assert_bad_credentials(
        verify_sign_in(
            GOOD_CLIENT.replace("42", "4x2"),
            f"{DN}&{PK}",
            password,
            lookup,
            max_clock_skew_ms=60_000,
        )
    )
    # Without the option, a fixed old timestamp (as in the SDK samples) is fine.
    assert isinstance(
        verify_sign_in(GOOD_CLIENT, f"{DN}&{PK}", GOOD_PASSWORD, lookup), SignInAccepted
    )


def test_sign_content_order() -> None:
    assert sign_content(product_key="p", device_name="d") == "deviceNamedproductKeyp"
    assert (
        sign_content(product_key="p", device_name="d", client_id="c", timestamp="t")
        == "clientIdcdeviceNamedproductKeyptimestampt"
    )


@pytest.mark.parametrize("algo", ["hmacmd5", "hmacsha1", "hmacsha256"])
def test_build_credentials_round_trip(algo: str) -> None:
    client_id, username, password = build_credentials(
        PK, DN, SECRET, timestamp="99", sign_method=algo
    )
    assert client_id == f"{PK}.{DN}|securemode=3,signmethod={algo},timestamp=99|"
    assert username == f"{DN}&{PK}"
    assert password == doc_password(
        SECRET, algo, clientId=f"{PK}.{DN}", deviceName=DN, productKey=PK, timestamp="99"
    )
    result = verify_sign_in(client_id, username, password.encode(), lookup_for(make_device()))
    assert isinstance(result, SignInAccepted)


def test_with_a_real_registry(tmp_path: Path) -> None:
    store = RegistryStore.open(tmp_path)
    try:
        reg = Registry(store)
        acct = reg.create_account("a").account_id
        pk = reg.create_product(acct, "Lamp_01", 0).product_key
        device = reg.register_device(acct, pk, "lamp-1")
        client_id, username, password = build_credentials(pk, "lamp-1", device.device_secret)
        result = verify_sign_in(client_id, username, password, reg.lookup_device)
        assert isinstance(result, SignInAccepted)
        assert result.identity.account_id == acct
        assert result.identity.iot_id == device.iot_id
        reg.disable_device(acct, iot_id=device.iot_id)
        refusal = refused(verify_sign_in(client_id, username, password, reg.lookup_device))
        assert refusal.refusal is Refusal.NOT_AUTHORIZED
        reg.delete_device(acct, iot_id=device.iot_id)
        assert_bad_credentials(verify_sign_in(client_id, username, password, reg.lookup_device))
    finally:
        store.close()
