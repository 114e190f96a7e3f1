"""The TLS listener's ``SSLContext``: the server certificate, the client certificates it
takes, and the application protocols it speaks.

Client certificates are optional at the TLS layer (``CERT_OPTIONAL``): a client without one
signs in as before (an Alibaba device's CONNECT, or anonymous when allowed), and one with a
certificate gets it verified by OpenSSL, in C, during the handshake, against the trust
anchors: the hub's CA (``identity/ca.py``), every ACTIVE CA certificate registered in any
account, and every ACTIVE certificate registered without its CA (its own anchor; so is a
registered intermediate CA: ``VERIFY_X509_PARTIAL_CHAIN`` lets any anchor end a chain). A
certificate that does not chain to one of them, or is outside its validity period, fails the
handshake. Who the certificate is (its status, account, policies) is the CONNECT's business
(``auth/aws_device.py``). Why OpenSSL and not ``cryptography`` after accepting any
certificate: Python's ``ssl`` has no verify callback, so a server that asks for certificates
cannot accept one it cannot verify; and verification in the handshake is C-speed and proves
the client holds the certificate's key.

The anchors change when CA certificates are registered, activated, deactivated or deleted
(``IdentityChanges.trust``, raised by those writes): the next connection after such a change
builds a new context (one WAL read, one ``load_verify_locations`` per anchor); connections
already established keep theirs. ALPN: ``x-amzn-mqtt-ca`` (what AWS IoT device SDKs offer
for MQTT on port 443), ``mqtt``, and ``http/1.1`` (MQTT over WebSocket); a client that offers
none of them, or no ALPN at all, is served too. No session tickets are issued (``_build``).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

__all__ = ["ALPN_PROTOCOLS", "ServerTLS"]

log = logging.getLogger("thinghub.transport")

ALPN_PROTOCOLS = ("x-amzn-mqtt-ca", "mqtt", "http/1.1")


class ServerTLS:
    """The current server context (``context()``), rebuilt when the trust anchors change.

    ``anchors()`` returns the PEMs of the client certificate trust anchors besides ``ca_pem``
    (None: client certificates are not asked for); ``generation()`` a number that changes
    whenever they may have."""

    def __init__(
        self,
        cert_file: str,
        key_file: str,
        *,
        ca_pem: str | None = None,
        anchors: Callable[[], tuple[str, ...]] | None = None,
        generation: Callable[[], int] = lambda: 0,
    ) -> None:
        self._cert_file = cert_file
        self._key_file = key_file
        self._ca_pem = ca_pem
        self._anchors = anchors
        self._generation = generation
        self._built_at = generation()
        self._context = self._build()

    def context(self) -> ssl.SSLContext:
        """The context for a new connection."""
        generation = self._generation()
        if generation != self._built_at:
            self._built_at = generation
            try:
                self._context = self._build()
            except (OSError, ssl.SSLError, ValueError) as error:
                # The files the hub started with went away or went bad: the context built
                # before still serves (and the next change tries again).
                log.error("the TLS context could not be rebuilt: %s", error)
        return self._context

    def _build(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # AWS IoT's minimum too
        context.load_cert_chain(self._cert_file, self._key_file)
        context.set_alpn_protocols(list(ALPN_PROTOCOLS))
        # No TLS 1.3 session tickets: issuing OpenSSL's default two after each handshake costs
        # a third of a client-certificate handshake (measured: 0.89 -> 0.59 ms of server CPU),
        # and device SDKs do not resume sessions (awsiotsdk's CRT does not); a reconnect storm
        # pays for it on every device.
        context.num_tickets = 0
        if self._ca_pem is None and self._anchors is None:
            return context
        anchors = [] if self._anchors is None else list(self._anchors())
        if self._ca_pem is not None:
            anchors.insert(0, self._ca_pem)
        loaded = 0
        for pem in anchors:
            try:
                context.load_verify_locations(cadata=pem)
                loaded += 1
            except (ssl.SSLError, ValueError) as error:
                # One certificate OpenSSL will not take must not cost the others.
                log.warning("a client certificate trust anchor was not loaded: %s", error)
        context.verify_mode = ssl.CERT_OPTIONAL
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        log.debug("TLS context built with %d client certificate trust anchors", loaded)
        return context
