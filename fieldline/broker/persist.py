"""Persistence: what outlives the broker process, in one SQLite file.

What is kept: retained messages; and for each persistent session (3.1.1 clean session
0, 5.0 Session Expiry Interval above 0) its subscriptions, its expiry deadline, the
QoS 1/2 messages queued for it and those in flight to it (packet id, PUBLISH or PUBREL
state; for both, the shared subscription it was picked for, which its group's other
members inherit if the session ends: ``_shared_rows`` at load), and the ids of QoS 2
messages it sent that were accepted and not yet released; and the Will of every
connection that has one, until it is published or discarded, so that a broker that
stops or dies with clients connected publishes their Wills when it starts again
(``wills``; a Will waiting for its delay keeps its deadline). QoS 0 messages are not
kept. Times are stored as wall-clock deadlines
(``time.time()``), so a Message Expiry Interval or a Session Expiry Interval keeps
running while the broker is down.

How it is written (a write-behind log, as Mosquitto's autosave and EMQX's
``sync_mode`` do it, done per batch): the event loop never touches the file after
``load()``. Changes it can name (a retained message, a subscription, a session ending)
become SQL operations in a list; a session whose queue or in-flight window may have
changed is marked dirty, and at flush time its rows are brought up to date by a diff
against what was last written (bookkeeping in ``Saved``): queue rows by sequence
number (the queue is FIFO: new rows at the tail, deleted ones at the head), in-flight
rows by packet id and object identity. A flush hands the batch to one writer thread,
which runs every batch waiting in one transaction and commits it (group commit). If a
commit fails, the bookkeeping no longer matches the file: the next batch rewrites the
whole state from memory (``_snapshot``).

Durability: ``"batched"`` flushes every ``persist_interval`` ms with
``synchronous=NORMAL`` (WAL: a killed process loses nothing committed, a power cut may
lose the last commits); a crash loses at most the changes of the last interval.
``"full"`` commits with ``synchronous=FULL`` (an fsync per commit) and the broker
answers a QoS 1/2 PUBLISH only once the commit holding its effects is done
(``after_commit``); it flushes at the end of every loop iteration that has an answer
waiting, so messages arriving together share one commit. A QoS 2 message is also
delivered only then (queued, but ``Message.held``: ``Broker._publish``), a PUBREL
to a subscriber waits for the commit recording its PUBREC (``Connection._release_later``),
and a PUBCOMP to a publisher for the commit recording its PUBREL
(``Connection._complete_later``), so QoS 2 stays exactly once across a crash.

Why plain ``sqlite3`` and not SQLAlchemy: the broker writes a handful of fixed
statements at message rates from a thread of its own; SQLAlchemy's unit of work and
object identity map would add per-row overhead and a dependency for no query it
could write better, while ``executemany`` on prepared statements is what the hot path
wants. The hub, with its ad-hoc queries and migrations, is where SQLAlchemy pays.
"""

from __future__ import annotations

import ast
import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from itertools import islice
from typing import TYPE_CHECKING, Any

from fieldline.mqtt import SERVER, Publish, PubRel, Session, Subscription, Will

from .config import FULL
from .message import Delivery, Message
from .router import Entry
from .sessions import ClientSession

if TYPE_CHECKING:
    from .server import Broker

log = logging.getLogger("fieldline.broker")

SCHEMA_VERSION = 3
_NEVER = 0xFFFFFFFF
_PUBLISH = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS retained(
    topic TEXT PRIMARY KEY, payload BLOB, qos INT, props TEXT, expires REAL);
CREATE TABLE IF NOT EXISTS sessions(
    client_id TEXT PRIMARY KEY, expiry INT, lost REAL, username TEXT, next_id INT,
    dropped INT, expired INT, rate_limited INT);
CREATE TABLE IF NOT EXISTS subscriptions(
    client_id TEXT, filter TEXT, qos INT, no_local INT, rap INT, rh INT, sid INT,
    PRIMARY KEY(client_id, filter)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue(
    client_id TEXT, seq INT, topic TEXT, payload BLOB, qos INT, retain INT, props TEXT,
    expires REAL, sids TEXT, share TEXT, PRIMARY KEY(client_id, seq));
CREATE TABLE IF NOT EXISTS inflight(
    client_id TEXT, packet_id INT, ord INT, state INT, topic TEXT, payload BLOB, qos INT,
    retain INT, props TEXT, share TEXT, expires REAL, PRIMARY KEY(client_id, packet_id));
CREATE TABLE IF NOT EXISTS rx2(
    client_id TEXT, packet_id INT, PRIMARY KEY(client_id, packet_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wills(
    client_id TEXT PRIMARY KEY, topic TEXT, payload BLOB, qos INT, retain INT, props TEXT,
    username TEXT, due REAL);
"""

_PUT_RETAINED = "INSERT OR REPLACE INTO retained VALUES(?,?,?,?,?)"
_DEL_RETAINED = "DELETE FROM retained WHERE topic=?"
_PUT_SESSION = "INSERT OR REPLACE INTO sessions VALUES(?,?,?,?,?,?,?,?)"
_PUT_SUB = "INSERT OR REPLACE INTO subscriptions VALUES(?,?,?,?,?,?,?)"
_DEL_SUB = "DELETE FROM subscriptions WHERE client_id=? AND filter=?"
_PUT_QUEUED = "INSERT OR REPLACE INTO queue VALUES(?,?,?,?,?,?,?,?,?,?)"
_DEL_QUEUED = "DELETE FROM queue WHERE client_id=? AND seq<?"
_PUT_INFLIGHT = "INSERT OR REPLACE INTO inflight VALUES(?,?,?,?,?,?,?,?,?,?,?)"
_DEL_INFLIGHT = "DELETE FROM inflight WHERE client_id=? AND packet_id=?"
_PUT_RX2 = "INSERT OR REPLACE INTO rx2 VALUES(?,?)"
_DEL_RX2 = "DELETE FROM rx2 WHERE client_id=? AND packet_id=?"
_PUT_META = "INSERT OR REPLACE INTO meta VALUES(?,?)"
_PUT_WILL = "INSERT OR REPLACE INTO wills VALUES(?,?,?,?,?,?,?,?)"
_DEL_WILL = "DELETE FROM wills WHERE client_id=?"
_SESSION_TABLES = ("sessions", "subscriptions", "queue", "inflight", "rx2")
_TABLES = ("meta", "retained", *_SESSION_TABLES, "wills")
_DEL_CLIENT = [f"DELETE FROM {table} WHERE client_id=?" for table in _SESSION_TABLES]
# Schema 1 -> 2: the shared subscription a queued or in-flight message was picked for;
# 2 -> 3: the wall-clock deadline of an in-flight message's Message Expiry Interval.
_MIGRATE = {
    1: [f"ALTER TABLE {table} ADD COLUMN share TEXT" for table in ("queue", "inflight")],
    2: ["ALTER TABLE inflight ADD COLUMN expires REAL"],
}

Op = tuple[str, tuple[Any, ...]]


class PersistenceError(Exception):
    """The persistence file cannot be used: unreadable, not an SQLite database, damaged,
    written by an unknown version, or locked by another broker. The message names it."""


class Saved:
    """What the file holds for one persistent session, to write only the difference:
    queue rows ``head`` up to ``tail`` (sequence numbers, as ``ClientSession``'s),
    in-flight rows (packet id -> the Publish or PubRel written, and its order),
    QoS 2 ids received (``rx2``), and ``pending2``: QoS 2 ids routed whose PUBREC waits
    for a commit (kept as received, so a resend after a crash is not routed again)."""

    __slots__ = ("head", "tail", "inflight", "order", "rx2", "pending2")

    def __init__(self, head: int = 0, tail: int = 0) -> None:
        self.head = head
        self.tail = tail
        self.inflight: dict[int, tuple[Any, int]] = {}
        self.order = 0
        self.rx2: set[int] = set()
        self.pending2: set[int] = set()


class _Batch:
    __slots__ = ("ops", "done")

    def __init__(self, ops: list[Op], done: list[Callable[[bool], None]]) -> None:
        self.ops = ops
        self.done = done


def _props(props: dict[str, Any] | None) -> str | None:
    # repr() and ast.literal_eval() round-trip str, int, bytes, lists and tuples exactly,
    # and literal_eval runs no code: the file is data, never a program.
    return None if not props else repr(props)


def _unprops(text: str | None) -> dict[str, Any] | None:
    return None if text is None else ast.literal_eval(text)


class Persistence:
    """The broker's SQLite file at ``path`` and its writer thread. ``durability``:
    ``"batched"`` or ``"full"``; ``interval``: milliseconds between flushes."""

    def __init__(self, path: str, durability: str, interval: int) -> None:
        self.path = path
        self.durability = durability
        self.interval = interval / 1000
        self.full = durability == FULL
        self.ops: list[Op] = []
        self.dirty: set[ClientSession] = set()
        self._done: list[Callable[[bool], None]] = []
        self._db: sqlite3.Connection | None = None
        self._queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._soon = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Broker | None = None
        # client id -> (Will, user name, wall-clock deadline or None) as in the file.
        self.wills: dict[str, tuple[Will, str | None, float | None]] = {}
        self._rewrite = False  # a commit failed: write everything again
        self.loaded: dict[str, int] = {}

    # -- start --------------------------------------------------------------------

    def load(self, broker: Broker) -> None:
        """Open the file (created if missing), check it, and put what it holds into
        ``broker``: retained messages, sessions with their subscriptions, queues,
        in-flight messages and QoS 2 ids. Drops what expired while the broker was
        down. Then starts the writer thread. Raises PersistenceError."""
        loop = self._loop = broker.loop
        self._broker = broker
        try:
            db = sqlite3.connect(self.path, timeout=1.0, check_same_thread=False,
                                 isolation_level=None)  # fmt: skip
        except sqlite3.Error as e:
            raise PersistenceError(f"cannot open {self.path}: {e}") from None
        try:
            self._open(db)
            self._load(db, broker, loop.time(), time.time())
        except PersistenceError:
            db.close()
            raise
        except sqlite3.Error as e:
            db.close()
            raise PersistenceError(f"cannot use {self.path}: {e}") from None
        except Exception as e:  # a row of the wrong shape: literal_eval, types
            db.close()
            raise PersistenceError(f"cannot use {self.path}: damaged row ({e!r})") from None
        self._db = db
        self._thread = threading.Thread(target=self._write, name="fieldline-persist", daemon=True)
        self._thread.start()
        self._timer = loop.call_later(self.interval, self._tick)

    def _open(self, db: sqlite3.Connection) -> None:
        # One broker per file: the exclusive lock is taken by the first write below
        # and held until close, so a second broker fails here ("database is locked").
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            log.warning("%s: journal mode %s, not WAL", self.path, mode)
        db.execute(f"PRAGMA synchronous={'FULL' if self.full else 'NORMAL'}")
        problems = [row[0] for row in db.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise PersistenceError(
                f"cannot use {self.path}: the database is damaged ({'; '.join(problems[:3])})"
            )
        db.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is not None and row[0] in _MIGRATE:  # an older broker's file: add what it lacks
            for version in range(row[0], SCHEMA_VERSION):
                for statement in _MIGRATE[version]:
                    db.execute(statement)
            row = None
        if row is None:
            db.execute(_PUT_META, ("schema", SCHEMA_VERSION))
        elif row[0] != SCHEMA_VERSION:
            db.execute("ROLLBACK")
            raise PersistenceError(
                f"cannot use {self.path}: written with schema {row[0]!r}, this broker "
                f"reads schema {SCHEMA_VERSION}"
            )
        db.execute("COMMIT")

    def _load(self, db: sqlite3.Connection, broker: Broker, now: float, wall: float) -> None:
        def loop_time(t: float | None) -> float | None:
            return None if t is None else now + (t - wall)

        router = broker.router
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM retained WHERE expires<=?", (wall,))
        rows = db.execute("SELECT topic, payload, qos, props, expires FROM retained")
        for topic, payload, qos, props, expires in rows:
            m = Message(topic, payload, qos, True, _unprops(props), now)
            m.expires_at = loop_time(expires)
            router.retain(m)
        row = db.execute("SELECT value FROM meta WHERE key='refused'").fetchone()
        broker.refused_connections = int(row[0]) if row else 0
        sessions = db.execute("SELECT * FROM sessions").fetchall()
        gone = 0
        handoff: list[Delivery] = []  # of sessions that ended while the broker was down
        for cid, expiry, lost, username, next_id, dropped, expired, limited in sessions:
            # A session connected when the broker died counts as lost now.
            lost = wall if lost is None else lost
            if expiry != _NEVER and lost + expiry <= wall:
                handoff += self._shared_rows(db, cid, now, wall)
                for statement in _DEL_CLIENT:
                    db.execute(statement, (cid,))
                gone += 1
                continue
            cs = self._session(db, broker, cid, expiry, username, next_id, now)
            cs.dropped, cs.expired, cs.rate_limited = dropped, expired, limited
            s = cs.session
            s._lost_at = loop_time(lost)
            if expiry != _NEVER:
                left = max(0.0, lost + expiry - wall)
                cs.expiry_timer = broker.loop.call_later(left, broker._end_session, cs)
            broker.sessions.add(cs)
        q = "SELECT client_id, topic, payload, qos, retain, props, username, due FROM wills"
        for cid, topic, payload, qos, retain, props, username, due in db.execute(q):
            will = Will(topic, payload, qos, bool(retain), _unprops(props))
            self.wills[cid] = (will, username, due)
        db.execute("COMMIT")
        if handoff:  # each to another member of its group, as _end_session does (4.8.2)
            broker._reroute(handoff)
        self.loaded = {
            "sessions": len(broker.sessions),
            "retained": len(router.retained),
            "expired_sessions": gone,
            "wills": len(self.wills),
        }

    def _session(
        self,
        db: sqlite3.Connection,
        broker: Broker,
        cid: str,
        expiry: int,
        username: str | None,
        next_id: int,
        now: float,
    ) -> ClientSession:
        cfg = broker.config
        s = Session(SERVER, receive_maximum=cfg.receive_maximum, manual_ack=True)
        s.client_id = cid
        s.session_expiry_interval = expiry
        s._known = True  # resumable: a connection was accepted on it
        s._next_id = next_id
        cs = ClientSession(cid, s)
        cs.username = username
        acl = broker.acl
        q = "SELECT filter, qos, no_local, rap, rh, sid FROM subscriptions WHERE client_id=?"
        for f, qos, no_local, rap, rh, sid in db.execute(q, (cid,)):
            entry = Entry(Subscription(f, qos, bool(no_local), bool(rap), rh), sid)
            broker.router.subscribe(cid, entry)
            cs.subscriptions[f] = entry
        q = "SELECT seq, topic, payload, qos, retain, props, expires, sids, share FROM queue "
        rows = db.execute(q + "WHERE client_id=? ORDER BY seq", (cid,)).fetchall()
        wall = time.time()
        for row in rows:
            d = _delivery(row[1:], now, wall)
            cs.queue.append(d)
            cs.queued_bytes += d.message.size
        first = rows[0][0] if rows else 0
        if rows and rows[-1][0] - first + 1 != len(rows):  # never written so: renumber
            db.execute("DELETE FROM queue WHERE client_id=?", (cid,))
            first = 0
            sv = Saved()
        else:
            sv = Saved(first, first + len(rows))
        cs.seq_head, cs.seq_tail = first, first + len(rows)
        # The ACL file may have changed while the broker was down: check the queue again.
        cs.set_permissions(None if acl is None else acl.permissions(username, cid))
        q = "SELECT packet_id, ord, state, topic, payload, qos, retain, props, share, expires "
        for pid, order, state, topic, payload, qos, retain, props, share, expires in db.execute(
            q + "FROM inflight WHERE client_id=? ORDER BY ord", (cid,)
        ):
            if state == _PUBLISH:
                # Sent before: a resend carries DUP (MQTT-3.3.1-1, MQTT-4.4.0-1).
                p: Any = Publish(topic, payload, qos, bool(retain), True, pid, _unprops(props))
                if expires is not None:  # the resend carries the interval left
                    cs.expiry[pid] = now + (expires - wall)
                if share is not None:  # a shared subscription's QoS 1 one (sent_shared)
                    row = (topic, payload, qos, retain, props, expires, None, share)
                    cs.shared[pid] = _delivery(row, now, wall)
            else:
                p = PubRel(pid)
            s._msgs[pid] = p
            s._order.append(pid)
            sv.inflight[pid] = (p, order)
            sv.order = order + 1
        for (pid,) in db.execute("SELECT packet_id FROM rx2 WHERE client_id=?", (cid,)):
            s._rx2.add(pid)
            sv.rx2.add(pid)
        cs.saved = sv
        return cs

    def _shared_rows(
        self, db: sqlite3.Connection, cid: str, now: float, wall: float
    ) -> list[Delivery]:
        """What the session ``cid``, ended, had not completed for shared subscriptions,
        as ``ClientSession.undelivered_shared`` finds it in memory: its QoS 1 ones in
        flight, then those queued."""
        q = ("SELECT topic, payload, qos, retain, props, expires, NULL, share FROM inflight "
             "WHERE client_id=? AND state=? AND share IS NOT NULL ORDER BY ord")  # fmt: skip
        rows = db.execute(q, (cid, _PUBLISH)).fetchall()
        q = ("SELECT topic, payload, qos, retain, props, expires, sids, share FROM queue "
             "WHERE client_id=? AND share IS NOT NULL ORDER BY seq")  # fmt: skip
        rows += db.execute(q, (cid,)).fetchall()
        return [_delivery(row, now, wall) for row in rows]

    # -- changes, from the broker ---------------------------------------------------

    def retain(self, m: Message) -> None:
        """``m`` was published with RETAIN: store it, or (empty payload) remove the
        retained message of its topic (as ``Router.retain``: also an ``at_once`` one)."""
        if m.payload and not m.at_once:
            self.ops.append((_PUT_RETAINED, (m.topic, m.payload, m.qos, _props(m.properties),
                                             self._wall(m.expires_at))))  # fmt: skip
        else:
            self.ops.append((_DEL_RETAINED, (m.topic,)))

    def will(
        self, client_id: str, will: Will, username: str | None, due: float | None = None
    ) -> None:
        """``client_id``'s connection has ``will``: kept until ``will_gone``. ``due``:
        the wall-clock time it is published (None: when the connection ends)."""
        self.wills[client_id] = (will, username, due)
        self.ops.append((_PUT_WILL, (client_id, will.topic, will.payload, will.qos,
                                     int(will.retain), _props(will.properties), username,
                                     due)))  # fmt: skip

    def will_gone(self, client_id: str, will: Will) -> None:
        """``will`` was published or discarded. (A client id's newer Will stays.)"""
        kept = self.wills.get(client_id)
        if kept is not None and kept[0] is will:
            del self.wills[client_id]
            self.ops.append((_DEL_WILL, (client_id,)))

    def connected(self, cs: ClientSession) -> None:
        """A connection was accepted on ``cs``: it is persistent from now on if its
        Session Expiry Interval is above 0 (all of it is written at the next flush),
        and forgotten by the file otherwise."""
        durable = cs.session.session_expiry_interval > 0
        if durable and cs.saved is None:
            self._forget(cs.client_id)  # rows of an earlier session of that client id
            cs.saved = Saved(cs.seq_head, cs.seq_head)
            for entry in cs.subscriptions.values():
                self.subscribed(cs, entry)
        elif not durable and cs.saved is not None:
            self.ended(cs)
        self.touch(cs)

    def touch(self, cs: ClientSession) -> None:
        """``cs``'s queue, in-flight messages or session state may have changed."""
        if cs.saved is not None:
            self.dirty.add(cs)

    def subscribed(self, cs: ClientSession, entry: Entry) -> None:
        if cs.saved is not None:
            o = entry.options
            self.ops.append((_PUT_SUB, (cs.client_id, o.topic_filter, o.qos, int(o.no_local),
                             int(o.retain_as_published), o.retain_handling,
                             entry.subscription_id)))  # fmt: skip

    def unsubscribed(self, cs: ClientSession, topic_filter: str) -> None:
        if cs.saved is not None:
            self.ops.append((_DEL_SUB, (cs.client_id, topic_filter)))

    def ended(self, cs: ClientSession) -> None:
        """``cs`` ended: its rows go."""
        if cs.saved is not None:
            cs.saved = None
            self.dirty.discard(cs)
            self._forget(cs.client_id)

    def _forget(self, client_id: str) -> None:
        self.ops.extend((statement, (client_id,)) for statement in _DEL_CLIENT)

    def after_commit(
        self, cs: ClientSession, packet_id: int, qos: int, answer: Callable[[bool], None]
    ) -> None:
        """Full durability: call ``answer(ok)`` once what is pending now is committed
        (``ok`` False if the commit failed). A QoS 2 id is kept as received meanwhile."""
        sv = cs.saved
        if qos == 2 and sv is not None:
            sv.pending2.add(packet_id)
            self.dirty.add(cs)

            def done(ok: bool) -> None:
                sv.pending2.discard(packet_id)
                answer(ok)

            self._done.append(done)
        else:
            self._done.append(answer)
        if not self._soon:
            self._soon = True
            assert self._loop is not None
            self._loop.call_soon(self._flush_next_turn)

    def _flush_next_turn(self) -> None:
        # One turn later: the deliveries routed with these messages (Connection.pump_soon,
        # scheduled in the same turn) have gone out by then, so the commit holds them as
        # in flight, with their packet ids, rather than as still queued.
        assert self._loop is not None
        self._loop.call_soon(self.flush)

    # -- writing ----------------------------------------------------------------------

    def _tick(self) -> None:
        assert self._loop is not None
        self.flush()
        self._timer = self._loop.call_later(self.interval, self._tick)

    def flush(self) -> None:
        """Hand every change since the last flush to the writer thread."""
        self._soon = False
        if self._rewrite:
            self._snapshot()
        ops = self.ops
        for cs in self.dirty:
            self._diff(cs, ops)
        self.dirty = set()
        if ops or self._done:
            self._queue.put(_Batch(ops, self._done))
            self.ops = []
            self._done = []

    def _failed(self) -> None:
        # A commit failed, and the bookkeeping of the sessions (Saved) says written what
        # is not: the next batch replaces the whole file's content with memory's.
        self._rewrite = True

    def _snapshot(self) -> None:
        self._rewrite = False
        b = self._broker
        assert b is not None
        ops: list[Op] = [(f"DELETE FROM {table}", ()) for table in _TABLES]
        self.ops = ops
        for m in b.router.retained.values():
            self.retain(m)
        for cs in b.sessions.sessions.values():
            sv = cs.saved
            if sv is not None:
                cs.saved = None
                self.connected(cs)
                assert cs.saved is not None
                cs.saved.pending2 = sv.pending2
        for client_id, (will, username, due) in list(self.wills.items()):
            self.will(client_id, will, username, due)
        ops.append((_PUT_META, ("refused", b.refused_connections)))
        ops.append((_PUT_META, ("schema", SCHEMA_VERSION)))

    def _wall(self, t: float | None) -> float | None:
        if t is None:
            return None
        assert self._loop is not None
        return t - self._loop.time() + time.time()

    def _diff(self, cs: ClientSession, ops: list[Op]) -> None:
        sv = cs.saved
        if sv is None:
            return
        cid = cs.client_id
        s = cs.session
        lost = None if cs.conn is not None else self._wall(s._lost_at)
        row: tuple[Any, ...] = (cid, s.session_expiry_interval, lost, cs.username, s._next_id,
                                cs.dropped, cs.expired, cs.rate_limited)  # fmt: skip
        ops.append((_PUT_SESSION, row))
        # The queue: rows [sv.head, sv.tail) are written; memory holds [seq_head, seq_tail).
        head, tail = cs.seq_head, cs.seq_tail
        if sv.head < head:
            ops.append((_DEL_QUEUED, (cid, head)))
            sv.head = head
        start = max(sv.tail, head)
        if start < tail:
            new = list(islice(reversed(cs.queue), tail - start))
            new.reverse()
            for seq, d in enumerate(new, start):
                m = d.message
                ids = ",".join(map(str, d.subscription_ids)) or None
                ops.append((_PUT_QUEUED, (cid, seq, m.topic, m.payload, d.qos, int(d.retain),
                            _props(m.properties), self._wall(m.expires_at), ids,
                            d.share)))  # fmt: skip
        sv.tail = tail
        # In flight: by packet id; a new object under an id is a new state of it. The
        # rows' ``ord`` follows ``s._order``, which a restart brings back: a PUBREC moves
        # its message behind all sent before (Session._rx_ack), so its PUBREL row gets
        # a new place at the end, as does any row written before whose place is now
        # behind it (PUBRELs resent in the order the PUBRECs came, MQTT-4.6.0-3).
        msgs = s._msgs
        saved = sv.inflight
        last = -1  # the place of the row before, in s._order
        for pid in s._order:
            p = msgs[pid]
            was = saved.get(pid)
            if was is not None and was[0] is p and was[1] > last:
                last = was[1]
                continue
            order = last = sv.order
            sv.order += 1
            saved[pid] = (p, order)
            if p.type == _PUBLISH:
                # The shared subscription of a QoS 1 one (sent_shared): its group gets it
                # if the session ends, after a restart too.
                shared = cs.shared.get(pid)
                share = None if shared is None else shared.share
                row = (cid, pid, order, _PUBLISH, p.topic, p.payload, p.qos, int(p.retain),
                       _props(p.properties), share,
                       self._wall(cs.expiry.get(pid)))  # fmt: skip
            else:
                row = (cid, pid, order, p.type, None, None, None, None, None, None, None)
            ops.append((_PUT_INFLIGHT, row))
        for pid in [pid for pid in saved if pid not in msgs]:
            del saved[pid]
            ops.append((_DEL_INFLIGHT, (cid, pid)))
        rx2 = s._rx2 | sv.pending2 if sv.pending2 else s._rx2
        if rx2 != sv.rx2:
            for pid in rx2 - sv.rx2:
                ops.append((_PUT_RX2, (cid, pid)))
            for pid in sv.rx2 - rx2:
                ops.append((_DEL_RX2, (cid, pid)))
            sv.rx2 = set(rx2)

    def _write(self) -> None:
        # The writer thread: every batch waiting goes into one transaction.
        db = self._db
        assert db is not None and self._loop is not None
        loop = self._loop
        stop = False
        while not stop:
            batches: list[_Batch] = []
            item = self._queue.get()
            while True:
                if item is None:
                    stop = True
                else:
                    batches.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            ok = self._commit(db, (op for b in batches for op in b.ops))
            done = [d for b in batches for d in b.done]
            if not ok:
                done.insert(0, lambda ok: self._failed())
            if done:
                try:
                    loop.call_soon_threadsafe(_call_all, done, ok)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    pass
        db.close()

    def _commit(self, db: sqlite3.Connection, ops: Iterable[Op]) -> bool:
        try:
            db.execute("BEGIN")
            n = 0
            for statement, args in ops:
                db.execute(statement, args)
                n += 1
            if n:
                db.execute("COMMIT")
            else:
                db.execute("ROLLBACK")
        except Exception as e:  # the thread must go on: answers wait for it
            log.error("persistence: cannot write %s: %s", self.path, e)
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            return False
        return True

    async def close(self, refused: int) -> None:
        """Write what is left (and ``refused``, the broker's refused-connection count),
        stop the writer thread and close the file."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.ops.append((_PUT_META, ("refused", refused)))
        self.flush()
        self._queue.put(None)
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join)


def _delivery(row: tuple[Any, ...], now: float, wall: float) -> Delivery:
    # A queue row from topic on, or an in-flight one made to look like it: its
    # Message Expiry Interval, if it has one, from the wall-clock deadline ``expires``
    # or else (in flight: the interval it was sent with) from its properties.
    topic, payload, qos, retain, props, expires, sids, share = row
    m = Message(topic, payload, qos, bool(retain), _unprops(props), now)
    if expires is not None:
        m.expires_at = now + (expires - wall)
    ids = [int(i) for i in sids.split(",")] if sids else []
    return Delivery(m, qos, bool(retain), ids, share)


def _call_all(done: list[Callable[[bool], None]], ok: bool) -> None:
    for d in done:
        d(ok)
