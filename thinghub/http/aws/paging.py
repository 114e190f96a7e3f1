"""``nextToken`` for the iot-data list operations (ListRetainedMessages, ListSubscriptions,
ListNamedShadowsForThing): opaque to the caller, it holds the sort key of the last item
returned, so resuming *after* a key (not at an offset) stays correct when items come and go
between pages."""

from __future__ import annotations

import base64
import binascii

from .errors import AwsError

__all__ = ["next_token", "token_position"]


def next_token(kind: str, last: str) -> str:
    """The token that resumes a ``kind`` listing after the item whose key is ``last``."""
    return base64.urlsafe_b64encode(f"1:{kind}:{last}".encode()).decode("ascii")


def token_position(kind: str, token: str | None) -> str | None:
    """The key a ``kind`` listing resumes after (None: from the start); a token that is not
    one of ours, or of another listing, is an InvalidRequestException."""
    if token is None:
        return None
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode()
    except (binascii.Error, ValueError):
        text = ""
    version, _, rest = text.partition(":")
    token_kind, sep, last = rest.partition(":")
    if version != "1" or token_kind != kind or not sep:
        raise AwsError.invalid("The nextToken is not valid.")
    return last
