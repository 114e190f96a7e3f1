"""The console's parts, built once per HTTP application and handed to every handler (no
module state, STYLE.md §3.12)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..broker.auth import DenyList
from ..http.context import HubContext
from .guard import Guard
from .reads import Reader
from .sessions import ConsoleSession, SessionBook
from .signin_limit import SignInLimiter
from .tail import TailBook

__all__ = ["Console", "Handler", "build_console"]


@dataclass(eq=False)
class Console:
    ctx: HubContext
    book: SessionBook
    guard: Guard
    reader: Reader
    signins: SignInLimiter
    tails: TailBook
    #: topics hidden from subscribers (mqtt.deny_subscribe), hidden from tails too
    hidden: DenyList | None
    #: messages accepted by QoS, the hub's own $SYS messages left out (None: broker.stats)
    received: Callable[[], list[int]] | None = None
    #: the Overview's hub-wide part and when it was made (api_hub.py)
    overview_cache: tuple[float, dict[str, Any]] | None = None


#: An API handler: the console, the request, its checked session; a JSON-able body or a
#: response of its own. Raises ConsoleError (rendered in routes.py).
Handler = Callable[[Console, web.Request, ConsoleSession], Awaitable[Any]]


def build_console(ctx: HubContext, received: Callable[[], list[int]] | None = None) -> Console:
    settings = ctx.settings.console
    book = SessionBook(
        idle_s=settings.session_idle_s,
        max_s=settings.session_max_s,
        max_sessions=settings.max_sessions,
    )
    reader = Reader()
    deny = ctx.settings.mqtt.deny_subscribe
    return Console(
        ctx=ctx,
        book=book,
        guard=Guard(book, ctx.registry, reader),
        reader=reader,
        signins=SignInLimiter(settings.signin_per_minute),
        tails=TailBook(
            max_per_session=settings.max_tails_per_session, max_total=settings.max_tails
        ),
        hidden=DenyList((), deny) if deny else None,
        received=received,
    )
