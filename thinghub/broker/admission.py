"""The one gate every message passes on its way into the hub.

Every way a message enters (an MQTT PUBLISH, a Will when it fires, an HTTP publish of either
dialect, ``SendDirectMessage``, a hub service's own answers) ends in ``Broker.publish`` or
``Broker.send_direct``, and both ask :meth:`Admission.admit` first, with the *publisher*
as a required argument. A path that forgets to say who publishes does not type-check, and no
path can reach the router without the gate. The gate decides, in this order:

1. **Authorisation.** An MQTT client (:class:`ClientInfo`, also for its Will) asks the
   configured ``Authorizer`` (a device's product topic categories, the operator's
   ``deny_publish`` filters). An HTTP caller (:data:`API_CALLER`, an access key acting for its
   account; the dialect has already applied its own topic rules) meets the ``deny_publish``
   filters. The hub's own services (:data:`HUB_SERVICE`) are not restricted.
2. **What may be retained.** Nothing is retained under ``mqtt.unretainable_topics`` (request
   and answer topics: Alibaba ``/sys/`` and RRpc, AWS ``$aws/``): a retained message there is
   refused as not authorised, whoever sends it.
3. **Durability.** A QoS 1/2 message is refused while the store is not accepting new work
   (full, or its writer behind or failed): acknowledged means stored.
4. **Memory.** A retained message that would take its account past ``max_retained_messages``
   or ``max_retained_bytes``, or the hub past ``max_retained_bytes_total``, is refused (quota).

A refusal raises :class:`PublishRefused` with the MQTT 5 reason code (§3.4.2.1 PUBACK reason
codes) and the kind of refusal; each protocol turns it into its own answer. A Will is checked
at CONNECT as well (:meth:`Admission.authorize`), so a client whose Will it could not publish
is refused there, as AWS IoT does for ``iot:Publish`` on the Will topic.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import MQTTSettings
from ..errors import ThingHubError
from ..message import Message
from ..mqtt.types import ReasonCode
from .auth import Authorizer, ClientInfo, DenyList
from .subtrie import SubscriptionTrie

if TYPE_CHECKING:
    from ..store.base import BrokerStore
    from .space import RetainedBudget, TopicSpace


class Refusal(enum.Enum):
    NOT_AUTHORIZED = "not authorized"
    QUOTA = "quota exceeded"
    UNAVAILABLE = "store not accepting"
    # A message this hub cannot carry as it is (in a cluster: a QoS 1/2 topic too long for the
    # message stream's subjects, cluster/subjects.py): refused, and refused again if sent again.
    INVALID = "not carried"


class PublishRefused(ThingHubError):
    """A message the hub will not take; nothing of it was delivered, retained or stored."""

    def __init__(self, kind: Refusal, reason_code: ReasonCode, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason_code = reason_code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Service:
    """A publisher that is not an MQTT client."""

    name: str
    # The hub's own services (shadow answers) are not subject to the operator's deny lists.
    internal: bool = False


#: An HTTP API caller: an access key acting for its account.
API_CALLER = Service("api")
#: A service of the hub itself, publishing its answers.
HUB_SERVICE = Service("hub", internal=True)

Publisher = ClientInfo | Service


class Admission:
    """Decides whether a message may enter; owned by the Broker (one per hub)."""

    __slots__ = ("_deny_publish", "_settings", "_store", "_unretainable", "authorizer")

    def __init__(
        self,
        settings: MQTTSettings,
        authorizer: Authorizer | None,
        store: BrokerStore,
    ) -> None:
        self._settings = settings
        self.authorizer = authorizer
        self._store = store
        self._deny_publish = DenyList(settings.deny_publish, ()) if settings.deny_publish else None
        self._unretainable: SubscriptionTrie[str, bool] | None = None
        if settings.unretainable_topics:
            trie: SubscriptionTrie[str, bool] = SubscriptionTrie()
            for topic_filter in settings.unretainable_topics:
                trie.add(topic_filter, topic_filter, True)
            self._unretainable = trie

    def authorize(self, message: Message, publisher: Publisher) -> None:
        """Raise PublishRefused unless ``publisher`` may send ``message`` at all (who may
        publish where, and what may be retained); state-independent, so also the check of a
        Will at CONNECT."""
        topic = message.topic
        if isinstance(publisher, ClientInfo):
            authorizer = self.authorizer
            if authorizer is not None:
                decision = authorizer.may_publish(publisher, topic)
                if not decision.allowed:
                    raise PublishRefused(
                        Refusal.NOT_AUTHORIZED,
                        decision.reason_code,
                        decision.reason or f"not authorized to publish to {topic}",
                    )
        elif (
            not publisher.internal
            and self._deny_publish is not None
            and self._deny_publish.denies_publish(topic)
        ):
            raise PublishRefused(
                Refusal.NOT_AUTHORIZED,
                ReasonCode.NOT_AUTHORIZED,
                f"publishing to {topic} is denied by the hub's configuration",
            )
        if message.retain and self._unretainable is not None and self._unretainable.match(topic):
            raise PublishRefused(
                Refusal.NOT_AUTHORIZED,
                ReasonCode.NOT_AUTHORIZED,
                f"messages on {topic} cannot be retained",
            )

    def admit(
        self,
        message: Message,
        publisher: Publisher,
        space: TopicSpace | None,
        budget: RetainedBudget,
    ) -> None:
        """Raise PublishRefused unless the message may enter now: :meth:`authorize`, then the
        store's and memory's bounds."""
        self.authorize(message, publisher)
        if message.qos and not self._store.accepting:
            raise PublishRefused(
                Refusal.UNAVAILABLE,
                ReasonCode.QUOTA_EXCEEDED,
                "the message store is not accepting new messages",
            )
        if message.retain and message.payload:
            self._check_retained_room(message, space, budget)

    def _check_retained_room(
        self, message: Message, space: TopicSpace | None, budget: RetainedBudget
    ) -> None:
        settings = self._settings
        cost = retained_cost(message)
        old = space.retained.get(message.topic) if space is not None else None
        growth = cost - (retained_cost(old) if old is not None else 0)
        limit = settings.max_retained_messages
        if space is not None and old is None and len(space.retained) >= limit:
            raise _quota(f"the account has reached its maximum of {limit} retained messages")
        if growth <= 0:
            return  # replacing with something no larger always fits
        account_bytes = space.retained_bytes if space is not None else 0
        if account_bytes + growth > settings.max_retained_bytes:
            raise _quota(
                f"the account's retained messages would exceed {settings.max_retained_bytes} bytes"
            )
        if budget.total_bytes + growth > settings.max_retained_bytes_total:
            raise _quota("the hub's retained messages are at their limit")


# What one retained message costs in memory besides its topic, payload and properties: the
# Message object, its index entries and trie nodes (measured: about 0.5 KiB for a short topic).
RETAINED_OVERHEAD_BYTES = 512


def retained_cost(message: Message) -> int:
    """The bytes a retained message is counted at against the retained limits."""
    props = message.properties
    extra = 0
    if props.user_properties:
        extra += sum(len(k) + len(v) for k, v in props.user_properties)
    if props.correlation_data:
        extra += len(props.correlation_data)
    if props.response_topic:
        extra += len(props.response_topic)
    if props.content_type:
        extra += len(props.content_type)
    return len(message.payload) + len(message.topic) + extra + RETAINED_OVERHEAD_BYTES


def _quota(reason: str) -> PublishRefused:
    return PublishRefused(Refusal.QUOTA, ReasonCode.QUOTA_EXCEEDED, reason)
