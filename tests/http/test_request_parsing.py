"""The request parsing shortcuts of both dialects give exactly what the plain library calls
give: urllib's parse_qsl/unquote/quote for the Alibaba V1 signature, a copied header map for
the header view. Property tests (hypothesis) over the characters that matter: escapes of
every kind, ``+``, ``=``, ``&``, non-ASCII text, malformed escapes."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, unquote

from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from thinghub.http.aliyun import signing
from thinghub.http.headers import header_map

# Text made of the pieces that exercise the decoder: plain characters, "+", "=", "&", "%",
# escapes in both cases (ASCII, UTF-8 bytes, malformed), and non-ASCII characters.
_PLAIN = ["a", "Z", "0", "-", "_", ".", "~", "+", "=", "&", "%", " ", "/", "é", "€", "\U0001f600"]
_ESCAPES = ["%2F", "%2f", "%3D", "%41", "%7e", "%20", "%C3%A9", "%E2%82%AC", "%zz", "%4", "%%"]
_ATOMS = st.sampled_from([*_PLAIN, *_ESCAPES])
_TEXT = st.lists(_ATOMS, max_size=12).map("".join)


@given(_TEXT)
def test_unquote_is_urllibs(text: str) -> None:
    assert signing._unquote(text) == unquote(text)


@given(_TEXT)
def test_parse_form_is_parse_qsl(text: str) -> None:
    assert signing.parse_form(text) == parse_qsl(text, keep_blank_values=True)


@given(_TEXT)
def test_signed_piece_is_decode_then_encode(piece: str) -> None:
    name, value, signed = signing._signed_piece(piece)
    expected = parse_qsl(piece, keep_blank_values=True) or [("", "")]
    raw_name, _, raw_value = piece.partition("=")
    decoded = (unquote(raw_name.replace("+", " ")), unquote(raw_value.replace("+", " ")))
    assert (name, value) == decoded
    if name == "Signature":
        assert signed == ""
    else:
        assert signed == f"{quote(name, safe='-_.~')}={quote(value, safe='-_.~')}"
    if piece and "&" not in piece:
        assert [(name, value)] == expected


@given(st.lists(st.tuples(_TEXT, _TEXT), max_size=6), st.lists(st.tuples(_TEXT, _TEXT), max_size=3))
def test_parse_target_is_parse_request(
    query: list[tuple[str, str]], body: list[tuple[str, str]]
) -> None:
    target = "/?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query)
    form = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in body).encode()
    headers = [("Content-Type", "application/x-www-form-urlencoded")]
    path, pairs = signing.split_target(target)
    plain = signing.parse_request(signing.WireRequest("POST", path, pairs, headers, form))
    fast = signing.parse_target("POST", target, headers, form)
    assert fast.wire == plain.wire
    assert (fast.pairs, fast.params, fast.signature) == (plain.pairs, plain.params, plain.signature)
    assert fast.pieces is not None
    assert [(n, v) for n, v, _ in fast.pieces] == list(fast.pairs)
    unique = len(fast.pieces) == len(fast.params)
    assert signing._v1_pieces_to_sign("POST", fast.pieces, unique) == signing.v1_string_to_sign(
        "POST", plain.pairs
    )


def test_percent_encode_of_long_and_base64_values() -> None:
    for value in ["ab+/=" * 1000, "x/y z" * 1000, "é/€" * 100, "a=b==", "=ab", ""]:
        assert signing.percent_encode(value) == quote(value, safe="-_.~")


def test_header_view_answers_as_the_copied_map() -> None:
    pairs = [("Host", "h"), ("X-Acs-Date", "d"), ("x-acs-date", "e"), ("Accept", "*/*")]
    view = header_map(CIMultiDictProxy(CIMultiDict(pairs)))
    copied = header_map(pairs)
    assert isinstance(copied, dict)
    assert dict(view) == copied == {"host": ["h"], "x-acs-date": ["d", "e"], "accept": ["*/*"]}
    assert list(view) == list(copied) and len(view) == len(copied)
    assert "HOST" in view and "x-missing" not in view
    assert view.get("x-missing") is None and view.get("x-missing", ()) == ()
