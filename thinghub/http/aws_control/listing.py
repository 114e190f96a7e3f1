"""How a list operation pages, and the one way each answers with a page.

The ``iot`` model pages in two conventions; a listing's ``kind`` is written into its tokens
(``http/aws/paging.py``), so the token of one listing is refused by another:

============  ==========  ===========  ==========  =============================================
convention    page size   token in     token out   operations
============  ==========  ===========  ==========  =============================================
marker        pageSize    marker       nextMarker  ListPolicies, ListAttachedPolicies,
                                                   ListTargetsForPolicy, ListCertificates,
                                                   ListCertificatesByCA, ListCACertificates
nextToken     maxResults  nextToken    nextToken   ListThings, ListThingPrincipals,
                                                   ListPrincipalThings
============  ==========  ===========  ==========  =============================================

The answer is ``{member: [...]}`` with the token out added only when another page follows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web

from ...identity.models import Page
from .call import Call, token

__all__ = ["Listing"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Listing:
    """One list operation's paging: its token kind and the model's member names."""

    kind: str
    #: the query member that sizes the page
    size: str
    #: the query member holding the token to resume after
    token_in: str
    #: the output member holding the token of the next page
    token_out: str

    @classmethod
    def by_marker(cls, kind: str) -> Listing:
        return cls(kind, "pageSize", "marker", "nextMarker")

    @classmethod
    def by_token(cls, kind: str) -> Listing:
        return cls(kind, "maxResults", "nextToken", "nextToken")

    def after_name(self, call: Call) -> str | None:
        """Where a listing by name (or id) resumes, or None."""
        return call.after_name(self.token_in, self.kind)

    def after_seq(self, call: Call) -> int | None:
        """Where a listing in creation order resumes, or None."""
        return call.after_seq(self.token_in, self.kind)

    def limit(self, call: Call) -> int:
        return call.limit(self.size)

    def answer(
        self, call: Call, page: Page[T], member: str, shape: Callable[[T], object]
    ) -> web.Response:
        """200 with the page's items, each as ``shape`` makes it, under ``member``."""
        body: dict[str, object] = {member: [shape(item) for item in page.items]}
        following = token(self.kind, page.next_key)
        if following is not None:
            body[self.token_out] = following
        return call.ok(body)
