"""Receive-side backpressure of the clients: places, acknowledgement, pausing.

Why it exists: a consumer slower than its broker must not make the client
buffer without bound, and a QoS 1/2 message must not be acknowledged before
the application had it (docs/client.md, "Backpressure"). That is one idea
with its own state, so it lives here rather than in ``_client_base``; it is
a mixin of ``BaseClient`` rather than an object the client holds, so that
both adapters reach it as ``self`` and a board allocates nothing more.

Every message the application has not finished with -- waiting in the inbox
or a stream, or in a callback that has not returned -- holds one of
``max_inbox`` places (``inbox_size``). A QoS 1/2 message is acknowledged
only when its last holder lets go (or, with ``manual_ack``, when the
application calls ``ack()``), so the broker's Receive Maximum window (5.0:
we announce at most ``max_inbox``) and its own inflight window (3.1.1) stop
it from sending more than the application can take. A message that finds
every place taken anyway is held, and nothing more is parsed: a QoS 1/2 one
(or any, with ``inbox_policy="block"``) until a place frees up, the adapter
reading nothing meanwhile (TCP backpressure); a QoS 0 one until the adapter
must read on, when it is dropped and counted in ``dropped`` (at most once
allows it) unless the application made room. While reading is paused the
session's clock stands still, so its keepalive never blames the broker for
bytes we leave unread, and ``_paused_ping()`` keeps sending PINGREQ so that
the broker keeps us.
"""

import sys

from ._errors import LocalProtocolError

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


try:
    from time import monotonic as clock
except ImportError:  # MicroPython: a monotonic clock in seconds from ticks_ms()
    from time import ticks_diff, ticks_ms

    _ticks = [ticks_ms(), 0]

    def clock():
        t = ticks_ms()
        _ticks[1] += ticks_diff(t, _ticks[0])
        _ticks[0] = t
        return _ticks[1] / 1000


_CONNECTED = const(2)
_MICROPYTHON = sys.implementation.name == "micropython"


class Fifo(list):
    """A list whose items are taken oldest first, each ``take()`` in O(1)
    amortized: ``list.pop(0)`` moves every item behind it (a backlog of n
    costs n*n/2 moves), and MicroPython's ``deque`` has a fixed size. Taken
    items are cut off the front once they are half the list, so ``len()``
    may count some; the list is empty once every item is taken, so it tests
    false (and equals ``[]``) exactly when nothing is left."""

    head = 0  # index of the oldest item not taken

    def take(self):
        """Remove and return the oldest item; IndexError if there is none."""
        i = self.head
        item = self[i]
        i += 1
        n = len(self)
        if i == n:
            self.clear()  # also gives the memory back
            i = 0
        elif i * 2 >= n:
            del self[:i]  # moves fewer items than were taken since the last cut
            i = 0
        else:
            self[i - 1] = None  # the application may drop it
        self.head = i
        return item


class Inbox:
    """Mixin of ``BaseClient``: the places of received messages (options
    and counters documented there), their acknowledgement, pausing reads.
    Uses the client's ``session``, ``connack`` and ``_route()``, and the
    adapter's ``_notify()``, which wakes a reader paused for a place."""

    def __init__(self, max_inbox, manual_ack, inbox_policy, receive_maximum):
        if max_inbox is None:
            max_inbox = 32 if _MICROPYTHON else 1000
        self.max_inbox = max_inbox
        self.manual_ack = manual_ack
        if inbox_policy not in ("drop", "block"):
            raise ValueError("inbox_policy must be 'drop' or 'block'")
        self.inbox_policy = inbox_policy
        if max_inbox and max_inbox < receive_maximum:
            # 5.0: the broker may then never send more unacknowledged QoS 1/2
            # messages than we have places for (MQTT-3.3.4-9).
            receive_maximum = max_inbox
        self.receive_maximum = receive_maximum  # announced in a 5.0 CONNECT
        self.inbox_size = 0  # messages the application has not finished with
        self.inbox_peak = 0  # the most there were at once
        self.dropped = 0  # QoS 0 messages dropped for want of a place
        self._inbox = Fifo()  # messages no route took, for recv()/messages()
        self._holds = {}  # id(message) -> how many holders have not let go
        self._unacked = {}  # packet id -> QoS 1/2 message not yet acknowledged
        self._held = None  # a message waiting for a place: reading paused
        self._lag = 0.0  # seconds of paused reading, hidden from the session's clock
        self._paused_at = 0.0
        self._ping_due = None  # while paused: when to send the next PINGREQ

    def _inbox_connected(self, session_present):
        # After each accepted CONNACK.
        if not session_present:
            # The broker forgot what we owe it: answering an old message now
            # could acknowledge a new one that reuses its packet id.
            self._unacked.clear()
        if self._held is not None:  # still paused: keepalive restarts with this connection
            k = self.session.keep_alive
            self._ping_due = clock() + k / 2 if k else None

    def _has_room(self):
        return not self.max_inbox or self.inbox_size < self.max_inbox

    def _paused(self):
        # A message waits for a place. (Not while connecting: _open() must
        # still read the CONNACK.)
        return self._held is not None and self.connack is not None

    def _deliver(self, msg):
        if self._has_room():
            self._admit(msg)
        else:
            # Stop here until there is a place. The adapter then waits, or
            # drops a QoS 0 message (_droppable) if the application has not
            # made room by the time it must read on. QoS 1/2 is never dropped:
            # the broker would not send it again on this connection.
            self._held = msg
            now = self._paused_at = clock()
            k = self.session.keep_alive
            if k:
                d = self.session.next_deadline()  # when the session would ping
                due = now + k / 2
                self._ping_due = due if d is None else min(due, d + self._lag)

    def _unpause(self):
        # Reading goes on (the session's clock with it); returns the held message.
        msg = self._held
        self._held = None
        self._lag += clock() - self._paused_at
        return msg

    def _admit(self, msg):
        # The message takes a place until its last holder lets go; routing
        # holds it meanwhile.
        n = self.inbox_size = self.inbox_size + 1
        if n > self.inbox_peak:
            self.inbox_peak = n
        if msg.qos:
            self._unacked[msg.packet_id] = msg
        self._holds[id(msg)] = 1
        try:
            self._route(msg)
        finally:
            self._release(msg)

    def _hold(self, msg):
        k = id(msg)
        self._holds[k] = self._holds.get(k, 0) + 1

    def _release(self, msg):
        """A holder is done with ``msg``; after the last one its place is
        free and, unless manual_ack, a QoS 1/2 message is acknowledged."""
        k = id(msg)
        n = self._holds[k] - 1
        if n:
            self._holds[k] = n
            return
        del self._holds[k]
        self.inbox_size -= 1
        if msg.qos and not self.manual_ack:
            self._answer(msg)
        if self._held is not None:
            self._notify()  # the adapter wakes a reader paused for a place

    def _answer(self, msg):
        """Acknowledge ``msg`` (PUBACK, or PUBREC for QoS 2) if it still
        waits for that; returns True if it did."""
        pid = msg.packet_id
        if not msg.qos or self._unacked.get(pid) is not msg:
            return False  # QoS 0, answered already, or from a session the broker lost
        del self._unacked[pid]
        try:
            self.session.ack(pid)
        except LocalProtocolError:  # the session state it belonged to is gone
            return False
        return True

    def _droppable(self):
        # The held message may be dropped rather than waited for: QoS 0 is at
        # most once, and dropping keeps the connection served.
        return not self._held.qos and self.inbox_policy != "block"

    def _drop_held(self):
        self._unpause()
        self.dropped += 1

    def _now(self):
        # The session's clock stands still while reading is paused.
        t = self._paused_at if self._held is not None else clock()
        return t - self._lag

    def _paused_ping(self):
        """While reading is paused: send PINGREQ when due, so that the broker
        keeps the connection. Returns the seconds until the next, or None."""
        due = self._ping_due
        if due is None:
            return None
        now = clock()
        if now >= due:
            if self.session.state == _CONNECTED:
                self.session.ping()
            due = self._ping_due = now + self.session.keep_alive
        return due - now
