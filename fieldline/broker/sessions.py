"""The session store: what the broker keeps per client id, connected or not.

A ``ClientSession`` holds the sans-IO ``Session`` (packet ids and the QoS 1/2 messages
in flight, resent when the session resumes), the client's subscriptions, and a bounded
queue of deliveries not yet handed to the ``Session``: they wait there while the client
is offline, while its Receive Maximum is reached, or while its connection does not take
bytes. The queue is where a slow or absent subscriber costs memory, so it has limits (a
count of messages and of their bytes) and a drop policy with counters.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import TYPE_CHECKING, Any

from fieldline.mqtt import Publish, Session, Will

from .acl import Permissions
from .config import DROP_OLDEST, BrokerConfig
from .limits import TokenBucket
from .message import Delivery
from .router import Entry

if TYPE_CHECKING:
    from .connection import Connection
    from .persist import Saved


_NONE: frozenset[int] = frozenset()


class ClientSession:
    """The broker's state for one client id. ``conn``: its live connection, or None.
    ``permissions``: what the ACL file lets it read and write (None: no ACL file), for
    the user name of its latest connection.
    ``queued_bytes``: the bytes of the messages in ``queue`` (``Message.size``).
    ``dropped``: deliveries lost to the queue limits or too large for the client;
    ``expired``: queued deliveries whose Message Expiry Interval ran out.
    ``bucket``: its publish-rate token bucket (None: no limit, or nothing published
    yet); ``rate_limited``: its PUBLISHes dropped for ``max_publish_rate``.
    ``seq_head``, ``seq_tail``: sequence numbers of the first delivery in ``queue`` and
    of the next one queued; ``saved``: what the persistence file holds of it (None: not
    persisted; see persist.py); ``username``: of its latest connection.
    ``recheck_until``: deliveries with a sequence number below it were queued under
    other ``permissions`` (``set_permissions``) and are checked again as they leave.
    ``expiry``: packet id -> loop time the Message Expiry Interval of the PUBLISH sent
    under it runs out, for the resend (``sent``, ``refresh_expiry``).
    ``shared``: packet id -> the QoS 1 delivery for a shared subscription sent under it,
    which another member of the group gets if the session ends unacknowledged
    (``sent_shared``, ``undelivered_shared``). ``pumps``: how many times its connection
    tried to hand the queue to the session (``Connection.pump``), to tell a message
    with a Message Expiry Interval of 0 whether its delivery starts at once.
    ``releasing``: packet ids of QoS 2 messages the client accepted (PUBREC) whose
    PUBREL waits for the commit recording them released (durability "full":
    ``Connection._release_later``)."""

    def __init__(self, client_id: str, session: Session) -> None:
        self.client_id = client_id
        self.session = session
        self.subscriptions: dict[str, Entry] = {}
        self.queue: deque[Delivery] = deque()
        self.queued_bytes = 0
        self.conn: Connection | None = None
        self.dropped = 0
        self.expired = 0
        self.bucket: TokenBucket | None = None
        self.rate_limited = 0
        self.expiry_timer: asyncio.TimerHandle | None = None
        self.will_timer: asyncio.TimerHandle | None = None
        self.pending_will: Will | None = None  # waiting for its Will Delay Interval
        self.permissions: Permissions | None = None
        self.username: str | None = None
        self.seq_head = 0
        self.seq_tail = 0
        self.recheck_until = 0
        self.saved: Saved | None = None
        self.expiry: dict[int, float] = {}
        self.shared: dict[int, Delivery] = {}
        self.pumps = 0
        # Empty for nearly every session: a shared frozenset, not a set each (~200 B
        # per connection, against the per-connection memory goal).
        self.releasing: frozenset[int] = _NONE

    def set_permissions(self, permissions: Permissions | None) -> None:
        """New rights: another user name on this session, or a reloaded ACL file. What
        is queued was routed under the old ones: it is checked again as it leaves."""
        self.permissions = permissions
        self.recheck_until = self.seq_tail

    def enqueue(self, delivery: Delivery, config: BrokerConfig) -> bool:
        """Queue ``delivery``; returns False if it was not kept. QoS 0 messages are not
        kept for an offline client (MQTT 5.0 3.1.2.4 lets the broker choose). Beyond
        ``config.max_queued_messages`` messages or ``config.max_queued_bytes`` bytes
        (payload, topic and properties: ``Message.size``), ``config.queue_policy``
        drops the oldest ones or the new one, and counts each; a message larger than
        the byte limit on its own is always the one dropped.
        A message with a Message Expiry Interval of 0 is not kept for an offline client
        (its delivery cannot start before the interval passed: MQTT-3.3.2-5), and
        counted as expired."""
        if self.conn is None:
            if not delivery.qos:
                return False
            if delivery.message.at_once:
                self.expired += 1
                return False
        if delivery.message.at_once:
            delivery.pump = self.pumps  # it goes in the next pump, or never
        q = self.queue
        size = delivery.message.size
        max_count = config.max_queued_messages
        max_bytes = config.max_queued_bytes
        if len(q) >= max_count or self.queued_bytes + size > max_bytes:
            if config.queue_policy != DROP_OLDEST or size > max_bytes:
                self.dropped += 1
                return False
            while q and (len(q) >= max_count or self.queued_bytes + size > max_bytes):
                self.dequeue()
                self.dropped += 1
        q.append(delivery)
        self.queued_bytes += size
        self.seq_tail += 1
        return True

    def dequeue(self) -> Delivery:
        """Take the oldest delivery off the queue. Raises IndexError if it is empty."""
        d = self.queue.popleft()
        self.queued_bytes -= d.message.size
        self.seq_head += 1
        return d

    def sent(self, packet_id: int, expires_at: float | None) -> None:
        """A QoS 1/2 PUBLISH went out under ``packet_id``; its Message Expiry Interval
        runs out at loop time ``expires_at`` (None: never)."""
        self._note(self.expiry, packet_id, expires_at)

    def sent_shared(self, packet_id: int, delivery: Delivery) -> None:
        """A QoS 1/2 PUBLISH went out under ``packet_id`` for ``delivery``: remember it
        if it is a QoS 1 one for a shared subscription."""
        shared = delivery.share is not None and delivery.qos == 1
        self._note(self.shared, packet_id, delivery if shared else None)

    def _note(self, table: dict[int, Any], packet_id: int, value: Any) -> None:
        # What a packet id in flight carries (None: nothing). Completed ids are
        # forgotten in bulk once the table outgrows what can be in flight.
        if value is None:
            if table:
                table.pop(packet_id, None)  # the id's earlier message is complete
            return
        table[packet_id] = value
        if len(table) > 2 * self.session.inflight + 16:
            msgs = self.session._msgs  # forget the messages completed since
            for pid in [pid for pid in table if pid not in msgs]:
                del table[pid]

    def undelivered_shared(self) -> list[Delivery]:
        """The deliveries for shared subscriptions this session has not completed, for
        its group's other members when it ends (4.8.2): the QoS 1 ones in flight, then
        those still queued. A QoS 2 one in flight stays: its delivery started, and no
        other member may get it (MQTT-4.8.2-5)."""
        msgs = self.session._msgs
        out = [d for pid, d in self.shared.items() if isinstance(msgs.get(pid), Publish)]
        out += [d for d in self.queue if d.share is not None]
        return out

    def refresh_expiry(self, now: float) -> None:
        """The session resumes: give each PUBLISH in flight the Message Expiry Interval
        left at ``now`` before it is sent again (MQTT-3.3.2-6: the value sent is the
        one received minus the time the message waited in the server). One already
        run out gets 0, the time it has left: its delivery started, so it is still
        sent (MQTT-4.4.0-1; MQTT-3.3.2-5 deletes only a copy whose delivery has not
        started), and 0 is a lifetime of none left, as the broker reads a 0 it
        receives (3.3.2.3.3)."""
        msgs = self.session._msgs
        for pid, expires_at in list(self.expiry.items()):
            p = msgs.get(pid)
            if not isinstance(p, Publish):  # complete, or a QoS 2 one at PUBREL
                del self.expiry[pid]
                continue
            props = dict(p.properties) if p.properties else {}
            props["message_expiry_interval"] = max(0, math.ceil(expires_at - now))
            p.properties = props

    def clear_queue(self) -> None:
        self.queue.clear()
        self.queued_bytes = 0
        self.seq_head = self.seq_tail

    def cancel_timers(self) -> None:
        for timer in (self.expiry_timer, self.will_timer):
            if timer is not None:
                timer.cancel()
        self.expiry_timer = self.will_timer = None


class SessionStore:
    """Sessions by client id."""

    def __init__(self) -> None:
        self.sessions: dict[str, ClientSession] = {}

    def __len__(self) -> int:
        return len(self.sessions)

    def get(self, client_id: str) -> ClientSession | None:
        return self.sessions.get(client_id)

    def add(self, session: ClientSession) -> None:
        self.sessions[session.client_id] = session

    def remove(self, session: ClientSession) -> None:
        """Forget ``session`` if it is still the one stored under its client id."""
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]

    def online(self, client_id: str) -> bool:
        """True if ``client_id`` has a live connection."""
        s = self.sessions.get(client_id)
        return s is not None and s.conn is not None

    def stats(self) -> dict[str, Any]:
        """Counts for logs and tests: sessions, connected, queued (messages),
        queued_bytes (their sizes), dropped, expired, rate_limited."""
        ss = self.sessions.values()
        return {
            "sessions": len(self.sessions),
            "connected": sum(1 for s in ss if s.conn is not None),
            "queued": sum(len(s.queue) for s in ss),
            "queued_bytes": sum(s.queued_bytes for s in ss),
            "dropped": sum(s.dropped for s in ss),
            "expired": sum(s.expired for s in ss),
            "rate_limited": sum(s.rate_limited for s in ss),
        }
