"""The store's exceptions: raised at start-up when the data directory cannot be used. Each
message says what is wrong and what to do; nothing has been written when one is raised
("Faults": a clear error at start and no damage)."""

from __future__ import annotations

__all__ = ["DataDirLocked", "SchemaVersionError", "StoreError", "StoreOpenError"]


class StoreError(Exception):
    """The broker's store cannot be used."""


class StoreOpenError(StoreError):
    """The store's file cannot be opened or is not a readable ThingHub database."""


class SchemaVersionError(StoreError):
    """The file was written by a newer ThingHub (its schema version is unknown here)."""


class DataDirLocked(StoreError):
    """Another running hub holds the data directory."""
