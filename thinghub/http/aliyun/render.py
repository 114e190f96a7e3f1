"""The dialect's response bodies, JSON and XML (reference ``alibaba-iot-api.md`` §1.4, §2, §5).

* Success and business errors: HTTP 200, ``{RequestId, Success, ...fields}``; on failure also
  ``Code`` and ``ErrorMessage`` (§2 "Response envelope"). XML wraps the same fields in
  ``<{Action}Response>`` after ``<?xml version='1.0' encoding='UTF-8'?>`` (§5 "Format").
* Gateway errors: 4xx, ``{RequestId, HostId, Code, Message, Recommend}``; XML
  ``<Error><RequestId/><HostId/><Code/><Message/></Error>`` (§1.4), served as
  ``text/xml;charset=utf-8``, the one content type the Tea SDK reads as XML.
* Lists are wrapped the same way in both formats (§5): ``"Data":{"ProductTopicInfo":[a, b]}``
  is ``<Data><ProductTopicInfo>a</ProductTopicInfo><ProductTopicInfo>b</ProductTopicInfo>``;
  a list is its key repeated. ``None`` fields are left out; booleans are ``true``/``false``.
* MessageIds are JSON numbers (§2.1, §5): Python ints pass through ``json`` unchanged.

Also the time formats the API uses (§2.2, §2.3).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

from .signing import GatewayError

__all__ = [
    "JSON_TYPE",
    "XML_TYPE",
    "business_error",
    "gateway_error",
    "gmt_china",
    "gmt_cookie",
    "success",
    "utc_iso",
]

JSON_TYPE = "application/json;charset=utf-8"
XML_TYPE = "text/xml;charset=utf-8"
_XML_DECLARATION = "<?xml version='1.0' encoding='UTF-8'?>"
_ERROR_XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'
_RECOMMEND = "https://api.aliyun.com/troubleshoot?q="
# The cloud's region cn-shanghai renders Gmt* fields in China Standard Time (UTC+8): §2.3
# shows GmtCreate "2018-08-06 10:47:50" beside UtcCreate "2018-08-06T02:47:50.000Z".
_CHINA = timezone(timedelta(hours=8))


def success(
    action: str, response_format: str, request_id: str, fields: Mapping[str, Any]
) -> web.Response:
    """HTTP 200 with ``Success: true`` (and, for a business error, whatever ``fields`` add)."""
    if response_format == "JSON" and len(fields) == 1 and type(fields.get("MessageId")) is int:
        # Pub's answer, the hot one: the same bytes as below, without the generic checks.
        return _raw(
            200,
            f'{{"RequestId":"{request_id}","Success":true,"MessageId":{fields["MessageId"]}}}',
            JSON_TYPE,
        )
    if response_format == "JSON" and _plain_ints(fields):
        # Pub's {"MessageId": n}, BatchPub's {}: written directly, byte for byte what
        # _json() makes of them (a RequestId is a UUID: nothing to escape).
        tail = "".join(f',"{name}":{value}' for name, value in fields.items())
        return _raw(200, f'{{"RequestId":"{request_id}","Success":true{tail}}}', JSON_TYPE)
    body: dict[str, Any] = {"RequestId": request_id, "Success": True}
    body.update(fields)
    return _response(200, action, response_format, body)


def _plain_ints(fields: Mapping[str, Any]) -> bool:
    """Only ``int`` values (not bool) under names that JSON writes as they are, and none of
    the envelope's own names (which ``body.update`` would overwrite in place)."""
    return all(
        type(value) is int
        and name.isascii()
        and name.isalnum()
        and name not in ("RequestId", "Success")
        for name, value in fields.items()
    )


def business_error(
    action: str,
    response_format: str,
    request_id: str,
    code: str,
    message: str,
    fields: Mapping[str, Any] | None = None,
) -> web.Response:
    """HTTP 200 with ``Success: false``, ``Code`` and ``ErrorMessage`` (§2, §2.5)."""
    body: dict[str, Any] = {"RequestId": request_id, "Success": False}
    if fields:
        body.update(fields)
    body["Code"] = code
    body["ErrorMessage"] = message
    return _response(200, action, response_format, body)


def gateway_error(
    error: GatewayError, response_format: str, request_id: str, host: str
) -> web.Response:
    body = {
        "RequestId": request_id,
        "HostId": host,
        "Code": error.code,
        "Message": error.message,
        "Recommend": _RECOMMEND + error.code,
    }
    if response_format == "XML":
        text = _ERROR_XML_DECLARATION + "<Error>" + _xml_fields(body) + "</Error>"
        return _raw(error.status, text, XML_TYPE)
    return _raw(error.status, _json(body), JSON_TYPE)


def _response(
    status: int, action: str, response_format: str, body: Mapping[str, Any]
) -> web.Response:
    if response_format == "XML":
        root = f"{action}Response"
        text = f"{_XML_DECLARATION}<{root}>{_xml_fields(body)}</{root}>"
        return _raw(status, text, XML_TYPE)
    return _raw(status, _json(body), JSON_TYPE)


def _raw(status: int, text: str, content_type: str) -> web.Response:
    response = web.Response(status=status, body=text.encode("utf-8"))
    # Set verbatim: aiohttp would otherwise write "; charset=utf-8" with a space, and the Tea
    # SDK compares the XML content type as a whole string (§1.4).
    response.headers["Content-Type"] = content_type
    return response


def _json(body: Mapping[str, Any]) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def _xml_fields(fields: Mapping[str, Any]) -> str:
    return "".join(_xml_element(name, value) for name, value in fields.items())


def _xml_element(name: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return "".join(_xml_element(name, item) for item in value)
    if isinstance(value, Mapping):
        return f"<{name}>{_xml_fields(value)}</{name}>"
    if isinstance(value, bool):
        return f"<{name}>{'true' if value else 'false'}</{name}>"
    return f"<{name}>{escape(str(value))}</{name}>"


# --- times (§2.2, §2.3) -----------------------------------------------------------------


def _moment(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def gmt_china(ms: int | None) -> str | None:
    """``"2018-08-06 10:47:50"`` (QueryDeviceDetail ``GmtCreate``), in UTC+8 like the cloud."""
    if ms is None:
        return None
    return _moment(ms).astimezone(_CHINA).strftime("%Y-%m-%d %H:%M:%S")


def utc_iso(ms: int | None) -> str | None:
    """``"2018-08-06T02:47:50.000Z"`` (``UtcCreate``, ``UtcOnline`` ...)."""
    if ms is None:
        return None
    moment = _moment(ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def gmt_cookie(ms: int | None) -> str | None:
    """``"Wed, 20-Feb-2019 02:16:09 GMT"`` (QueryDevice ``GmtCreate``, §2.3)."""
    if ms is None:
        return None
    moment = _moment(ms)
    days = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    return (
        f"{days[moment.weekday()]}, {moment.day:02d}-{months[moment.month - 1]}-{moment.year} "
        f"{moment:%H:%M:%S} GMT"
    )
