"""The shadow document: pure functions over JSON values, no I/O (STYLE.md §3.1).

Sources, cited below by their short names: the AWS IoT developer guide pages
``device-shadow-document`` (DOC), ``device-shadow-data-flow`` (FLOW), ``device-shadow-mqtt``
(MQTT) and ``device-shadow-error-messages`` (ERR); the AWS IoT Core quotas (QUOTA). Where the
guide is silent we follow AWS's own implementation of the same service for Greengrass
(aws-greengrass-shadow-manager, "GG"), and say so.

A shadow holds two sections, ``desired`` and ``reported`` (DOC "Document properties"), each a
JSON object, and a ``metadata`` tree of the same shape whose leaves are ``{"timestamp": t}``
(epoch seconds) for the time each value was last set. The rules:

* **Update** merges each section of the request into the shadow: objects merge key by key,
  everything else (scalars, arrays: DOC "Array values") replaces. ``null`` deletes a key
  (FLOW "Deleting a property"); a section set to ``null`` is removed (DOC "Empty shadow
  document properties"); ``"state": null`` clears both sections, and the shadow stays with its
  version (FLOW "Deleting a shadow": "Setting the device's shadow state to null does not
  delete the shadow"; GG clears both sections). A section, or an object, left empty by
  deletions is removed; an object whose members are all ``null`` is not created (GG).
* **Version** starts at 1 and grows by one with every accepted update (DOC "Versioning"). A
  request carrying ``version`` is applied only if it equals the shadow's current version,
  else 409 "Version conflict" (FLOW "Optimistic locking"). Deleting a shadow keeps its
  version: a shadow created again under the same name within 48 hours continues from it
  (FLOW "DELETE"); the caller passes that version in as ``base_version``.
* **Delta** is ``desired`` minus what ``reported`` already says, recursively: a desired key
  absent from ``reported`` or with another value is in it, nested objects keep the path to the
  root, arrays and scalars compare whole (DOC "Delta state"). Numbers compare by value
  (``1 == 1.0``, GG); ``true`` is not ``1``. Its metadata is that of ``desired``.
* **Metadata** mirrors the values set: an object maps to an object, an array to an array of
  per-element metadata (GG; the guide's examples show scalars only), anything else to
  ``{"timestamp": t}``. The ``/accepted`` document carries the request's ``state`` as sent
  (its ``null``s included) and metadata for exactly those values (DOC "/accepted response
  state document"; GG).
* **Limits** (QUOTA "Device Shadow"; ERR): desired plus reported at most 8 KB as compact UTF-8
  JSON, metadata not counted (413 "The payload exceeds the maximum size allowed"); at most 8
  levels of objects and arrays in a section (400); a ``clientToken`` of at most 64 bytes (DOC
  "Client tokens"). Arrays cannot hold ``null`` (DOC "Array values": "will be rejected").
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = [
    "BAD_REQUEST",
    "CONFLICT",
    "INTERNAL_ERROR",
    "NOT_FOUND",
    "PAYLOAD_TOO_LARGE",
    "SECTIONS",
    "TOO_MANY_REQUESTS",
    "UNSUPPORTED_ENCODING",
    "JSONObject",
    "JSONValue",
    "Limits",
    "Shadow",
    "ShadowError",
    "UpdateRequest",
    "UpdateResult",
    "apply_update",
    "compute_delta",
    "delete_document",
    "dumps",
    "error_document",
    "get_document",
    "parse_client_token",
    "parse_update",
]

JSONValue: TypeAlias = "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"
JSONObject: TypeAlias = "dict[str, JSONValue]"

SECTIONS = ("desired", "reported")

# The HTTP status codes of ERR, carried by ShadowError.code (the MQTT error document's "code").
BAD_REQUEST = 400
NOT_FOUND = 404
CONFLICT = 409
PAYLOAD_TOO_LARGE = 413
UNSUPPORTED_ENCODING = 415
TOO_MANY_REQUESTS = 429
INTERNAL_ERROR = 500


class ShadowError(Exception):
    """A refused shadow request: ``code`` is ERR's HTTP status, ``message`` its text, and
    ``client_token`` the request's token when it could be read (echoed on ``/rejected``)."""

    def __init__(self, code: int, message: str, client_token: str | None = None) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
        self.client_token = client_token

    def with_token(self, client_token: str | None) -> ShadowError:
        return ShadowError(self.code, self.message, client_token)


@dataclass(frozen=True, slots=True)
class Limits:
    """QUOTA's Device Shadow limits (configurable in ``[shadow]``)."""

    # "Maximum size of a JSON state document": desired + reported, metadata not counted.
    max_state_bytes: int = 8 * 1024
    # "Maximum depth of JSON device state documents": levels in desired or reported.
    max_depth: int = 8
    # DOC "Client tokens": "no longer than 64 bytes".
    max_client_token_bytes: int = 64


@dataclass(frozen=True, slots=True)
class Shadow:
    """A live shadow. ``state`` and ``metadata`` hold only non-empty sections. The dicts are
    never changed in place: ``apply_update`` builds new ones."""

    state: JSONObject
    metadata: JSONObject
    version: int


@dataclass(frozen=True, slots=True)
class UpdateRequest:
    """A checked request state document (DOC "Request state document")."""

    #: the ``state`` node as sent; None for ``"state": null``
    state: JSONObject | None
    client_token: str | None
    version: int | None


@dataclass(frozen=True, slots=True)
class UpdateResult:
    shadow: Shadow
    #: the ``/update/accepted`` document (also UpdateThingShadow's answer)
    accepted: JSONObject
    #: the ``/update/delta`` document, None when desired and reported agree
    delta: JSONObject | None
    #: the ``/update/documents`` document
    documents: JSONObject


# --------------------------------------------------------------------------- parsing


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e999 would come back as Infinity, which is not JSON
        raise ValueError("number out of range")
    return value


def _load(payload: bytes) -> JSONValue:
    """Strict JSON from UTF-8 bytes: ERR's 415 for another encoding, 400 otherwise."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ShadowError(
            UNSUPPORTED_ENCODING, "Unsupported documented encoding; supported encoding is UTF-8"
        ) from None
    try:
        value: JSONValue = json.loads(text, parse_constant=_reject_constant, parse_float=_finite)
    except (ValueError, RecursionError):
        raise ShadowError(BAD_REQUEST, "Invalid JSON") from None
    return value


def _client_token(document: JSONObject, limits: Limits) -> str | None:
    if "clientToken" not in document:
        return None
    token = document["clientToken"]
    if not isinstance(token, str) or len(token.encode()) > limits.max_client_token_bytes:
        raise ShadowError(BAD_REQUEST, "Invalid clientToken")
    return token


def parse_update(payload: bytes, limits: Limits) -> UpdateRequest:
    """Check a request state document (ERR's 400 list, in the order a reader meets them)."""
    document = _load(payload)
    if not isinstance(document, dict):
        raise ShadowError(BAD_REQUEST, "Invalid JSON")
    token = _client_token(document, limits)
    try:
        if "state" not in document:
            raise ShadowError(BAD_REQUEST, "Missing required node: state")
        version = document.get("version")
        if "version" in document and (
            not isinstance(version, int) or isinstance(version, bool) or not 0 <= version < 2**63
        ):
            raise ShadowError(BAD_REQUEST, "Invalid version")
        state = document["state"]
        if state is None:
            return UpdateRequest(None, token, version if isinstance(version, int) else None)
        if not isinstance(state, dict):
            raise ShadowError(BAD_REQUEST, "State node must be an object")
        for name, value in state.items():
            if name not in SECTIONS:
                raise ShadowError(BAD_REQUEST, "State contains an invalid node")
            if value is not None and not isinstance(value, dict):
                raise ShadowError(BAD_REQUEST, f"{name.capitalize()} node must be an object")
            if value is not None:
                _check_section(value, limits)
    except ShadowError as error:
        raise error.with_token(token) from None
    return UpdateRequest(state, token, version if isinstance(version, int) else None)


def _check_section(section: JSONObject, limits: Limits) -> None:
    """Depth (QUOTA) and arrays without nulls (DOC "Array values"), without recursion: a
    document may be as deep as the JSON parser lets it be. A level is where a value sits: the
    section's members are at level 1, theirs at 2, and so on, through arrays too (GG counts
    arrays). The quota page's example, ``"desired": {"one": {"two": {"three": {"four":
    {"five": {}}}}}}``, is 5 levels: an empty object adds none."""
    pending: list[tuple[JSONValue, int]] = [(section, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict):
            children = list(value.values())
        elif isinstance(value, list):
            children = value
            if any(item is None for item in value):
                raise ShadowError(BAD_REQUEST, "Arrays can't have null values")
        else:
            continue
        if children and depth > limits.max_depth:
            raise ShadowError(
                BAD_REQUEST,
                f"JSON contains too many levels of nesting; maximum is {limits.max_depth}",
            )
        pending.extend((child, depth + 1) for child in children)


def parse_client_token(payload: bytes, limits: Limits) -> str | None:
    """The ``clientToken`` of a get or delete request. Their body is otherwise ignored (MQTT
    "/delete": "The content of the message is ignored"), so a body that is not a JSON object
    just carries no token; a token that is there must be valid."""
    if not payload.strip():
        return None
    try:
        document = _load(payload)
    except ShadowError:
        return None
    return _client_token(document, limits) if isinstance(document, dict) else None


# --------------------------------------------------------------------------- update


def _stamp(value: JSONValue, now: int) -> JSONValue:
    """The metadata of a value set at ``now``."""
    if isinstance(value, dict):
        return {key: _stamp(child, now) for key, child in value.items()}
    if isinstance(value, list):
        return [_stamp(item, now) for item in value]
    return {"timestamp": now}


def _without_nulls(value: JSONObject) -> JSONObject | None:
    """A new object as it is stored: ``null`` members dropped, and None if that leaves an
    object that had ``null``s empty (GG ``createMergeTree``)."""
    result: JSONObject = {}
    dropped = False
    for key, child in value.items():
        if child is None:
            dropped = True
        elif isinstance(child, dict):
            kept = _without_nulls(child)
            if kept is None:
                dropped = True
            else:
                result[key] = kept
        else:
            result[key] = copy.deepcopy(child)
    return None if dropped and not result else result


def _merge(state: JSONObject, metadata: JSONObject, patch: JSONObject, now: int) -> None:
    """Merge ``patch`` into ``state`` and keep ``metadata`` its mirror (both in place)."""
    for key, value in patch.items():
        if value is None:
            state.pop(key, None)
            metadata.pop(key, None)
            continue
        if isinstance(value, dict):
            child = state.get(key)
            if isinstance(child, dict):
                child_metadata = metadata.get(key)
                if not isinstance(child_metadata, dict):
                    child_metadata = metadata[key] = {}
                _merge(child, child_metadata, value, now)
                if value and not child:  # emptied by this request's deletions
                    del state[key]
                    metadata.pop(key, None)
                continue
            kept = _without_nulls(value)
            if kept is None:
                state.pop(key, None)
                metadata.pop(key, None)
            else:
                state[key] = kept
                metadata[key] = _stamp(kept, now)
            continue
        state[key] = copy.deepcopy(value)
        metadata[key] = _stamp(value, now)


def _size(section: JSONValue) -> int:
    return len(dumps(section))


def apply_update(
    current: Shadow | None,
    base_version: int,
    request: UpdateRequest,
    now: int,
    limits: Limits,
) -> UpdateResult:
    """The shadow after ``request``, and the documents to answer and publish. ``current`` is
    None when the shadow does not exist; ``base_version`` is then the version to continue
    from (a recently deleted shadow's, else 0). Raises ShadowError (409, 413)."""
    token = request.client_token
    expected = current.version if current is not None else base_version
    if request.version is not None and request.version != expected:
        raise ShadowError(CONFLICT, "Version conflict", token)
    state: JSONObject = {} if current is None else copy.deepcopy(current.state)
    metadata: JSONObject = {} if current is None else copy.deepcopy(current.metadata)
    if request.state is None:
        state, metadata = {}, {}
    else:
        for name in SECTIONS:
            if name not in request.state:
                continue
            patch = request.state[name]
            if not isinstance(patch, dict):  # null: the section goes
                state.pop(name, None)
                metadata.pop(name, None)
                continue
            section = state.get(name)
            section_metadata = metadata.get(name)
            if not isinstance(section, dict):
                section = {}
            if not isinstance(section_metadata, dict):
                section_metadata = {}
            _merge(section, section_metadata, patch, now)
            if section:
                state[name], metadata[name] = section, section_metadata
            else:
                state.pop(name, None)
                metadata.pop(name, None)
    if sum(_size(state[name]) for name in SECTIONS if name in state) > limits.max_state_bytes:
        raise ShadowError(PAYLOAD_TOO_LARGE, "The payload exceeds the maximum size allowed", token)
    shadow = Shadow(state, metadata, expected + 1)

    accepted: JSONObject = {
        "state": copy.deepcopy(request.state),
        "metadata": _stamp(request.state, now),
        "version": shadow.version,
        "timestamp": now,
    }
    _add_token(accepted, token)

    delta_document: JSONObject | None = None
    delta = _delta_of(shadow)
    if delta:
        desired_metadata = metadata.get("desired")
        delta_document = {
            "state": delta,
            "metadata": _delta_metadata(
                delta, desired_metadata if isinstance(desired_metadata, dict) else {}
            ),
            "version": shadow.version,
            "timestamp": now,
        }
        _add_token(delta_document, token)

    # A shadow that did not exist was empty, at the version it continues from.
    previous = current if current is not None else Shadow({}, {}, expected)
    documents: JSONObject = {
        "previous": _snapshot(previous),
        "current": _snapshot(shadow),
        "timestamp": now,
    }
    _add_token(documents, token)
    return UpdateResult(shadow, accepted, delta_document, documents)


def _snapshot(shadow: Shadow) -> JSONObject:
    return {
        "state": copy.deepcopy(shadow.state),
        "metadata": copy.deepcopy(shadow.metadata),
        "version": shadow.version,
    }


# --------------------------------------------------------------------------- delta


def _same(a: JSONValue, b: JSONValue) -> bool:
    """JSON equality: numbers by value, but a boolean is not a number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    return type(a) is type(b) and a == b


def compute_delta(desired: JSONObject, reported: JSONObject) -> JSONObject:
    """What ``desired`` asks that ``reported`` does not say (DOC "Delta state")."""
    delta: JSONObject = {}
    for key, want in desired.items():
        if key not in reported:
            delta[key] = copy.deepcopy(want)
            continue
        have = reported[key]
        if isinstance(want, dict) and isinstance(have, dict):
            nested = compute_delta(want, have)
            if nested:
                delta[key] = nested
        elif not _same(want, have):
            delta[key] = copy.deepcopy(want)
    return delta


def _delta_of(shadow: Shadow) -> JSONObject:
    desired = shadow.state.get("desired")
    reported = shadow.state.get("reported")
    if not isinstance(desired, dict):
        return {}
    return compute_delta(desired, reported if isinstance(reported, dict) else {})


def _delta_metadata(delta: JSONObject, desired_metadata: JSONObject) -> JSONObject:
    """The delta's metadata: desired's, for the delta's keys (DOC "Delta state")."""
    result: JSONObject = {}
    for key, value in delta.items():
        metadata = desired_metadata.get(key)
        if isinstance(value, dict) and isinstance(metadata, dict):
            result[key] = _delta_metadata(value, metadata)
        else:
            result[key] = copy.deepcopy(metadata)
    return result


# --------------------------------------------------------------------------- documents


def _add_token(document: JSONObject, client_token: str | None) -> None:
    # DOC "Response state document properties": "clientToken — Present only if a client
    # token was used".
    if client_token is not None:
        document["clientToken"] = client_token


def get_document(shadow: Shadow, now: int, client_token: str | None = None) -> JSONObject:
    """GetThingShadow's answer and ``/get/accepted``: the whole document with its delta."""
    state = copy.deepcopy(shadow.state)
    delta = _delta_of(shadow)
    if delta:
        state["delta"] = delta
    document: JSONObject = {
        "state": state,
        "metadata": copy.deepcopy(shadow.metadata),
        "version": shadow.version,
        "timestamp": now,
    }
    _add_token(document, client_token)
    return document


def delete_document(version: int, now: int, client_token: str | None = None) -> JSONObject:
    """DeleteThingShadow's answer and ``/delete/accepted`` (FLOW "Deleting a shadow": the
    abbreviated accepted document ``{"version": 4, "timestamp": 1591057529}``)."""
    document: JSONObject = {"version": version, "timestamp": now}
    _add_token(document, client_token)
    return document


def error_document(error: ShadowError, now: int) -> JSONObject:
    """The ``/rejected`` document (DOC "Error response document")."""
    document: JSONObject = {"code": error.code, "message": error.message, "timestamp": now}
    _add_token(document, error.client_token)
    return document


def dumps(value: JSONValue) -> bytes:
    """Compact UTF-8 JSON, as documents are sent and as their size is counted."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
