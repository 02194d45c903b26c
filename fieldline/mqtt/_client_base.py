"""What the blocking and the asyncio client share, free of I/O.

``BaseClient`` turns the constructor's options into a CONNECT, remembers the
subscriptions to restore them when the broker has lost the session, handles
what the session receives, routes incoming messages to callbacks and message
streams, and plans reconnects. ``Client`` (blocking sockets) and
``AsyncClient`` (asyncio) own the socket and the waiting; each is a thin
adapter over this and the sans-IO ``Session``. Runs on MicroPython: no
typing, no dataclasses.

Receive-side backpressure (places for received messages, acknowledging them
once handed over, pausing reads) is the ``Inbox`` mixin, in
``_client_inbox``; MQTT 5.0 request/response loads from ``_client_request``
on first use.

What needs the adapter's I/O or its way of waiting, the adapter defines
(listed here rather than as empty methods, which would cost RAM on a board):
``is_connected``; ``_complete(pid, packet)`` hands an ack (or QueueFull) to
whoever waits for ``pid``; ``_call(fn, arg)`` runs a callback;
``_put(queue, msg)`` holds ``msg`` (``Inbox._hold``) in a ``Fifo`` that
``recv()`` or a stream reads, and wakes that reader; ``_notify()`` wakes a
reader paused for a place; ``_got_response(corr, msg)`` hands a response to
the ``request()`` waiting for it; and the attributes ``_error`` (why the last
connection ended) and ``_retry_at`` (when to reconnect).
"""

import sys

from ._client_inbox import _MICROPYTHON, Inbox, clock
from ._codec import encode
from ._errors import LocalProtocolError, MQTTError
from ._packets import Connect, Subscribe, Subscription
from ._session import CLIENT, Session
from ._topic import topic_matches

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_MQTT5 = const(5)
_CONNACK = const(2)
_PUBLISH = const(3)
_PUBREC = const(5)
_PUBCOMP = const(7)
_SUBACK = const(9)
_UNSUBACK = const(11)
_DISCONNECT = const(14)
_AUTH = const(15)

# Queue policies: what publish() does when ``max_queued`` messages wait.
BLOCK = "block"  # wait until the broker acknowledges one (or the timeout)
DROP_OLDEST = "drop_oldest"  # drop the oldest message not sent yet (its waiter gets QueueFull)
RAISE = "raise"  # raise QueueFull

# 3.1.1 CONNACK return codes 1-5 as the 5.0 reason codes (3.2.2.3).
_V3_REFUSALS = (0, 0x84, 0x85, 0x88, 0x86, 0x87)


def warn(text):
    """Report on stderr what the client carries on past: a callback's bug, a
    persistence that failed after the broker answered. Not raised: the
    connection and the other messages are fine."""
    print("fieldline: " + text, file=sys.stderr)


class ConnectionRefused(MQTTError):
    """The broker refused the connection; ``reason_code`` is the CONNACK reason
    (a 3.1.1 return code is given as its 5.0 equivalent). ``server_reference``
    names the broker to use instead (5.0 codes 0x9C, 0x9D), if it sent one."""

    server_reference = None


class NotAuthorized(ConnectionRefused):
    """Refused for the credentials: 0x86 bad user name or password, 0x87 not
    authorized, 0x8C bad authentication method."""


class PublishRefused(MQTTError):
    """The broker acknowledged a QoS 1/2 message with a failure reason code
    (e.g. 0x87 not authorized, 0x97 quota exceeded): it was not delivered."""


class PacketTooLarge(MQTTError):
    """The packet is larger than the broker's Maximum Packet Size (0x95)."""


class ConnectionLost(MQTTError):
    """The connection ended and reconnecting is off (or the client closed).
    After a DISCONNECT from the broker: its reason code and Reason String,
    and ``server_reference`` when it names another broker (0x9C, 0x9D)."""

    server_reference = None


class QueueFull(MQTTError):
    """``max_queued`` messages already wait and the policy is RAISE."""


def _plain(e):
    # A timeout is no protocol error: its text alone, without "Unspecified error (0x80)".
    return e.message if isinstance(e.message, str) else MQTTError.__str__(e)


try:

    class MQTTTimeout(MQTTError, TimeoutError):
        """A call did not complete within its timeout."""

        __str__ = _plain

except (NameError, TypeError):  # MicroPython: no TimeoutError, no such multiple inheritance

    class MQTTTimeout(MQTTError):
        """A call did not complete within its timeout."""

        __str__ = _plain


def refusal(connack):
    """The exception for a CONNACK that refuses: ConnectionRefused or NotAuthorized."""
    rc = connack.reason_code
    if rc < len(_V3_REFUSALS):
        rc = _V3_REFUSALS[rc]
    e = (NotAuthorized if rc in (0x86, 0x87, 0x8C) else ConnectionRefused)(rc, "connection refused")
    d = connack.properties
    if d:
        e.server_reference = d.get("server_reference")
        if "reason_string" in d:
            e.message = d["reason_string"]
    return e


def published(ack):
    """Return the ack of a QoS 1/2 message, or raise: the exception a waiter
    was handed instead (QueueFull), or for a failure reason code (>= 0x80)
    PacketTooLarge (0x95) or PublishRefused. A PUBCOMP's only failure, 0x92
    (Packet Identifier not found), answers a PUBREL sent again for a message
    the broker took (its PUBREC succeeded) and has completed: done, not
    refused."""
    if isinstance(ack, Exception):
        raise ack
    rc = ack.reason_code
    if rc < 0x80 or ack.type == _PUBCOMP:
        return ack
    d = ack.properties
    why = d.get("reason_string", "publish refused") if d else "publish refused"
    if rc == 0x95:
        raise PacketTooLarge(rc, why)
    raise PublishRefused(rc, why)


class BaseClient(Inbox):
    """Options and I/O-free logic shared by ``Client`` and ``AsyncClient``.

    ``version``: 4 (MQTT 3.1.1) or 5 (MQTT 5.0). ``keepalive`` in seconds.
    ``clean_start`` and ``session_expiry`` (seconds, 5.0) choose whether the
    broker keeps the session across connections; in 3.1.1
    ``clean_start=False`` (clean session 0) keeps it. ``will``: a ``Will``.
    ``connect_properties``: extra 5.0 CONNECT properties. TLS: ``tls=True``
    with the system CAs (CPython) or ``ca_file``; ``cert_file``/``key_file``
    for a client certificate; ``server_hostname`` (default ``host``); or pass
    an ``ssl.SSLContext`` as ``tls``. ``reconnect``: after a connection was
    up, reconnect by itself with exponential backoff from ``backoff_min`` to
    ``backoff_max`` seconds, with jitter. ``max_queued``: QoS 1/2 messages
    that may wait for their acknowledgement (default 1000, on MicroPython
    32); ``queue_policy`` says what
    publish() does beyond it. ``receive_maximum``: our receive window for
    QoS 1/2 messages (5.0). ``max_packet_size``: the largest packet we
    accept (5.0 tells the broker, which then drops larger messages for us; a
    larger packet ends the connection with 0x95). ``timeout``: default for
    every blocking call.
    ``persistence``: keeps QoS 1/2 messages until acknowledged, across
    restarts of the program: an object with ``put(topic, payload, qos,
    retain, properties, packet_id) -> key``, ``done(key)`` and ``pending()``
    (an iterable of ``(key, (topic, payload, qos, retain, properties,
    packet_id, released))``, the messages stored but never done, oldest
    first; they are sent again on the first connect(), under their packet
    ids, so that a resumed session's broker takes them as the same
    messages), and optionally ``released(key) -> key``: a QoS 2 message's
    PUBREC came (pending() then says released, and its PUBREL is sent
    again instead of it).
    ``auth_method``/``auth_data``: MQTT 5.0 enhanced authentication; the
    broker's challenges go to ``on_auth``.
    ``transport``: ``"tcp"``, or ``"websockets"`` for MQTT over WebSocket
    (CPython, needs ``wsproto``; with TLS it is wss; port default 80, or 443
    with TLS) to ``ws_path`` with the extra HTTP headers ``ws_headers`` (a
    dict); a refused upgrade raises ``UpgradeRefused``, a ConnectionRefusedError.
    ``max_inbox``: how many received messages the client keeps for the
    application at once (in ``recv()``/``messages()`` buffers, streams and
    unfinished callbacks; default 1000 on CPython, 32 on MicroPython; 0: no
    limit); see "Backpressure" in docs/client.md. ``inbox_policy``: what a
    QoS 0 message finds when every place is taken: ``"drop"`` (it is dropped)
    or ``"block"`` (the client stops reading, as it always does for QoS 1/2).
    ``manual_ack``: QoS 1/2 messages are acknowledged only by
    ``ack(message)``, not once handed over.
    Counters to read: ``inbox_size`` (places taken now), ``inbox_peak`` (the
    most taken at once), ``dropped`` (QoS 0 messages dropped because every
    place was taken).
    """

    def __init__(
        self,
        host="localhost",
        port=None,
        client_id="",
        version=_MQTT5,
        keepalive=60,
        clean_start=True,
        session_expiry=0,
        username=None,
        password=None,
        will=None,
        connect_properties=None,
        tls=None,
        ca_file=None,
        cert_file=None,
        key_file=None,
        server_hostname=None,
        reconnect=True,
        backoff_min=0.5,
        backoff_max=30.0,
        max_queued=None,
        queue_policy=BLOCK,
        receive_maximum=65535,
        max_packet_size=268435460,
        topic_alias_maximum=0,
        timeout=30.0,
        transport="tcp",
        ws_path="/mqtt",
        ws_headers=None,
        auth_method=None,
        auth_data=None,
        persistence=None,
        max_inbox=None,
        manual_ack=False,
        inbox_policy="drop",
    ):
        if tls is None and (ca_file or cert_file):
            tls = True
        if transport not in ("tcp", "websockets"):
            raise ValueError("transport must be 'tcp' or 'websockets'")
        self.transport = transport
        self.ws_path = ws_path
        self.ws_headers = ws_headers
        self.host = host
        if transport == "websockets":
            self.port = port or (443 if tls else 80)
        else:
            self.port = port or (8883 if tls else 1883)
        self.client_id = client_id
        self.version = version
        self.keepalive = keepalive
        self.clean_start = clean_start
        self.session_expiry = session_expiry
        self.username = username
        self.password = password
        self.will = will
        self.connect_properties = connect_properties
        self.tls = tls
        self.ca_file = ca_file
        self.cert_file = cert_file
        self.key_file = key_file
        self.server_hostname = server_hostname
        self.reconnect = reconnect
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        if max_queued is None:
            # A queued message costs about 300 bytes besides its payload: a
            # thousand of them (publish(timeout=0) reads no acks until the
            # queue is full) was more than a board's heap.
            max_queued = 32 if _MICROPYTHON else 1000
        self.max_queued = max_queued
        self.queue_policy = queue_policy
        self.timeout = timeout
        if queue_policy not in (BLOCK, DROP_OLDEST, RAISE):
            raise ValueError("unknown queue_policy %r" % queue_policy)
        self.auth_method = auth_method
        self.auth_data = auth_data
        self.on_auth = None  # callable(Auth) -> bytes: the next step of enhanced authentication
        self.persistence = persistence
        self._stored = {}  # packet id -> persistence key of a QoS 1/2 message
        self._restored = persistence is None
        self.on_message = None  # callable(message) for messages no route takes
        self.on_connect = None  # callable(connack) after each successful CONNACK
        self.on_disconnect = None  # callable(exception or None) when a connection ends
        self.connack = None  # the last CONNACK
        self.disconnect_reason = None  # the DISCONNECT the broker sent, if any
        Inbox.__init__(self, max_inbox, manual_ack, inbox_policy, receive_maximum)
        # The session never acknowledges by itself: we answer a QoS 1/2
        # message once the application is done with it (or calls ack()). We
        # announce our Receive Maximum in _connect_packet() but leave the
        # session's at 65535, so that a broker sending more is not cut off:
        # Mosquitto before 2.0.13 does after acks (eclipse-mosquitto/mosquitto
        # #2301), and max_inbox bounds what we hold anyway, by pausing.
        self.session = Session(
            CLIENT,
            version,
            max_packet_size=max_packet_size,
            topic_alias_maximum=topic_alias_maximum,
            auto_alias=True,
            manual_ack=True,
            released_events=persistence is not None,
        )
        self._subs = {}  # topic filter -> (Subscription, properties), restored on reconnect
        self._routes = []  # [filter, callable or list(, None)] in subscription order
        self._attempt = 0  # reconnect attempts since the last success
        self._was_up = False  # a CONNACK accepted this connection
        self._resume = False  # one was accepted once: later CONNECTs resume the session
        self._restoring = set()  # ids of the SUBSCRIBEs of _restore() not acknowledged yet
        # filter -> id of the UNSUBSCRIBE sent again for it (0: not yet): of an
        # unsubscribe() that failed without an UNSUBACK, for a resumed session
        self._unsubs = {}
        self._responses = {}  # correlation data -> response (or its waiter), for request()
        self._reply_topic = None
        self._requests_sent = 0

    # -- what goes out --------------------------------------------------------

    def _connect_packet(self, first):
        """The CONNECT for this connection. After the first, the session is
        resumed (clean start 0) whenever it may still exist on the broker."""
        v = self.version
        clean = self.clean_start
        props = dict(self.connect_properties) if self.connect_properties else {}
        if v == _MQTT5:
            if self.receive_maximum < 65535:
                props["receive_maximum"] = self.receive_maximum
            if self.session_expiry:
                props["session_expiry_interval"] = self.session_expiry
                if not first:
                    clean = False  # the broker may still hold it
        if self.auth_method is not None:
            props["authentication_method"] = self.auth_method
            if self.auth_data is not None:
                props["authentication_data"] = self.auth_data
        return Connect(
            self.session.client_id if not first and self.session.client_id else self.client_id,
            clean,
            self.keepalive,
            self.username,
            self.password,
            self.will,
            v,
            props or None,
        )

    def _remember(self, subs, qos, properties, callback):
        # Normalise subscribe() arguments to a list of Subscription and
        # remember them (and their callback route) for reconnects.
        if isinstance(subs, str):
            subs = (subs, qos)
        if not isinstance(subs, list):
            subs = [subs]
        out = []
        for s in subs:
            if isinstance(s, str):
                s = Subscription(s)
            elif isinstance(s, tuple):
                s = Subscription(*s)
            out.append(s)
        # Checked before they are remembered: an invalid filter, QoS or
        # property raises LocalProtocolError here, not at every reconnect.
        encode(Subscribe(1, out, properties), self.version)
        for s in out:
            self._subs[s.topic_filter] = (s, properties)
            self._unsubs.pop(s.topic_filter, None)
            if callback is not None:
                self._routes.append([s.topic_filter, callback])
        return out

    def _unconfirmed(self):
        # subscribe() failed without a SUBACK (a timeout, the connection
        # lost): its subscriptions stay remembered, so the next accepted
        # connection sends them, whether or not the broker has the session.
        self._restoring.add(0)  # no SUBACK carries id 0

    def _unsub_failed(self, filters):
        # unsubscribe() failed without an UNSUBACK (a timeout, the connection
        # lost): forgotten here, but a resumed session on the broker may keep
        # them, so _accepted() unsubscribes again.
        for f in filters:
            self._unsubs[f] = 0

    def _forget(self, filters):
        if isinstance(filters, str):
            filters = [filters]
        for f in filters:
            self._subs.pop(f, None)
        # Only subscribe()'s callbacks go with their filter: the application's
        # own list, or a messages() stream (a route of three items), is its
        # to close, and must still end when the client disconnects.
        self._routes = [
            r for r in self._routes if r[0] not in filters or len(r) > 2 or isinstance(r[1], list)
        ]
        return filters

    def _restore(self):
        # The broker has no session: subscribe again to everything (one
        # SUBSCRIBE per properties set); the SubAcks need no waiter.
        groups = []
        for s, props in self._subs.values():
            for g in groups:
                if g[1] == props:
                    g[0].append(s)
                    break
            else:
                groups.append(([s], props))
        for subs, props in groups:
            try:
                self._restoring.add(self.session.subscribe(subs, props))
            except LocalProtocolError as e:
                if e.reason_code != 0x95 or len(subs) < 2:
                    raise
                # Too large for the broker's Maximum Packet Size at once,
                # though each subscribe() fitted: one SUBSCRIBE apiece.
                for s in subs:
                    self._restoring.add(self.session.subscribe(s, props))

    # -- persistence of QoS 1/2 messages -----------------------------------------

    def _publish(self, topic, payload, qos, retain, properties):
        """Session.publish(), with the message recorded by ``persistence``;
        too large for the broker raises PacketTooLarge."""
        # An earlier run's messages go first, and are read before put()
        # stores this one, which pending() would otherwise return as theirs.
        self._load_stored()
        # Stored before the session takes it: a put() that fails (a full
        # queue, a full disk) raises with nothing sent, so the caller's
        # retry cannot make a duplicate.
        store = self.persistence if qos else None
        pid = key = None
        if store is not None:
            # Its packet id is stored too: a session resumed after a restart
            # must get the message again under the id the broker holds.
            pid = self.session.new_packet_id()
            key = store.put(topic, payload, qos, retain, properties, pid)
        try:
            pid = self.session.publish(topic, payload, qos, retain, properties, pid)
        except BaseException as e:
            if store is not None:
                store.done(key)
            if isinstance(e, LocalProtocolError) and e.reason_code == 0x95:
                raise PacketTooLarge(e.reason_code, e.message) from None
            raise
        if store is not None:
            self._stored[pid] = key
        return pid

    def _full_queue(self):
        """``max_queued`` messages wait: apply the policy. RAISE raises
        QueueFull; DROP_OLDEST drops the oldest unsent message (its waiter
        gets QueueFull) and returns True; otherwise (BLOCK, or nothing left
        to drop) returns False and the caller waits for room."""
        s = self.session
        if self.queue_policy == RAISE:
            raise QueueFull(0x97, "%d messages wait for acknowledgement" % s.inflight)
        if self.queue_policy == DROP_OLDEST:
            pid = s.drop_oldest()
            if pid is not None:
                self._unstore(pid)
                self._complete(pid, QueueFull(0x97, "dropped for a newer message"))
                return True
        return False

    def _unstore(self, pid):
        key = self._stored.pop(pid, None)
        if key is not None:
            self._note(self.persistence.done, "done", key)

    def _note(self, call, name, key):
        # The broker has the message; the persistence failing to note it now
        # (a broken medium; on MicroPython a StoreFullError is no OSError)
        # loses nothing, as the message only goes again after a restart. Not
        # raised: an OSError here would pass for the connection failing, and
        # the call waiting on this acknowledgement would time out.
        try:
            return call(key)
        except Exception as e:
            warn("persistence.%s(%r) raised %r: the message may go again after a restart"
                 % (name, key, e))  # fmt: skip
            return key

    def _released(self, pid):
        # Our QoS 2 message is released (PUBREC came, PUBREL sent): a store
        # that can note it does, so that after a restart the PUBREL goes
        # again and not the message, which the broker would take for a new
        # one once it has completed it. Not noted (a full disk, say), the
        # restart sends the message again: a duplicate, never a loss.
        key = self._stored.get(pid)
        note = getattr(self.persistence, "released", None)
        if key is not None and note is not None:
            self._stored[pid] = self._note(note, "released", key)

    def _load_stored(self):
        # Messages an earlier run stored and never completed go out first.
        if not self._restored:
            self._restored = True
            # Each under its stored packet id, and marked as maybe sent before.
            s = self.session
            stored = list(self.persistence.pending())
            ids = set(m[5] for _, m in stored if len(m) > 5)
            used = set()
            for key, m in stored:
                pid = m[5] if len(m) > 5 else None
                if not pid or pid in used:  # stored without one, as before ids were
                    for _ in range(len(ids) + 1):
                        pid = s.new_packet_id()
                        if pid not in ids:
                            break
                used.add(pid)
                self._stored[s.publish(m[0], m[1], m[2], m[3], m[4], pid, True)] = key
                if len(m) > 6 and m[6]:
                    s.release(pid)  # its PUBREC came: the PUBREL goes again

    # -- a connection begins and ends -------------------------------------------

    def _accepted(self):
        """After the CONNACK: the exception for a refusal (the caller closes
        and raises it), else None once the subscriptions the broker lost are
        queued again. The adapter resets the backoff (``_attempt``) only
        when that and writing it succeeded: an attempt failing there counts."""
        ack = self.connack
        if ack.reason_code:
            return refusal(ack)
        self._was_up = True
        self._resume = True
        self._error = None  # why an earlier connection or attempt failed: over now
        if not ack.session_present or self._restoring:
            # A restore cut off before its SUBACK: the session the broker
            # resumes now is the one it started then, maybe without them.
            self._restoring = set()
            self._restore()
        u = self._unsubs
        if not ack.session_present:
            u.clear()  # gone with the session
        for f in u:  # one apiece: together they might exceed Maximum Packet Size
            u[f] = self.session.unsubscribe(f)
        self._inbox_connected(ack.session_present)
        return None

    def _goodbye(self, reason_code, properties):
        """Queue the DISCONNECT. If the protocol refuses its properties (say a
        Session Expiry Interval after a CONNECT with 0, MQTT-3.14.2-2) or its
        reason code, a plain DISCONNECT goes out all the same, so that
        closing does not look like a lost client and publish the will.
        Returns that LocalProtocolError, for the caller to raise once closed,
        or None."""
        try:
            self.session.disconnect(reason_code, properties)
            return None
        except LocalProtocolError as e:
            try:
                self.session.disconnect(reason_code)
            except LocalProtocolError:
                self.session.disconnect()  # raises too if no DISCONNECT may go now
            return e

    def _failed(self, e):
        # _open() failed with ``e``: the error to close with. None (the
        # application closed it) only if no CONNACK accepted the connection,
        # else on_disconnect would hear of a failed attempt as a clean close.
        if not self._was_up:
            return None
        return e if isinstance(e, Exception) else ConnectionLost(0x80, "connecting interrupted")

    def _closed(self, error):
        # The adapter closed the connection; ``error``: why it ended (None
        # when the application closed it), for on_disconnect if it was up.
        was_up = self._was_up
        self._was_up = False
        self.session.connection_lost(self._now())
        if error is not None:
            self._error = error
        if was_up and self.on_disconnect is not None:
            self._call(self.on_disconnect, error)

    # -- what comes in --------------------------------------------------------

    def _events(self):
        """Handle the packets received so far; True if there were any. The
        adapter's ``_complete(pid, packet)`` gets acks; a DISCONNECT from the
        broker raises ConnectionLost. Stops after a CONNACK, so that _open()
        completes the connection before anything that came after it is
        handled, and while reading is paused."""
        s = self.session
        handled = False
        if self._paused():
            if not self._has_room():
                return False
            self._admit(self._unpause())
            handled = True
        while not self._paused():
            ev = s.next_event()
            if ev is None:
                return handled
            handled = True
            t = ev.type
            if t == _PUBLISH:
                self._deliver(ev)
            elif t == _CONNACK:
                self.connack = ev
                return True
            elif t == _DISCONNECT:
                self.disconnect_reason = ev
                d = ev.properties or {}
                e = ConnectionLost(
                    ev.reason_code, d.get("reason_string", "the broker sent DISCONNECT")
                )
                e.server_reference = d.get("server_reference")
                raise e
            elif t == _AUTH:
                self._auth(ev)
            elif t == _PUBREC and ev.reason_code < 0x80:
                self._released(ev.packet_id)
            else:  # PubAck, PubRec (failed), PubComp, SubAck, UnsubAck
                if t < _SUBACK:
                    self._unstore(ev.packet_id)
                elif self._restoring:
                    self._restoring.discard(ev.packet_id)
                if t == _UNSUBACK:
                    u = self._unsubs
                    for f in u:
                        if u[f] == ev.packet_id:
                            del u[f]  # the broker has forgotten it too
                            break
                self._complete(ev.packet_id, ev)
        return handled

    # -- routing ------------------------------------------------------------------

    def _route(self, msg):
        taken = False
        for r in self._routes:  # [filter, target] or, for a stream, [filter, target, None]
            if topic_matches(r[0], msg.topic):
                taken = True
                target = r[1]
                if isinstance(target, list):
                    target.append(msg)  # the application's own list
                else:
                    self._call(target, msg)
        if not taken:
            if self.on_message is not None:
                self._call(self.on_message, msg)
            else:
                self._put(self._inbox, msg)

    def _auth(self, ev):
        # Enhanced authentication (5.0): the broker's AUTH goes to on_auth,
        # whose answer is the next AUTH we send.
        if not ev.reason_code:  # 0x00: a re-authentication succeeded
            return
        if self.on_auth is None:
            raise MQTTError(0x8C, "AUTH from the broker, and no on_auth handler")
        try:
            self.session.auth(self.on_auth(ev))
        except (MQTTError, OSError):
            raise
        except Exception as e:
            # Its answer is needed now, so it cannot be skipped as a failed
            # on_message is: the attempt (or connection) fails, and a
            # loop_start() thread or connection task goes on reconnecting.
            raise MQTTError(0x80, "on_auth raised %r" % e) from e

    # -- reconnecting -----------------------------------------------------------

    def _retry_later(self):
        """Set ``_retry_at``, the time of the next reconnect attempt: after a
        delay exponential from ``backoff_min`` to ``backoff_max`` seconds, the
        upper half jittered."""
        d = min(self.backoff_max, self.backoff_min * (1 << min(self._attempt, 20)))
        self._attempt += 1
        self._retry_at = clock() + d / 2 + d / 2 * _random()


def _random():
    try:
        from random import getrandbits
    except ImportError:
        return 0.5
    return getrandbits(16) / 65536
