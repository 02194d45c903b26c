"""One client connection: a thin asyncio adapter over ``Session(SERVER)``.

Bytes read go to ``Session.receive_data``; its events go to the broker; whatever the
session queued goes to the transport. An ``asyncio.Protocol`` rather than a task over
streams: the transport tells us when the peer stops taking bytes (``pause_writing``), so
deliveries wait in the session's bounded queue instead of in an unbounded write buffer.
Time comes from the loop clock; keepalive runs on one timer, re-armed at the session's
``next_deadline()``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

from fieldline.mqtt import (
    SERVER,
    Connect,
    LocalProtocolError,
    RemoteProtocolError,
    Session,
    Will,
)

if TYPE_CHECKING:
    from .config import Listener
    from .server import Broker
    from .sessions import ClientSession

log = logging.getLogger("fieldline.broker")

# Packet types (fieldline.mqtt._const names them; plain ints are quicker to compare).
_CONNECT = 1
_PUBLISH = 3
_PUBACK = 4
_PUBREC = 5
_PUBREL = 6
_PUBCOMP = 7
_SUBSCRIBE = 8
_UNSUBSCRIBE = 10
_DISCONNECT = 14
_AUTH = 15
_CONNECTED = 2
_CLOSED = 3
_DISCONNECT_WITH_WILL = 0x04

# Seconds a closed connection may take to flush before it is cut (a peer that stopped
# reading would otherwise hold it open).
_LINGER = 5.0

# Events one connection may have handled in one turn of the event loop before the
# other connections get theirs (``Connection._run``): a read can hold thousands of
# small packets. A SUBSCRIBE or UNSUBSCRIBE spends it all: each can cost a walk of
# every retained message and thousands of filters, and a client that sends them
# back to back must not hold up everyone else for all of them.
_TURN_EVENTS = 256


class Connection(asyncio.Protocol):
    """The broker's side of one network connection. ``client``: the ClientSession once
    the CONNECT is accepted. ``will``: the Will to publish if the connection ends
    without a normal DISCONNECT. ``window``: QoS 1/2 messages we may have in flight
    towards the client (its Receive Maximum, capped by ours). ``username``: the user
    name of the accepted CONNECT. ``reason``: why it ended, for plug-ins' on_disconnect:
    the reason code of the DISCONNECT the client sent or the broker sent (or, to a
    3.1.1 client, would have sent); None while open or if none was. ``listener``: the
    one it came in on (None: made by hand). ``auth_connect``: the CONNECT while an
    MQTT 5.0 enhanced authentication runs; ``auth_step``: that exchange's step (or a
    re-authentication's); ``auth_handler``: the index of the plug-in running it."""

    def __init__(self, broker: Broker, listener: Listener | None = None) -> None:
        cfg = broker.config
        store = broker.persist
        self.broker = broker
        self.listener = listener
        self.config = cfg
        self.loop = broker.loop
        self.session = Session(
            SERVER,
            receive_maximum=cfg.receive_maximum,
            max_packet_size=cfg.max_packet_size,
            topic_alias_maximum=cfg.topic_alias_maximum,
            auto_alias=True,
            manual_ack=True,  # the broker answers a QoS 1/2 PUBLISH once it is routed
            # Durability "full": a PUBREC for one of our QoS 2 messages is an event, and
            # its PUBREL waits for the commit recording it (_release_later).
            # Likewise a PUBREL from the client is an event, and its PUBCOMP waits for
            # the commit recording the message released (_complete_later).
            released_events=store is not None and store.full,
        )
        self.transport: asyncio.Transport | None = None
        self.client: ClientSession | None = None
        self.will: Will | None = None
        self.username: str | None = None
        self.auth_connect: Connect | None = None
        self.auth_step = 0
        self.auth_handler: int | None = None
        self.reason: int | None = None
        self.window = cfg.max_inflight
        self.peer = ""
        self._paused = False
        self._eof = False
        self._ended = False
        self._held = False
        self._read_paused = False  # reading stopped: too much waits while held
        self._lost = False  # the peer closed while held, with packets still owed
        self._pump_due = False
        self._yielded = False  # held until the next turn of the loop (_run)
        self._timer: asyncio.TimerHandle | None = None
        self._grace = 0.0  # loop time before which Keep Alive cannot run out (release())
        # Made at the TCP accept, a TLS listener's too (asyncio calls the factory
        # before the handshake): connect_timeout counted from now covers the TLS and
        # WebSocket handshakes and the CONNECT, one deadline for all.
        self._deadline = self.loop.time() + cfg.connect_timeout

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self.transport = cast(asyncio.Transport, transport)
        t.set_write_buffer_limits(high=self.config.max_write_buffer)
        peer = t.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.broker.connections.add(self)
        self._timer = self.loop.call_at(self._deadline, self._no_connect)

    def data_received(self, data: bytes) -> None:
        self.broker.counters.bytes_in += len(data)
        s = self.session
        s.receive_data(data, self.loop.time())
        if self._held:
            # Read on while held, to see the peer close (eof_received,
            # connection_lost), but keep at most one largest packet waiting: beyond
            # it, stop reading until release(), as the session bounds what waits
            # while it parses nothing (Session.next_event, overflow).
            if _waiting(s) > s.max_packet_size and not self._read_paused:
                self._read_paused = True
                if self.transport is not None:
                    self.transport.pause_reading()
            return
        self._run()
        cs = self.client
        if cs is not None and cs.saved is not None:
            self.broker.touch(cs)  # acks change what is in flight

    def eof_received(self) -> bool:
        self._eof = True
        self.session.receive_data(b"", self.loop.time())
        if self._held:
            if self._abandoned():
                return False
            # Packets are owed (release() handles them, then closes): keep the
            # socket open for the answers where a half-closed one can be written to
            # (plain TCP; TLS and WebSocket close it, and connection_lost waits).
            t = self.transport
            return t is not None and t.can_write_eof()
        self._run()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._held and not self._ended and not self._abandoned():
            self._lost = True  # release() handles what is owed, writing nothing, then ends
            return
        self._end()

    def _abandoned(self) -> bool:
        # The peer closed while held. Before its CONNECT is accepted, with nothing
        # sent after the packet being decided, nothing is owed: end now, and the
        # decision (a password hash, a plug-in's answer) is skipped (it checks
        # ``ended``), so CONNECTs their clients gave up on cost nothing more.
        # Otherwise what the client sent is handled in order first, as it would
        # have been without the hold: MQTT 3.1.4 lets a client send packets behind
        # its CONNECT without waiting for the CONNACK (a publisher may send
        # CONNECT, PUBLISH, DISCONNECT and close), and a PUBLISH being decided goes
        # out before the client's Will.
        if self.session.state >= _CONNECTED or _waiting(self.session):
            return False
        log.info("%s %s: closed by the client while its CONNECT was decided",
                 self.peer, self._name())  # fmt: skip
        self.close()
        return True

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self.pump()

    # -- driving the session ------------------------------------------------------

    def _run(self) -> None:
        s = self.session
        budget = _TURN_EVENTS
        try:
            while not self._ended and not self._held:
                ev = s.next_event()
                if ev is None:
                    break
                self._dispatch(ev)
                t = ev.type
                budget -= _TURN_EVENTS if t == _SUBSCRIBE or t == _UNSUBSCRIBE else 1
                if budget <= 0 and not self._held:
                    self._yield()
                    return
        except RemoteProtocolError as e:
            # The session queued the answer carrying e.reason_code (CONNACK or
            # DISCONNECT); send it, then close.
            log.info("%s %s: %s", self.peer, self._name(), e)
            self._ending(e.reason_code)
            self.close()
            return
        if self._ended or self._held:
            return
        if s.state >= _CLOSED or self._eof or self._lost:
            self.close()
        else:
            self.flush()

    def _dispatch(self, ev: Any) -> None:
        t = ev.type
        if t == _PUBLISH:
            self.broker.on_publish(self, ev)
        elif t == _PUBACK or t == _PUBREC or t == _PUBCOMP:
            if t == _PUBREC and ev.reason_code < 0x80:
                self._release_later(ev.packet_id)  # released_events: durability "full"
            else:
                self.pump()  # one of ours completed: room in the window
        elif t == _PUBREL:
            self._complete_later(ev.packet_id)  # released_events: durability "full"
        elif t == _SUBSCRIBE:
            self.broker.on_subscribe(self, ev)
        elif t == _UNSUBSCRIBE:
            self.broker.on_unsubscribe(self, ev)
        elif t == _CONNECT:
            self.broker.login.on_connect(self, ev)
        elif t == _DISCONNECT:
            self._ending(ev.reason_code)
            if ev.reason_code != _DISCONNECT_WITH_WILL:
                self.broker.discard_will(self)  # MQTT-3.1.2-10
        elif t == _AUTH:
            self.broker.login.on_auth(self, ev)

    def _release_later(self, packet_id: int) -> None:
        # The client accepted our QoS 2 message ``packet_id`` (PUBREC), and the session
        # queued the PUBREL. Under durability "full" it waits for the commit that records
        # the message released: once the client has its PUBREL it may answer PUBCOMP and
        # forget the id, and a broker that died before that commit would send the
        # PUBLISH again, which the client would take as a new message. Not for a session
        # the file does not keep: a crash ends it, nothing is sent again.
        cs = self.client
        store = self.broker.persist
        out = self.session._out  # packets queued, not yet taken (data_to_send)
        if cs is None or cs.saved is None or store is None or not out:
            return
        if out[-1][0] != _PUBREL << 4 | 2:  # its fixed header's first byte
            return
        data = out.pop()  # that PUBREL, the last packet queued (Session._rx_ack)
        cs.releasing = cs.releasing | {packet_id}
        self.broker.touch(cs)

        def released(ok: bool) -> None:
            cs.releasing = cs.releasing - {packet_id}
            s = self.session
            rel = s._msgs.get(packet_id)
            # Sent already if the session moved to a connection accepted since (the
            # resend of its in-flight messages; Login waits for this commit, though).
            if self.client is cs and cs.conn is self and rel is not None and rel.type == _PUBREL:
                t = self.transport
                if t is not None and not self._ended and not self._lost:
                    self.broker.counters.bytes_out += len(data)
                    t.write(data)

        store.after_commit(cs, packet_id, 0, released)

    def _complete_later(self, packet_id: int) -> None:
        # The client released its QoS 2 message ``packet_id`` (PUBREL): the session
        # forgot the id and queued the PUBCOMP. Under durability "full" it waits for the
        # commit that records the id released: once the client has its PUBCOMP it may
        # send a new message under that id at once (MQTT-4.3.3-12), and a broker that
        # died before that commit would hold the id as unreleased after its restart and
        # drop the new message as a resend of the old one. A PUBREL the client sends
        # again on a later connection waits for a commit too, one as late or later.
        cs = self.client
        store = self.broker.persist
        out = self.session._out  # packets queued, not yet taken (data_to_send)
        if cs is None or cs.saved is None or store is None or not out:
            return
        if out[-1][0] != _PUBCOMP << 4:  # its fixed header's first byte
            return
        data = out.pop()  # that PUBCOMP, the last packet queued (Session._rx_pubrel)
        self.broker.touch(cs)

        def completed(ok: bool) -> None:
            # Not on a later connection of the session: the client sends the PUBREL
            # again there, and that one is answered.
            t = self.transport
            if cs.conn is self and t is not None and not self._ended and not self._lost:
                self.broker.counters.bytes_out += len(data)
                t.write(data)

        store.after_commit(cs, packet_id, 0, completed)

    def _yield(self) -> None:
        # This turn's events are spent: write their answers, then hold (reading on,
        # up to one packet of max_packet_size waiting) until the loop has run the
        # other connections' callbacks; their events come in between.
        self.flush()
        if self._ended:
            return
        self.hold()
        self._yielded = True
        self.loop.call_soon(self._resume)

    def _resume(self) -> None:
        if self._yielded:
            self._yielded = False
            self.release()
            cs = self.client
            if cs is not None and cs.saved is not None:
                self.broker.touch(cs)  # as data_received() does after its _run()

    def hold(self) -> None:
        """Handle no more events until release(): the broker is deciding about the
        CONNECT, an AUTH, or (an async plug-in hook) a PUBLISH or SUBSCRIBE. The
        session keeps what is read meanwhile, up to one packet of max_packet_size
        (then reading stops until release()). A peer that closes meanwhile is
        noticed: before its CONNECT is accepted, with nothing sent behind the held
        packet, the connection ends at once (``ended``: the decision is skipped);
        otherwise it ends once release() has handled what the client sent."""
        self._held = True

    def release(self) -> None:
        """Handle the events that waited (or close, if the CONNECT was refused) and
        read again. Keep Alive starts a full period again: while held, the broker read
        nothing, so what the client sent meanwhile (PINGREQ) is no silence of its
        (MQTT-3.1.2-22 counts packets the server receives)."""
        self._held = False
        if self._ended:
            return
        if self._lost:
            self._run()  # what the client sent before it closed; then it ends
            return
        k = self.session.keep_alive
        if k and self.session.state == _CONNECTED:
            self._grace = self.loop.time() + k * 3 / 2
            if self._timer is None:
                self._arm()  # it ran out while held (_tick)
        if self._read_paused:
            self._read_paused = False
            if self.transport is not None:
                self.transport.resume_reading()
        self._run()

    @property
    def ended(self) -> bool:
        """Whether the connection is closed and forgotten by the broker."""
        return self._ended

    def flush(self) -> None:
        """Write what the session queued."""
        data = self.session.data_to_send()
        if data and self.transport is not None and not self._ended and not self._lost:
            self.broker.counters.bytes_out += len(data)
            self.transport.write(data)
            self._check_backlog(self.transport)

    def _check_backlog(self, t: Any) -> None:
        # Deliveries wait in the queue once max_write_buffer bytes are unsent, so
        # beyond that, one largest packet and a margin only answers can pile up:
        # acks and PINGRESPs to a client that sends and never reads. Its memory
        # would grow with what it sends: drop the connection.
        cfg = self.config
        if t.get_write_buffer_size() > cfg.max_write_buffer + cfg.max_packet_size + 65536:
            log.warning("%s %s: reads nothing of what it is sent; connection dropped",
                        self.peer, self._name())  # fmt: skip
            self._end()
            t.abort()

    def pump(self) -> None:
        """Hand queued deliveries to the session while the client's window has room
        (QoS 1/2) and its connection takes bytes, then write them."""
        cs = self.client
        s = self.session
        if cs is None or s.state != _CONNECTED or self._ended or self._lost:
            return
        q = cs.queue
        now = self.loop.time()
        t = self.transport
        if t is None:
            return
        room = self.config.max_write_buffer - t.get_write_buffer_size()
        v5 = s.version == 5
        chunks = []
        sent = self.broker.counters.sent  # PUBLISHes by QoS, bumped in place
        sent_bytes = 0
        held = False
        while q and not self._paused and room > 0:
            d = q[0]
            if d.message.held is not None:
                held = True  # its commit first (Broker._publish); the rest waits, in order
                break
            if d.qos and s.inflight >= self.window:
                break
            stale = cs.seq_head < cs.recheck_until  # queued under other rights
            cs.dequeue()
            m = d.message
            if m.expires_at is not None and m.expired(now):
                # Interval 0 (3.3.2.3.3): alive only in the first pump after it was
                # queued, where its delivery starts at once; not after waiting.
                if not m.at_once or d.pump != cs.pumps:
                    cs.expired += 1
                    continue
            if stale and cs.permissions is not None and not cs.permissions.can_read(m.topic):
                cs.dropped += 1  # no longer readable: another user, a reloaded ACL
                continue
            props = m.outgoing_properties(now, d.subscription_ids) if v5 else None
            try:
                pid = s.publish(m.topic, m.payload, d.qos, d.retain, props)
            except LocalProtocolError:
                cs.dropped += 1  # larger than the client's Maximum Packet Size (MQTT-3.1.2-25)
                continue
            if pid is not None:
                if v5:
                    cs.sent(pid, m.expires_at)  # a resend carries the time left then
                if d.share is not None or cs.shared:
                    cs.sent_shared(pid, d)  # another member's if the session ends
            data = s.data_to_send()
            room -= len(data)
            chunks.append(data)
            sent[d.qos] += 1
            sent_bytes += len(m.payload)
        if not held:  # one held up behind a commit has not missed its start
            cs.pumps += 1  # what an interval 0 message queued before this pump missed expired
        data = s.data_to_send()  # anything else queued (acks, SUBACK)
        if data:
            chunks.append(data)
        c = self.broker.counters
        c.sent_bytes += sent_bytes
        if chunks:
            c.bytes_out += sum(len(chunk) for chunk in chunks)
            t.writelines(chunks)
            self._check_backlog(t)
            if self._ended:
                return
        if q and room <= 0 and not self._paused:
            # The kernel took what the room allowed without the transport
            # filling up, so no resume_writing() will come: go on next turn.
            self.pump_soon()
        if cs.saved is not None:
            self.broker.touch(cs)

    def pump_soon(self) -> None:
        """pump() once the event loop has run what else is ready: deliveries
        routed in one turn (a burst read from a publisher) leave in one write,
        not one system call and TCP segment each."""
        if not self._pump_due:
            self._pump_due = True
            self.loop.call_soon(self._pump_now)

    def _pump_now(self) -> None:
        self._pump_due = False
        self.pump()

    def close(self, reason_code: int | None = None) -> None:
        """Send DISCONNECT with ``reason_code`` if given (5.0 only: a 3.1.1 server has
        none), write what is queued and close. The broker forgets the connection now."""
        if self._ended:
            return
        if reason_code is not None:
            self._ending(reason_code)
            try:
                self.session.disconnect(reason_code)
            except LocalProtocolError:
                pass  # no connection accepted yet, or already closing
        self.flush()
        t = self.transport
        self._end()
        if t is not None:
            t.close()
            if t.get_write_buffer_size():
                self.loop.call_later(_LINGER, t.abort)

    # -- timers ---------------------------------------------------------------------

    def start_keepalive(self) -> None:
        """Stop the CONNECT timer and run the keepalive one (MQTT-3.1.2-24: 1.5 x)."""
        if self._timer is not None:
            self._timer.cancel()
        self._arm()

    def _arm(self) -> None:
        d = self.session.next_deadline()
        if d is not None and d < self._grace:
            d = self._grace  # a hold ended lately (release())
        self._timer = None if d is None else self.loop.call_at(d, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._held:
            return  # reading nothing from the client, it cannot be silent: release() re-arms
        now = self.loop.time()
        if now < self._grace:
            self._arm()
            return
        try:
            self.session.tick(now)
        except RemoteProtocolError as e:
            log.info("%s %s: %s", self.peer, self._name(), e)
            self._ending(e.reason_code)
            self.close()
            return
        self._arm()

    def _no_connect(self) -> None:
        log.info("%s: no CONNECT within %gs", self.peer, self.config.connect_timeout)
        self.close()

    # -- ending ---------------------------------------------------------------------

    def _ending(self, reason_code: int | None) -> None:
        if self.reason is None:
            self.reason = reason_code  # the first reason given is the one

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.broker.connections.discard(self)
        self.broker.on_connection_end(self)

    def _name(self) -> str:
        return repr(self.session.client_id) if self.session.client_id else "(no CONNECT)"


def _waiting(s: Session) -> int:
    """Bytes (or events) ``s`` holds that no event has been made of yet.
    (fieldline.mqtt has no public call for it; Session.next_event reads the same.)"""
    return s._parser.buffered() + len(s._events)
