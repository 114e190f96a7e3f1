"""Typed reading of an RPC call's parameters (reference ``alibaba-iot-api.md`` §2).

Every value arrives as a string (query or form body, §1.2/§4). The rules:

* A parameter marked required (* in §2) that is absent or empty is the gateway's
  ``Missing{Param}`` (400, §1.4), as the POP gateway checks required parameters before the
  service sees the call.
* A value of the wrong form (not a number, out of range, not Base64 ...) is a business error,
  HTTP 200 with ``iot.common.InvalidFormattedParameter`` unless a more specific code exists
  (§2.5: ``iot.messagebroker.MessageContentIsNotBase64Encode`` ...).
* Repeat lists are ``Name.1``, ``Name.2``, ... (§4.1 ``DeviceName.1=device1``); ``UserProp.N.Key``
  and ``UserProp.N.Value`` come in pairs. They are returned in the order of N.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping

from . import errors as e
from .errors import ApiError

__all__ = ["Params"]

_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


class Params:
    """The business parameters of one call (common ones such as ``Action`` are ignored)."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = values

    def __contains__(self, name: str) -> bool:
        return bool(self._values.get(name))

    def mentions(self, names: frozenset[str], prefix: str) -> bool:
        """False only if none of ``names``, and no name starting with ``prefix``, was sent
        (not even empty): a cheap test that lets a caller skip reading a group of optional
        parameters that most requests do not use. (True may be a false alarm: a name that
        merely contains ``prefix``; the caller then reads them all, as it would anyway.)"""
        values = self._values
        if not names.isdisjoint(values):
            return True
        # One search in C instead of a call per name.
        return prefix in "\x00".join(values)

    def required(self, name: str) -> str:
        value = self._values.get(name)
        if not value:
            raise e.missing(name)
        return value

    def optional(self, name: str) -> str | None:
        """The value, or None when absent or empty (both SDKs send unset fields as absent)."""
        value = self._values.get(name)
        return value if value else None

    def integer(
        self,
        name: str,
        *,
        required: bool = False,
        default: int | None = None,
        minimum: int | None = None,
        maximum: int | None = None,
        code: str = e.INVALID_PARAMETER,
    ) -> int | None:
        raw = self.required(name) if required else self.optional(name)
        if raw is None:
            return default
        text = raw.strip()
        digits = text[1:] if text[:1] in "+-" else text
        if not digits.isascii() or not digits.isdigit() or len(digits) > 19:
            raise ApiError(code, f"{name} must be an integer, not {raw!r}.")
        value = int(text)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            low = "" if minimum is None else f" at least {minimum}"
            high = "" if maximum is None else f" at most {maximum}"
            joint = " and" if low and high else ""
            raise ApiError(code, f"{name} must be{low}{joint}{high}, not {value}.")
        return value

    def boolean(self, name: str, *, default: bool = False) -> bool:
        raw = self.optional(name)
        if raw is None:
            return default
        text = raw.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ApiError(e.INVALID_PARAMETER, f"{name} must be true or false, not {raw!r}.")

    def repeat_list(self, name: str, *, limit: int = 10_000) -> list[str]:
        """``name.1`` .. ``name.N`` in the order of N; empty values are skipped. ``limit``
        bounds the work on a hostile request (the caller applies the API's own limit)."""
        prefix = name + "."
        found: list[tuple[int, str]] = []
        for key, value in self._values.items():
            if not key.startswith(prefix):
                continue
            index = key[len(prefix) :]
            if not index.isascii() or not index.isdigit() or int(index) < 1:
                raise ApiError(e.INVALID_PARAMETER, f"{key} is not {name}.N with N >= 1.")
            if value:
                found.append((int(index), value))
            if len(found) > limit:
                break
        found.sort()
        return [value for _index, value in found]

    def user_properties(self, *, limit: int = 1000) -> tuple[tuple[str, str], ...]:
        """``UserProp.N.Key`` / ``UserProp.N.Value`` pairs (reference §2.1 Pub, MQTT 5)."""
        keys: dict[int, str] = {}
        values: dict[int, str] = {}
        for key, value in self._values.items():
            if not key.startswith("UserProp."):
                continue
            number, _dot, part = key[len("UserProp.") :].partition(".")
            if not (number.isascii() and number.isdigit()) or part not in ("Key", "Value"):
                raise ApiError(e.INVALID_PARAMETER, f"{key} is not UserProp.N.Key or .Value.")
            (keys if part == "Key" else values)[int(number)] = value
            if len(keys) > limit:
                raise ApiError(e.INVALID_PARAMETER, f"At most {limit} UserProp entries.")
        if keys.keys() != values.keys():
            raise ApiError(
                e.INVALID_PARAMETER, "Each UserProp.N.Key needs its UserProp.N.Value and back."
            )
        for index, name in keys.items():
            if not name:
                raise ApiError(e.INVALID_PARAMETER, f"UserProp.{index}.Key is empty.")
        return tuple((keys[i], values[i]) for i in sorted(keys))

    def base64(
        self,
        name: str,
        *,
        required: bool = True,
        max_bytes: int,
        invalid_code: str = e.INVALID_PARAMETER,
    ) -> bytes | None:
        """Decode a standard, padded Base64 value; at most ``max_bytes`` once decoded."""
        raw = self.required(name) if required else self.optional(name)
        if raw is None:
            return None
        # Check the size before decoding: 4 characters carry 3 bytes.
        if (len(raw) // 4) * 3 > max_bytes + 2:
            raise ApiError(e.MESSAGE_TOO_LARGE, f"{name} is larger than {max_bytes} bytes.")
        if len(raw) % 4 or not _BASE64.fullmatch(raw):
            raise ApiError(invalid_code, f"{name} is not Base64 encoded.")
        try:
            # What base64.b64decode(raw, validate=True) does, without its wrapper.
            data = binascii.a2b_base64(raw, strict_mode=True)
        except (binascii.Error, ValueError):
            raise ApiError(invalid_code, f"{name} is not Base64 encoded.") from None
        if len(data) > max_bytes:
            raise ApiError(e.MESSAGE_TOO_LARGE, f"{name} is larger than {max_bytes} bytes.")
        return data
