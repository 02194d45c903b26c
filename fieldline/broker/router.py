"""Who gets a message: subscriptions in a SubscriptionTree, the retained store, and the
fan-out rules (overlapping subscriptions, no-local, shared subscriptions)."""

from __future__ import annotations

from collections.abc import Callable

from fieldline.mqtt import Subscription, SubscriptionTree, parse_shared

from .message import Delivery, Message
from .retained import Retained


class Entry:
    """One subscription of one client: its options and its Subscription Identifier
    (0: none)."""

    __slots__ = ("options", "subscription_id")

    def __init__(self, options: Subscription, subscription_id: int) -> None:
        self.options = options
        self.subscription_id = subscription_id


class Router:
    """Subscriptions of every session, keyed by client id, and the retained messages."""

    def __init__(self) -> None:
        self.tree = SubscriptionTree()
        self._retained = Retained()
        self.retained = self._retained.messages  # topic -> Message: read it, retain() writes
        self._turn: dict[str, int] = {}  # shared filter -> round-robin counter
        self._members: dict[str, int] = {}  # shared filter -> number of subscribers

    def subscribe(self, client_id: str, entry: Entry) -> bool:
        """Add or replace ``client_id``'s subscription; True if it replaced one."""
        topic_filter = entry.options.topic_filter
        replaced = bool(self.tree.add(topic_filter, client_id, entry))
        if not replaced and parse_shared(topic_filter)[0] is not None:
            self._members[topic_filter] = self._members.get(topic_filter, 0) + 1
        return replaced

    def unsubscribe(self, client_id: str, topic_filter: str) -> bool:
        """Remove a subscription; False if there was none."""
        removed = bool(self.tree.remove(topic_filter, client_id))
        n = self._members.get(topic_filter)
        if removed and n is not None:
            if n > 1:
                self._members[topic_filter] = n - 1
            else:  # the group is gone: so is its turn
                del self._members[topic_filter]
                self._turn.pop(topic_filter, None)
        return removed

    def retain(self, message: Message) -> None:
        """Store a message published with RETAIN 1; an empty payload removes the retained
        message of its topic (MQTT-3.3.1-5, -6, -7), and so does one whose Message
        Expiry Interval is 0: it replaces the one before and has expired as it is
        stored (3.3.2.3.3), so the topic keeps none."""
        if message.payload and not message.at_once:
            self._retained.put(message)
        else:
            self._retained.remove(message.topic)

    def retained_for(self, topic_filter: str, now: float) -> list[Message]:
        """Retained messages matching a (non-shared) filter, dropping expired ones."""
        return self._retained.matching(topic_filter, now)

    def route(
        self,
        message: Message,
        online: Callable[[str], bool],
        may_read: Callable[[str], bool] | None = None,
    ) -> list[tuple[str, Delivery]]:
        """Deliveries of ``message``: one per client over all its overlapping non-shared
        subscriptions, at the highest of their QoS, with all their Subscription
        Identifiers (MQTT-3.3.4-2, -3); plus one per shared subscription group, to its
        members in turn (online ones first). ``may_read(client_id)``: False leaves that
        client out (the ACL denies it the topic); a group picks among the others."""
        per_client: dict[str, Delivery] = {}
        groups: dict[str, list[tuple[str, Entry]]] = {}
        mqos = message.qos
        for topic_filter, client_id, entry in self.tree.match(message.topic):
            if topic_filter.startswith("$share/"):
                groups.setdefault(topic_filter, []).append((client_id, entry))
                continue
            o = entry.options
            if o.no_local and client_id == message.sender:
                continue  # MQTT-3.8.3-3
            if may_read is not None and client_id not in per_client and not may_read(client_id):
                continue
            qos = min(mqos, o.qos)
            retain = message.retain and o.retain_as_published  # MQTT-3.3.1-12, -13
            d = per_client.get(client_id)
            if d is None:
                ids = [entry.subscription_id] if entry.subscription_id else []
                per_client[client_id] = Delivery(message, qos, retain, ids)
            else:
                d.qos = max(d.qos, qos)
                d.retain = d.retain or retain
                if entry.subscription_id:
                    d.subscription_ids.append(entry.subscription_id)
        out = list(per_client.items())
        for topic_filter, members in groups.items():
            if may_read is not None:
                members = [m for m in members if may_read(m[0])]
                if not members:
                    continue
            out.append(self._pick(topic_filter, members, message, online))
        return out

    def reroute(
        self,
        delivery: Delivery,
        online: Callable[[str], bool],
        may_read: Callable[[str], bool] | None = None,
    ) -> tuple[str, Delivery] | None:
        """Another delivery of ``delivery``'s message to the shared subscription group
        it came through (``delivery.share``), for a member whose session ended with it
        undelivered (4.8.2): to the group's next member in turn, online ones first.
        None if the group has no member left (that ``may_read``)."""
        share = delivery.share
        assert share is not None
        message = delivery.message
        members = [
            (client_id, entry)
            for topic_filter, client_id, entry in self.tree.match(message.topic)
            if topic_filter == share and (may_read is None or may_read(client_id))
        ]
        if not members:
            return None
        return self._pick(share, members, message, online)

    def _pick(
        self,
        topic_filter: str,
        members: list[tuple[str, Entry]],
        message: Message,
        online: Callable[[str], bool],
    ) -> tuple[str, Delivery]:
        up = [m for m in members if online(m[0])] or members
        turn = self._turn.get(topic_filter, 0)
        self._turn[topic_filter] = turn + 1
        client_id, entry = up[turn % len(up)]
        o = entry.options
        ids = [entry.subscription_id] if entry.subscription_id else []
        retain = message.retain and o.retain_as_published
        qos = min(message.qos, o.qos)
        return client_id, Delivery(message, qos, retain, ids, topic_filter)
