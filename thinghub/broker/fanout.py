"""Fan-out: from the subscriptions a topic matched to the copies that sessions get.

Overlapping subscriptions of one session are merged into one copy at the highest granted
QoS, carrying every subscription identifier [MQTT-3.3.4-2, -3, -5]; No Local keeps a client's
own messages from it [MQTT-3.8.3-3]; each shared group gives its copy to one member (§4.8.2);
Retain As Published decides the RETAIN flag of each copy (§3.8.3.1). Pure: what each copy
becomes (sent, queued, dropped) is the session queue's business (queue.py).

For the delivery trace (thinghub/trace/recorder.py) it also says who got a copy: the client
ids of the first ``limit`` sessions go into ``handed``, at the end, in one C-level extend from
the merge's own dict, so a traced QoS 0 fan-out pays nothing per copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import islice

from ..message import Message
from .session import Session, SharedGroup, SubscriptionEntry
from .space import TrieKey, TrieValue

# Hands one copy to a session: (session, message, qos, retain, subscription ids).
Deliver = Callable[[Session, Message, int, bool, tuple[int, ...]], None]


def fan_out(
    message: Message,
    matches: Sequence[tuple[TrieKey, TrieValue]],
    deliver: Deliver,
    handed: list[str] | None = None,
    limit: int = 0,
    deliver_shared: Deliver | None = None,
) -> int:
    """Deliver one copy of ``message`` per matched session and shared group; returns how
    many copies were handed over. With ``handed``, the client ids of the sessions given a
    copy are appended to it, in delivery order, until it holds ``limit``. A shared group's
    copy goes to ``deliver_shared`` when given (in a cluster, ``deliver`` skips the copies a
    session's JetStream consumers bring, and shared subscriptions have none)."""
    if deliver_shared is None:
        deliver_shared = deliver
    if len(matches) == 1:
        value = matches[0][1]
        entry = value.pick() if type(value) is SharedGroup else value
        assert type(entry) is SubscriptionEntry
        if entry.no_local and entry.session.client_id == message.origin:
            return 0
        sub_ids = () if entry.subscription_id is None else (entry.subscription_id,)
        (deliver if entry is value else deliver_shared)(
            entry.session,
            message,
            min(message.qos, entry.qos),
            message.retain and entry.retain_as_published,
            sub_ids,
        )
        if handed is not None and len(handed) < limit:
            handed.append(entry.session.client_id)
        return 1
    merged: dict[str, tuple[Session, int, bool, list[int]]] = {}
    shared: list[SubscriptionEntry] = []
    origin = message.origin
    for _key, value in matches:
        if type(value) is SharedGroup:
            shared.append(value.pick())
            continue
        assert type(value) is SubscriptionEntry
        session = value.session
        if value.no_local and session.client_id == origin:
            continue
        prior = merged.get(session.client_id)
        if prior is None:
            ids = [] if value.subscription_id is None else [value.subscription_id]
            merged[session.client_id] = (session, value.qos, value.retain_as_published, ids)
        else:
            if value.subscription_id is not None:
                prior[3].append(value.subscription_id)
            merged[session.client_id] = (
                session,
                max(prior[1], value.qos),
                prior[2] or value.retain_as_published,
                prior[3],
            )
    qos = message.qos
    retain = message.retain
    for session, granted, rap, ids in merged.values():
        deliver(session, message, min(qos, granted), retain and rap, tuple(ids))
    for entry in shared:
        sub_ids = () if entry.subscription_id is None else (entry.subscription_id,)
        deliver_shared(
            entry.session,
            message,
            min(qos, entry.qos),
            retain and entry.retain_as_published,
            sub_ids,
        )
    if handed is not None and len(handed) < limit:
        handed.extend(islice(merged, limit - len(handed)))
        if shared:
            handed.extend(entry.session.client_id for entry in shared[: limit - len(handed)])
    return len(merged) + len(shared)
