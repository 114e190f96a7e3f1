"""What a test hub is started with: its settings (the hub's own ``Settings``, with the few
defaults a throw-away hub needs changed) and its root access key.

Settings are given as the user writes them, in either of two forms, mixed freely:

* dotted keys, as in ``thinghub serve``'s overrides: ``{"mqtt.max_qos": 1}``;
* a section and its table, as in the TOML file: ``{"mqtt": {"max_qos": 1}}``.

They are checked exactly as the hub checks its configuration (``config.load_settings``): an
unknown key or a bad value is a ``ConfigError`` that names it. The environment is NOT read: a
test hub is configured by the test, not by whatever ``THINGHUB_*`` variables the machine has.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, Settings, load_settings

__all__ = ["TEST_DEFAULTS", "HubOptions", "flatten_settings"]

#: How a test hub differs from ``thinghub serve``'s defaults (README *Testing*): loopback only,
#: free ports (0: the kernel picks, so hubs side by side, e.g. pytest-xdist workers, never
#: clash), the broker's store in memory (nothing to fsync; the registry stays SQLite in the
#: hub's temporary directory), no sign-in cache preload (a new registry has no devices, and
#: the preload would take a thread of the caller's loop in ``async with``), and device
#: presence written after 10 ms instead of 100 (the presence writer lets changes gather that
#: long, and a stop waits for it: registry/presence_writer.py).
TEST_DEFAULTS: Mapping[str, Any] = {
    "mqtt.host": "127.0.0.1",
    "http.host": "127.0.0.1",
    "mqtt.port": 0,
    "mqtt.tls_port": 0,
    "http.port": 0,
    "store.backend": "memory",
    "registry.preload_devices": 0,
    "registry.presence_interval": 0.01,
}

_KEY_ALPHABET = string.ascii_uppercase + string.digits


def flatten_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``{"mqtt": {"max_qos": 1}, "log_level": "DEBUG", "http.port": 0}`` ->
    ``{"mqtt.max_qos": 1, "log_level": "DEBUG", "http.port": 0}``."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"setting names are strings, not {key!r}")
        if isinstance(value, Mapping):
            if "." in key:
                raise ConfigError(f"{key}: a dotted setting takes a value, not a table")
            for inner, inner_value in value.items():
                flat[f"{key}.{inner}"] = inner_value
        else:
            flat[key] = value
    return flat


@dataclass(frozen=True, slots=True)
class HubOptions:
    """Everything a test hub starts from; ``key()`` tells hubs that may be shared apart."""

    #: dotted settings as the user gave them, defaults not included
    settings: Mapping[str, Any]
    access_key_id: str
    access_key_secret: str

    @classmethod
    def build(
        cls,
        settings: Mapping[str, Any] | None = None,
        *,
        access_key_id: str | None = None,
        access_key_secret: str | None = None,
    ) -> HubOptions:
        flat = flatten_settings(settings or {})
        if (access_key_id is None) != (access_key_secret is None):
            raise ConfigError("access_key_id and access_key_secret are given together")
        if access_key_id is None or access_key_secret is None:
            access_key_id = "AKIA" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))
            access_key_secret = secrets.token_urlsafe(30)
        options = cls(flat, access_key_id, access_key_secret)
        options.resolve(Path("."))  # bad settings are refused now, not when the hub starts
        return options

    @property
    def data_dir(self) -> Path | None:
        """The data directory the user chose, else None (the hub makes a temporary one)."""
        value = self.settings.get("data_dir")
        return None if value is None else Path(str(value))

    def resolve(self, data_dir: Path) -> Settings:
        """The hub's Settings in ``data_dir``: test defaults, then the user's settings."""
        merged = {**TEST_DEFAULTS, **self.settings, "data_dir": data_dir}
        return load_settings(None, environ={}, overrides=merged)

    def environ(self) -> dict[str, str]:
        """What ``Hub.environ`` reads the root key from."""
        return {
            "THINGHUB_ROOT_ACCESS_KEY_ID": self.access_key_id,
            "THINGHUB_ROOT_ACCESS_KEY_SECRET": self.access_key_secret,
        }

    def key(self) -> tuple[tuple[str, str], ...]:
        """Equal for options that make interchangeable hubs (the root key aside)."""
        return tuple(sorted((name, repr(value)) for name, value in self.settings.items()))
