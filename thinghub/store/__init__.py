"""Persistence behind small interfaces: what must outlive the process (persistent sessions,
their subscriptions and queued/in-flight messages, retained messages). In memory for now; the
durability work puts the same interface on SQLite."""
