"""Request headers as both signature checks read them: lower-case name -> every value, in order.

The web server hands us a case-insensitive multidict (aiohttp's ``CIMultiDictProxy``), which
already answers by any case: :func:`header_map` wraps it without copying, so a request pays
for the few headers its check reads instead of copying all of them (a tenth of a V1 ``Pub``'s
parsing). Anything else (a plain mapping, a list of pairs: the tests, other servers) is copied
into a dict keyed by the lower-case name, as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["HeaderMap", "header_map"]

#: lower-case header name -> its values in arrival order (absent names are not keys)
HeaderMap = Mapping[str, Sequence[str]]


class _MultiDictView(Mapping[str, Sequence[str]]):
    """A :data:`HeaderMap` over a case-insensitive multidict: lookups are the multidict's own
    (C code); iteration yields each distinct name once, lower-cased."""

    __slots__ = ("_headers",)

    def __init__(self, headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> None:
        self._headers = headers

    def __getitem__(self, name: str) -> list[str]:
        values = self._headers.getall(name, None)
        if not values:
            raise KeyError(name)
        return values

    # Overridden: Mapping's versions go through __getitem__ and an exception for every miss.
    def get(self, name: str, default: Sequence[str] | None = None) -> Sequence[str] | None:  # type: ignore[override]
        values = self._headers.getall(name, None)
        return values if values else default

    def __contains__(self, name: object) -> bool:
        return name in self._headers

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name.lower() for name in self._headers))

    def __len__(self) -> int:
        return len({name.lower() for name in self._headers})


def header_map(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> HeaderMap:
    """``headers`` as a :data:`HeaderMap` (see the module docstring)."""
    if type(headers) is CIMultiDictProxy or type(headers) is CIMultiDict:
        return _MultiDictView(headers)
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, list[str]] = {}
    for name, value in items:
        out.setdefault(name.lower(), []).append(value)
    return out
