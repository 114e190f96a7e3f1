"""MQTT over WebSocket signed by an access key: AWS IoT's SigV4 presigned URL
(``/mqtt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=...&X-Amz-Date=...
&X-Amz-SignedHeaders=host&X-Amz-Signature=...``, service ``iotdevicegateway``), checked with
the hub's access keys before the upgrade (``transport/websocket.py``).

A good signature is a ``SignedKey`` credential: the connection acts in the key's account as
one of its clients, with no policy (an IAM key may do everything in its account; AWS IoT's
own IAM policies are not modelled). A refusal carries AWS's reason, answered 403.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from ..broker.auth import CredentialRefused, SignedKey
from ..http.aws import sigv4
from ..registry.models import AccessKey

__all__ = ["SERVICES", "SignedUrls"]

#: what AWS IoT's WebSocket signers scope the credential to (and botocore's iot-data client)
SERVICES = frozenset({"iotdevicegateway", "iotdata"})


class SignedUrls:
    """The reader of upgrade credentials (``transport.websocket.HandshakeSignIn``)."""

    def __init__(
        self,
        lookup: Callable[[str], AccessKey | None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._lookup = lookup
        self._clock = clock

    def credential(
        self, method: str, raw_target: str, headers: Mapping[str, str]
    ) -> SignedKey | None:
        raw_path, query = sigv4.split_target(raw_target)
        if not sigv4.is_presigned(query):
            return None
        wire = sigv4.WireRequest(method, raw_path, query, headers)
        try:
            parsed = sigv4.parse_presigned(wire)
            key = self._lookup(parsed.access_key_id)
            verified = sigv4.verify_presigned(parsed, key, now=self._clock(), services=SERVICES)
        except sigv4.SigV4Error as error:
            # The reason and message AWS gives, without the canonical strings.
            raise CredentialRefused(f"{error.reason}: {error.message.split(chr(10))[0]}") from None
        return SignedKey(verified.key.account_id, verified.key.access_key_id)
