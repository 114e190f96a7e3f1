"""What both dialects' signature checks need from an access key (the registry's ``AccessKey``
fits): its secret, and whether it is enabled."""

from __future__ import annotations

from typing import Protocol, TypeVar


class AccessKey(Protocol):
    @property
    def secret(self) -> str: ...

    @property
    def enabled(self) -> bool: ...


K = TypeVar("K", bound=AccessKey)
