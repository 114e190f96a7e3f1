"""Broker rules: sessions, subscriptions, retained messages, delivery. No sockets, no SQL."""
