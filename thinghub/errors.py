"""The root of the hub's own exception types: ``except ThingHubError`` catches every error the
hub raises on purpose (a refusal, a bound reached), and nothing that is a bug."""

from __future__ import annotations


class ThingHubError(Exception):
    """An error the hub raises on purpose; the message says what and why."""
