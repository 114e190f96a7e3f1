"""What identity writes tell the hub's caches: two counters raised after each commit, and the
observers of registered CA certificates' changes.

The identity operations run on whichever thread calls them (the registry writer thread in
the running hub, ``store.py``); the sign-in caches live on the event loop. A counter is the
cheapest way between the two: the writer raises it once its transaction has committed (one
``+= 1`` under the GIL), and the loop compares it with the value a cached entry was read at
(one integer comparison per sign-in or per policy check). So a cache never serves what a
committed write has changed, without a message per write.

* ``grants`` rises after every committed identity write: anything a sign-in reads (a
  certificate's status, its things, its policies, their documents, a thing's attributes, a
  CA's status) may have changed;
* ``trust`` rises after a write that changes which client certificates the TLS layer may
  accept: a CA certificate registered, updated or deleted, or a certificate registered
  without its CA (its status too). It rises with ``grants``.

CA certificate changes are also reported to the observers (``watch_cas``) on the event loop
(``loop.call_soon_threadsafe`` from the writer), so that the connections of a deactivated
CA's certificates are closed (AWS IoT: devices cannot use a certificate whose CA is not
ACTIVE). Until a loop is bound (``bind``), observers are called on the writer's thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

__all__ = ["CAObserver", "IdentityChanges"]

log = logging.getLogger("thinghub.identity")

#: called with (account id, CA certificate id) after a CA certificate's change committed
CAObserver = Callable[[str, str], None]


class IdentityChanges:
    __slots__ = ("_loop", "_observers", "grants", "trust")

    def __init__(self) -> None:
        self.grants = 0
        self.trust = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._observers: list[CAObserver] = []

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the observers run on."""
        self._loop = loop

    def watch_cas(self, observer: CAObserver) -> None:
        self._observers.append(observer)

    def committed(self, *, trust: bool = False) -> None:
        """A write committed (on the writing thread)."""
        if trust:
            self.trust += 1
        self.grants += 1

    def ca_changed(self, account_id: str, ca_certificate_id: str) -> None:
        """A CA certificate's change committed (on the writing thread): tell the observers on
        the loop."""
        loop = self._loop
        if loop is None:
            self._tell(account_id, ca_certificate_id)
            return
        try:
            loop.call_soon_threadsafe(self._tell, account_id, ca_certificate_id)
        except RuntimeError:
            pass  # the loop is closed: the hub is stopping, no connection is left to close

    def _tell(self, account_id: str, ca_certificate_id: str) -> None:
        for observer in list(self._observers):
            try:
                observer(account_id, ca_certificate_id)
            except Exception:
                log.exception("a CA certificate observer failed for %s", ca_certificate_id)
