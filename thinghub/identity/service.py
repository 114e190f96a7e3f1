"""``IdentityService``: the AWS IoT identities of every account (things, certificates, CA
certificates, policies) over ``registry.db``, the hub's CA, and the certificate status
observers.

The operations are synchronous (``things``, ``certificates``, ``policies``; ``store.py`` says
on which threads they run). Each committed write raises the counters of ``changes``
(``changes.py``), which the sign-in caches compare with the values they read at. A change of
a certificate's status, or its deletion, is announced to the observers by whoever made it,
once the write has committed and on the event loop's thread
(``certificate_status_changed``): the TLS sign-in connects one that closes the connections
signed in with a certificate that is no longer ACTIVE (AWS IoT: "Devices cannot use a
certificate that is not in the ACTIVE state to reconnect").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..registry.ids import wall_clock_ms
from ..registry.store import RegistryStore
from .arns import Arns
from .ca import HubCA
from .certificates import Certificates
from .changes import IdentityChanges
from .policies import Policies
from .reader import IdentityReader
from .things import Things

__all__ = ["CertificateObserver", "IdentityService"]

log = logging.getLogger("thinghub.identity")

#: called with (account id, certificate id) after a certificate's status changed or it was
#: deleted; read ``IdentityReader.certificate`` for the status now (None: deleted)
CertificateObserver = Callable[[str, str], None]


class IdentityService:
    def __init__(
        self,
        store: RegistryStore,
        ca: HubCA | None,
        *,
        region: str = "us-east-1",
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.store = store
        self.ca = ca
        self.arns = Arns(region)
        self.changes = changes = IdentityChanges()
        self.things = Things(store, self.arns, clock=clock, changes=changes)
        self.certificates = Certificates(store, self.arns, ca=ca, clock=clock, changes=changes)
        self.policies = Policies(store, self.arns, clock=clock, changes=changes)
        self.reader = IdentityReader(store)
        self._observers: list[CertificateObserver] = []

    @property
    def region(self) -> str:
        return self.arns.region

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop the CA certificate observers (``changes.watch_cas``) run on."""
        self.changes.bind(loop)

    def watch_certificates(self, observer: CertificateObserver) -> None:
        """Call ``observer(account_id, certificate_id)`` after every committed change of a
        certificate's status and every deletion of a certificate (on the event loop)."""
        self._observers.append(observer)

    def certificate_status_changed(self, account_id: str, certificate_id: str) -> None:
        """Tell the observers; one that raises is logged and does not stop the others (the
        change is committed whatever they do)."""
        for observer in list(self._observers):
            try:
                observer(account_id, certificate_id)
            except Exception:
                log.exception("a certificate status observer failed for %s", certificate_id)
