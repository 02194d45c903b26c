"""An application message inside the broker, and one delivery of it to a session."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sessions import ClientSession

# Properties that belong to one hop and are never forwarded: a Topic Alias names a topic
# on one connection only; Subscription Identifiers are set per subscriber (MQTT-3.3.4-6).
_HOP_ONLY = ("topic_alias", "subscription_identifier")


def wildcard_response_topic(properties: dict[str, Any] | None) -> bool:
    """True if ``properties`` (of a PUBLISH or a Will) hold a Response Topic with a
    wildcard: MQTT-3.3.2-14 forbids it, it is a topic name (3.3.2.3.5)."""
    topic = properties.get("response_topic") if properties else None
    return topic is not None and ("+" in topic or "#" in topic)


class Message:
    """A PUBLISH (or a Will) as the broker routes it: ``properties`` without the per-hop
    ones, ``expires_at`` the loop time its Message Expiry Interval runs out (None: never),
    ``at_once`` True when that interval is 0: it runs out as the message is routed, so
    it goes only to sessions whose delivery starts then (``Delivery.pump``), ``sender``
    the publishing client id ("" for the broker itself), ``hops`` how many plug-in
    ``on_message`` hooks published it in a chain (0: not published by one), ``size``
    about the bytes it holds: its payload, topic and properties, what a queue holding
    it is charged (``max_queued_bytes``), ``held`` None once it may go out, or while
    a commit must come first (a QoS 2 PUBLISH under durability "full": its packet id
    and queued copies on disk before any subscriber sees it) the sessions it was
    queued for, which their connections' ``pump`` stops at and which are pumped when
    the commit is done (``Broker._publish``)."""

    __slots__ = (
        "topic", "payload", "qos", "retain", "properties", "expires_at", "at_once", "sender",
        "hops", "size", "held",
    )  # fmt: skip

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: dict[str, Any] | None,
        now: float,
        sender: str = "",
        hops: int = 0,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.sender = sender
        self.hops = hops
        self.expires_at: float | None = None
        self.at_once = False
        self.held: list[ClientSession] | None = None
        if properties:
            properties = {k: v for k, v in properties.items() if k not in _HOP_ONLY}
            interval = properties.pop("message_expiry_interval", None)
            if interval is not None:
                self.expires_at = now + interval
                self.at_once = not interval
        self.properties = properties or None
        # The topic and the properties count as the payload does: a message with
        # none and 64 KiB of topic or 1 MiB of user properties costs as much.
        self.size = len(payload) + len(topic) + (_sized(properties) if properties else 0)

    def expired(self, now: float) -> bool:
        """True once the Message Expiry Interval has run out."""
        return self.expires_at is not None and now >= self.expires_at

    def outgoing_properties(
        self, now: float, subscription_ids: list[int] | None
    ) -> dict[str, Any] | None:
        """The 5.0 properties to forward with at ``now``: the Message Expiry Interval
        lowered by the time spent in the broker (MQTT-3.3.2-6), the subscriber's
        Subscription Identifiers (MQTT-3.3.4-3). Call only when not ``expired(now)``,
        or for an ``at_once`` message as its delivery starts."""
        props = self.properties
        if self.expires_at is None and not subscription_ids:
            return props
        out = dict(props) if props else {}
        if self.at_once:
            out["message_expiry_interval"] = 0  # 0 received, no time spent waiting
        elif self.expires_at is not None:
            out["message_expiry_interval"] = max(1, math.ceil(self.expires_at - now))
        if subscription_ids:
            out["subscription_identifier"] = subscription_ids
        return out


def _sized(value: Any) -> int:
    """About the bytes ``value`` (properties: ints, strings, bytes, pairs and lists of
    them) takes on the wire."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, dict):
        return sum(_sized(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_sized(v) for v in value)
    return 4


class Delivery:
    """One message on its way to one session: at ``qos`` (the lower of the message's and
    the subscription's), with the RETAIN flag ``retain`` and the matching subscriptions'
    identifiers. ``share``: the shared subscription (``$share/...`` filter) it was
    picked for, None for the session's own subscriptions: if the session ends before
    it is delivered, another member of the group gets it (4.8.2). ``pump``: for an
    ``at_once`` message, the session's ``pumps`` count when it was queued: it may go
    out only in the first pump after that, its delivery starting at once."""

    __slots__ = ("message", "qos", "retain", "subscription_ids", "share", "pump")

    def __init__(
        self,
        message: Message,
        qos: int,
        retain: bool,
        subscription_ids: list[int],
        share: str | None = None,
    ) -> None:
        self.message = message
        self.qos = qos
        self.retain = retain
        self.subscription_ids = subscription_ids
        self.share = share
        self.pump = -1
