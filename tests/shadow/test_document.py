"""The shadow document's pure logic (thinghub/shadow/document.py): parsing and its errors,
merge and null deletion, metadata, delta, versions, limits, and the documents it renders."""

from __future__ import annotations

import json
from typing import Any

import pytest

from thinghub.shadow.document import (
    BAD_REQUEST,
    CONFLICT,
    PAYLOAD_TOO_LARGE,
    UNSUPPORTED_ENCODING,
    JSONObject,
    Limits,
    Shadow,
    ShadowError,
    UpdateRequest,
    UpdateResult,
    apply_update,
    compute_delta,
    delete_document,
    error_document,
    get_document,
    parse_client_token,
    parse_update,
)

LIMITS = Limits()
T0, T1, T2 = 1_700_000_000, 1_700_000_100, 1_700_000_200


def request(document: Any) -> UpdateRequest:
    return parse_update(json.dumps(document).encode(), LIMITS)


def update(current: Shadow | None, document: Any, now: int = T0, base: int = 0) -> UpdateResult:
    return apply_update(current, base, request(document), now, LIMITS)


def refused(payload: bytes, limits: Limits = LIMITS) -> ShadowError:
    with pytest.raises(ShadowError) as info:
        parse_update(payload, limits)
    return info.value


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("payload", "code", "message"),
    [
        (b"\xff\xfe{}", UNSUPPORTED_ENCODING, "Unsupported documented encoding"),
        (b"", BAD_REQUEST, "Invalid JSON"),
        (b"{", BAD_REQUEST, "Invalid JSON"),
        (b"[1]", BAD_REQUEST, "Invalid JSON"),
        (b'{"state": {"desired": {"a": NaN}}}', BAD_REQUEST, "Invalid JSON"),
        (b'{"state": {"desired": {"a": 1e999}}}', BAD_REQUEST, "Invalid JSON"),
        (b"[" * 5000 + b"]" * 5000, BAD_REQUEST, "Invalid JSON"),
        (b"{}", BAD_REQUEST, "Missing required node: state"),
        (b'{"state": 1}', BAD_REQUEST, "State node must be an object"),
        (b'{"state": {"desired": []}}', BAD_REQUEST, "Desired node must be an object"),
        (b'{"state": {"reported": "x"}}', BAD_REQUEST, "Reported node must be an object"),
        (b'{"state": {"delta": {}}}', BAD_REQUEST, "State contains an invalid node"),
        (b'{"state": {}, "version": "3"}', BAD_REQUEST, "Invalid version"),
        (b'{"state": {}, "version": -1}', BAD_REQUEST, "Invalid version"),
        (b'{"state": {}, "version": 1.5}', BAD_REQUEST, "Invalid version"),
        (b'{"state": {}, "version": true}', BAD_REQUEST, "Invalid version"),
        (b'{"state": {}, "clientToken": 7}', BAD_REQUEST, "Invalid clientToken"),
        (b'{"state": {"desired": {"a": [1, null]}}}', BAD_REQUEST, "Arrays can't have null"),
    ],
)
def test_invalid_requests_get_the_documented_error(payload: bytes, code: int, message: str) -> None:
    error = refused(payload)
    assert error.code == code
    assert error.message.startswith(message)


def test_client_token_is_at_most_64_bytes_and_rides_on_later_errors() -> None:
    assert request({"state": {}, "clientToken": "t" * 64}).client_token == "t" * 64
    assert refused(json.dumps({"state": {}, "clientToken": "é" * 33}).encode()).message == (
        "Invalid clientToken"
    )
    error = refused(b'{"clientToken": "abc", "state": 5}')
    assert (error.message, error.client_token) == ("State node must be an object", "abc")


def test_depth_is_counted_in_levels_of_a_section() -> None:
    def nested(levels: int) -> JSONObject:
        value: JSONObject = {"leaf": 1}
        for _ in range(levels - 1):
            value = {"x": value}
        return value

    limits = Limits(max_depth=3)
    assert parse_update(json.dumps({"state": {"desired": nested(3)}}).encode(), limits)
    deep = refused(json.dumps({"state": {"reported": nested(4)}}).encode(), limits)
    assert deep.message == "JSON contains too many levels of nesting; maximum is 3"
    # Arrays are levels too.
    array = refused(b'{"state": {"desired": {"a": {"b": [[1]]}}}}', limits)
    assert array.code == BAD_REQUEST
    # The quota page's example is 5 levels: "one" to "five" (an empty object adds none).
    example = {"one": {"two": {"three": {"four": {"five": {}}}}}}
    assert parse_update(json.dumps({"state": {"desired": example}}).encode(), Limits(max_depth=5))
    deeper = {"one": {"two": {"three": {"four": {"five": {"six": 1}}}}}}
    refused(json.dumps({"state": {"desired": deeper}}).encode(), Limits(max_depth=5))


def test_get_and_delete_bodies_only_carry_a_token() -> None:
    assert parse_client_token(b"", LIMITS) is None
    assert parse_client_token(b"not json", LIMITS) is None
    assert parse_client_token(b"[1]", LIMITS) is None
    assert parse_client_token(b'{"clientToken": "c1", "x": 1}', LIMITS) == "c1"
    with pytest.raises(ShadowError):
        parse_client_token(json.dumps({"clientToken": "x" * 65}).encode(), LIMITS)


# --------------------------------------------------------------------------- update


def test_first_update_creates_version_1_with_metadata_and_documents() -> None:
    result = update(None, {"state": {"desired": {"color": "red", "n": [1, {"a": 2}]}}})
    shadow = result.shadow
    assert shadow.version == 1
    assert shadow.state == {"desired": {"color": "red", "n": [1, {"a": 2}]}}
    # Arrays get per-element metadata, objects in them their own tree.
    assert shadow.metadata == {
        "desired": {
            "color": {"timestamp": T0},
            "n": [{"timestamp": T0}, {"a": {"timestamp": T0}}],
        }
    }
    assert result.accepted == {
        "state": {"desired": {"color": "red", "n": [1, {"a": 2}]}},
        "metadata": shadow.metadata,
        "version": 1,
        "timestamp": T0,
    }
    assert result.delta is not None and result.delta["state"] == shadow.state["desired"]
    assert result.documents["previous"] == {"state": {}, "metadata": {}, "version": 0}
    assert result.documents["current"] == {
        "state": shadow.state,
        "metadata": shadow.metadata,
        "version": 1,
    }


def test_update_merges_objects_and_replaces_arrays_and_scalars() -> None:
    first = update(None, {"state": {"desired": {"lights": {"r": 1, "g": 2}, "seq": [1, 2]}}})
    second = update(first.shadow, {"state": {"desired": {"lights": {"g": 5}, "seq": [3]}}}, now=T1)
    assert second.shadow.state == {"desired": {"lights": {"r": 1, "g": 5}, "seq": [3]}}
    assert second.shadow.metadata == {
        "desired": {
            "lights": {"r": {"timestamp": T0}, "g": {"timestamp": T1}},
            "seq": [{"timestamp": T1}],
        }
    }
    # The accepted document echoes only what the request said.
    assert second.accepted["state"] == {"desired": {"lights": {"g": 5}, "seq": [3]}}
    assert second.shadow.version == 2
    # A value may change type; metadata follows.
    third = update(second.shadow, {"state": {"desired": {"lights": "off"}}}, now=T2)
    assert third.shadow.state["desired"] == {"lights": "off", "seq": [3]}
    assert third.shadow.metadata["desired"] == {
        "lights": {"timestamp": T2},
        "seq": [{"timestamp": T1}],
    }


def test_null_deletes_keys_emptied_objects_and_sections() -> None:
    base = update(
        None,
        {"state": {"desired": {"a": 1, "o": {"x": 1}}, "reported": {"a": 1, "b": 2}}},
    ).shadow
    # A null key goes with its metadata; an object emptied by deletions goes too.
    result = update(base, {"state": {"desired": {"a": None, "o": {"x": None}}}}, now=T1)
    assert "desired" not in result.shadow.state  # the section emptied: removed
    assert "desired" not in result.shadow.metadata
    assert result.accepted["state"] == {"desired": {"a": None, "o": {"x": None}}}
    assert result.accepted["metadata"] == {
        "desired": {"a": {"timestamp": T1}, "o": {"x": {"timestamp": T1}}}
    }
    # A section set to null goes.
    gone = update(base, {"state": {"reported": None}}).shadow
    assert gone.state == {"desired": {"a": 1, "o": {"x": 1}}}
    assert set(gone.metadata) == {"desired"}
    # A new object whose members are all null is not created; a kept {} is.
    created = update(base, {"state": {"desired": {"n": {"m": None}, "e": {}}}}).shadow
    assert created.state["desired"] == {"a": 1, "o": {"x": 1}, "e": {}}


def test_state_null_clears_the_shadow_but_keeps_it_and_its_version() -> None:
    base = update(None, {"state": {"desired": {"a": 1}, "reported": {"a": 2}}}).shadow
    result = update(base, {"state": None, "clientToken": "c"}, now=T1)
    assert (result.shadow.state, result.shadow.metadata, result.shadow.version) == ({}, {}, 2)
    assert result.accepted == {
        "state": None,
        "metadata": {"timestamp": T1},
        "version": 2,
        "timestamp": T1,
        "clientToken": "c",
    }
    assert result.delta is None
    assert get_document(result.shadow, T2) == {
        "state": {},
        "metadata": {},
        "version": 2,
        "timestamp": T2,
    }


def test_versions_must_match_when_given() -> None:
    base = update(None, {"state": {"desired": {"a": 1}}}).shadow  # version 1
    with pytest.raises(ShadowError) as info:
        update(base, {"state": {"desired": {"a": 2}}, "version": 5, "clientToken": "k"})
    assert (info.value.code, info.value.message) == (CONFLICT, "Version conflict")
    assert info.value.client_token == "k"
    assert update(base, {"state": {"desired": {"a": 2}}, "version": 1}).shadow.version == 2
    # A shadow that does not exist is at its base version (0, or a deleted one's).
    assert update(None, {"state": {}, "version": 0}).shadow.version == 1
    assert update(None, {"state": {}, "version": 7}, base=7).shadow.version == 8
    with pytest.raises(ShadowError):
        update(None, {"state": {}, "version": 0}, base=7)


def test_state_size_limit_counts_desired_and_reported_not_metadata() -> None:
    limits = Limits(max_state_bytes=40)
    fits = {"state": {"desired": {"k": "x" * 10}, "reported": {"k": "y" * 10}}}
    # {"k":"xxxxxxxxxx"} is 18 bytes, twice: 36.
    shadow = apply_update(None, 0, request(fits), T0, limits).shadow
    grow = request({"state": {"reported": {"k": "y" * 15}}})
    with pytest.raises(ShadowError) as info:
        apply_update(shadow, 0, grow, T0, limits)
    assert info.value.code == PAYLOAD_TOO_LARGE
    assert info.value.message == "The payload exceeds the maximum size allowed"
    # Deleting to get under the limit is always possible.
    shrink = request({"state": {"reported": None}})
    assert apply_update(shadow, 0, shrink, T0, limits).shadow.version == 2


# --------------------------------------------------------------------------- delta


def test_delta_is_desired_minus_reported_with_paths_to_the_root() -> None:
    desired: JSONObject = {
        "lights": {"color": {"r": 255, "g": 255, "b": 255}},
        "mode": "auto",
        "list": [1, 2],
        "same": 1,
        "num": 1.0,
        "flag": True,
    }
    reported: JSONObject = {
        "lights": {"color": {"r": 255, "g": 0, "b": 255}},
        "list": [1, 2, 3],
        "same": 1,
        "num": 1,
        "flag": 1,
        "extra": "not in the delta",
    }
    assert compute_delta(desired, reported) == {
        "lights": {"color": {"g": 255}},
        "mode": "auto",
        "list": [1, 2],
        "flag": True,
    }
    assert compute_delta({}, reported) == {}


def test_delta_document_and_get_document_carry_the_delta_and_its_metadata() -> None:
    base = update(None, {"state": {"reported": {"a": 1, "o": {"x": 1, "y": 1}}}}).shadow
    result = update(base, {"state": {"desired": {"a": 1, "o": {"x": 2}}}}, now=T1)
    assert result.delta == {
        "state": {"o": {"x": 2}},
        "metadata": {"o": {"x": {"timestamp": T1}}},
        "version": 2,
        "timestamp": T1,
    }
    document = get_document(result.shadow, T2, "tok")
    assert document["state"] == {
        "desired": {"a": 1, "o": {"x": 2}},
        "reported": {"a": 1, "o": {"x": 1, "y": 1}},
        "delta": {"o": {"x": 2}},
    }
    assert set(document["metadata"]) == {"desired", "reported"}  # type: ignore[arg-type]
    assert (document["version"], document["timestamp"], document["clientToken"]) == (2, T2, "tok")
    # Once reported catches up, the delta is gone.
    settled = update(result.shadow, {"state": {"reported": {"o": {"x": 2}}}}, now=T2)
    assert settled.delta is None
    assert "delta" not in get_document(settled.shadow, T2)["state"]  # type: ignore[operator]


def test_documents_document_holds_previous_and_current() -> None:
    first = update(None, {"state": {"desired": {"a": 1}}})
    second = update(first.shadow, {"state": {"desired": {"a": 2}}, "clientToken": "c"}, now=T1)
    assert second.documents == {
        "previous": {
            "state": {"desired": {"a": 1}},
            "metadata": {"desired": {"a": {"timestamp": T0}}},
            "version": 1,
        },
        "current": {
            "state": {"desired": {"a": 2}},
            "metadata": {"desired": {"a": {"timestamp": T1}}},
            "version": 2,
        },
        "timestamp": T1,
        "clientToken": "c",
    }
    # The previous shadow is never changed in place.
    assert first.shadow.state == {"desired": {"a": 1}}


def test_small_documents() -> None:
    assert delete_document(4, T0) == {"version": 4, "timestamp": T0}
    assert delete_document(4, T0, "c") == {"version": 4, "timestamp": T0, "clientToken": "c"}
    error = ShadowError(CONFLICT, "Version conflict", "c")
    assert error_document(error, T0) == {
        "code": 409,
        "message": "Version conflict",
        "timestamp": T0,
        "clientToken": "c",
    }
    assert "clientToken" not in error_document(ShadowError(BAD_REQUEST, "Invalid JSON"), T0)
