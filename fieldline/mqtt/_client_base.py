"""What the blocking and the asyncio client share, free of I/O.

``BaseClient`` turns the constructor's options into a CONNECT, remembers the
subscriptions to restore them when the broker has lost the session, routes
incoming messages to callbacks and message streams, and plans reconnect
delays. ``Client`` (blocking sockets) and ``AsyncClient`` (asyncio) own the
socket and the waiting; each is a thin adapter over this and the
sans-IO ``Session``. Runs on MicroPython: no typing, no dataclasses.

Receive-side backpressure lives here too. Every message the application has
not finished with -- waiting in the inbox or a stream, or in a callback that
has not returned -- holds one of ``max_inbox`` places (``inbox_size``). A
QoS 1/2 message is acknowledged only when its last holder lets go (or, with
``manual_ack``, when the application calls ``ack()``), so the broker's
Receive Maximum window (5.0: we announce at most ``max_inbox``) and its own
inflight window (3.1.1) stop it from sending more than the application can
take. A message that finds every place taken anyway is held, and nothing
more is parsed: a QoS 1/2 one (or any, with ``inbox_policy="block"``) until a
place frees up, the adapter reading nothing meanwhile (TCP backpressure); a
QoS 0 one until the adapter must read on, when it is dropped and counted in
``dropped`` (at most once allows it) unless the application made room.
While reading is paused the session's clock stands still, so its keepalive
never blames the broker for bytes we leave unread, and ``_paused_ping()``
keeps sending PINGREQ so that the broker keeps us.
"""

import sys

from ._errors import LocalProtocolError, MQTTError
from ._packets import Connect, Subscription
from ._session import CLIENT, Session
from ._topic import topic_matches

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


_MQTT5 = const(5)
_CONNECTED = const(2)
_CONNACK = const(2)
_PUBLISH = const(3)
_SUBACK = const(9)
_DISCONNECT = const(14)
_AUTH = const(15)

# Queue policies: what publish() does when ``max_queued`` messages wait.
BLOCK = "block"  # wait until the broker acknowledges one (or the timeout)
DROP_OLDEST = "drop_oldest"  # drop the oldest message not sent yet (its waiter gets QueueFull)
RAISE = "raise"  # raise QueueFull

# 3.1.1 CONNACK return codes 1-5 as the 5.0 reason codes (3.2.2.3).
_V3_REFUSALS = (0, 0x84, 0x85, 0x88, 0x86, 0x87)


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


try:

    class MQTTTimeout(MQTTError, TimeoutError):
        """A call did not complete within its timeout."""

except (NameError, TypeError):  # MicroPython: no TimeoutError, no such multiple inheritance

    class MQTTTimeout(MQTTError):
        """A call did not complete within its timeout."""


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


def ack_error(ack, what):
    """The exception for a failed ack (reason code >= 0x80), or the exception
    a waiter was handed instead of an ack (QueueFull), else None."""
    if isinstance(ack, Exception):
        return ack
    rc = ack.reason_code
    if rc < 0x80:
        return None
    d = ack.properties
    why = d.get("reason_string", what) if d else what
    if rc == 0x95:
        return PacketTooLarge(rc, why)
    return PublishRefused(rc, why)


class BaseClient:
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
    that may wait for their acknowledgement; ``queue_policy`` says what
    publish() does beyond it. ``receive_maximum``: our receive window for
    QoS 1/2 messages (5.0). ``max_packet_size``: the largest packet we
    accept (5.0 tells the broker, which then drops larger messages for us; a
    larger packet ends the connection with 0x95). ``timeout``: default for
    every blocking call.
    ``persistence``: keeps QoS 1/2 messages until acknowledged, across
    restarts of the program: an object with ``put(topic, payload, qos,
    retain, properties) -> key``, ``done(key)`` and ``pending()`` (an
    iterable of ``(key, (topic, payload, qos, retain, properties))``, the
    messages stored but never done, oldest first; they are sent again on
    the first connect()). ``auth_method``/``auth_data``: MQTT 5.0 enhanced
    authentication; the broker's challenges go to ``on_auth``.
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
        max_queued=1000,
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
        if max_inbox is None:
            max_inbox = 32 if sys.implementation.name == "micropython" else 1000
        self.max_inbox = max_inbox
        self.manual_ack = manual_ack
        if inbox_policy not in ("drop", BLOCK):
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
        self._holds = {}  # id(message) -> how many holders have not let go
        self._unacked = {}  # packet id -> QoS 1/2 message not yet acknowledged
        self._held = None  # a QoS 1/2 message waiting for a place: reading paused
        self._lag = 0.0  # seconds of paused reading, hidden from the session's clock
        self._paused_at = 0.0
        self._ping_due = None  # while paused: when to send the next PINGREQ
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
        )
        self._subs = {}  # topic filter -> (Subscription, properties), restored on reconnect
        self._routes = []  # [filter, callable or list] in subscription order
        self._inbox = []  # messages no route took, for recv()/messages()
        self._attempt = 0  # reconnect attempts since the last success
        self._was_up = False  # a CONNACK accepted this connection
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

    def _remember(self, subs, properties, callback):
        # Normalise subscribe() arguments to a list of Subscription and
        # remember them (and their callback route) for reconnects.
        if not isinstance(subs, list):
            subs = [subs]
        out = []
        for s in subs:
            if isinstance(s, str):
                s = Subscription(s)
            elif isinstance(s, tuple):
                s = Subscription(*s)
            out.append(s)
            self._subs[s.topic_filter] = (s, properties)
            if callback is not None:
                self._routes.append([s.topic_filter, callback])
        return out

    def _forget(self, filters):
        if isinstance(filters, str):
            filters = [filters]
        for f in filters:
            self._subs.pop(f, None)
        self._routes = [r for r in self._routes if r[0] not in filters or isinstance(r[1], list)]
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
            self.session.subscribe(subs, props)

    # -- what comes in --------------------------------------------------------

    def _dispatch(self, ev):
        """Handle one session event; the adapter's ``_complete(pid, packet)``
        gets acks. Returns the CONNACK or DISCONNECT for the adapter to act on,
        else None."""
        t = ev.type
        if t == _PUBLISH:
            self._deliver(ev)
        elif t == _CONNACK:
            self.connack = ev
            return ev
        elif t == _DISCONNECT:
            self.disconnect_reason = ev
            return ev
        elif t == _AUTH:
            self._auth(ev)
        else:  # PubAck, PubRec (failed), PubComp, SubAck, UnsubAck
            if t < _SUBACK:
                self._unstore(ev.packet_id)
            self._complete(ev.packet_id, ev)
        return None

    # -- persistence of QoS 1/2 messages -----------------------------------------

    def _publish(self, topic, payload, qos, retain, properties):
        """Session.publish(), with the message recorded by ``persistence``;
        too large for the broker raises PacketTooLarge."""
        try:
            pid = self.session.publish(topic, payload, qos, retain, properties)
        except LocalProtocolError as e:
            if e.reason_code == 0x95:
                raise PacketTooLarge(e.reason_code, e.message) from None
            raise
        if pid is not None and self.persistence is not None:
            self._stored[pid] = self.persistence.put(topic, payload, qos, retain, properties)
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

    def _accepted(self):
        """After the CONNACK: the exception for a refusal (the caller closes
        and raises it), else None once the backoff is reset and the
        subscriptions the broker lost are queued again."""
        ack = self.connack
        if ack.reason_code:
            return refusal(ack)
        self._attempt = 0
        self._was_up = True
        if not ack.session_present:
            self._restore()
            # The broker forgot what we owe it: answering an old message now
            # could acknowledge a new one that reuses its packet id.
            self._unacked.clear()
        if self._held is not None:  # still paused: keepalive restarts with this connection
            k = self.session.keep_alive
            self._ping_due = clock() + k / 2 if k else None
        return None

    def _unstore(self, pid):
        key = self._stored.pop(pid, None)
        if key is not None:
            self.persistence.done(key)

    def _load_stored(self):
        # Messages an earlier run stored and never completed go out first.
        if not self._restored:
            self._restored = True
            for key, m in self.persistence.pending():
                self._stored[self.session.publish(m[0], m[1], m[2], m[3], m[4])] = key

    def _events(self):
        # Handle the packets received so far; True if there were any. Stops
        # after a CONNACK, so that _open() completes the connection before
        # anything that came after it is handled, and while reading is paused.
        s = self.session
        handled = False
        if self._paused():
            if not self._has_room():
                return False
            msg = self._held
            self._held = None
            self._lag += clock() - self._paused_at
            self._admit(msg)
            handled = True
        while not self._paused():
            ev = s.next_event()
            if ev is None:
                return handled
            handled = True
            ack = self._dispatch(ev)
            if ack is not None:
                if ack.type == _DISCONNECT:  # DISCONNECT from the broker
                    d = ack.properties or {}
                    e = ConnectionLost(
                        ack.reason_code, d.get("reason_string", "the broker sent DISCONNECT")
                    )
                    e.server_reference = d.get("server_reference")
                    raise e
                return True  # CONNACK
        return handled

    # -- backpressure: places, acknowledgements, pausing -------------------------

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
            self._wake_reader()

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
        return not self._held.qos and self.inbox_policy != BLOCK

    def _drop_held(self):
        self.dropped += 1
        self._held = None
        self._lag += clock() - self._paused_at

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

    def _wake_reader(self):
        pass  # the adapters wake a reader that waits for a place

    def _route(self, msg):
        taken = False
        for f, target in self._routes:
            if topic_matches(f, msg.topic):
                taken = True
                if isinstance(target, list):
                    target.append(msg)  # the application's own list
                else:
                    self._call(target, msg)
        if not taken:
            if self.on_message is not None:
                self._call(self.on_message, msg)
            else:
                self._put(self._inbox, msg)

    def _put(self, queue, msg):
        self._hold(msg)
        queue.append(msg)

    def _auth(self, ev):
        # Enhanced authentication (5.0): the broker's AUTH goes to on_auth,
        # whose answer is the next AUTH we send.
        if not ev.reason_code:  # 0x00: a re-authentication succeeded
            return
        if self.on_auth is None:
            raise MQTTError(0x8C, "AUTH from the broker, and no on_auth handler")
        self.session.auth(self.on_auth(ev))

    # -- request/response (5.0) ------------------------------------------------

    def _request_properties(self, properties):
        """Properties for a new request: our Response Topic and fresh
        Correlation Data. Returns (properties, correlation data)."""
        if self._reply_topic is None:
            self._reply_topic = "fieldline/responses/%s/%d" % (
                self.session.client_id,
                int(_random() * 1000000000),
            )
        self._requests_sent += 1
        corr = b"%d" % self._requests_sent
        props = dict(properties) if properties else {}
        props["response_topic"] = self._reply_topic
        props["correlation_data"] = corr
        return props, corr

    def _take_response(self, msg):
        d = msg.properties
        corr = d.get("correlation_data") if d else None
        if corr in self._responses:
            self._got_response(corr, msg)

    def _got_response(self, corr, msg):
        self._responses[corr] = msg

    def _reply(self, request, properties):
        """Topic and properties of the response to ``request``."""
        d = request.properties or {}
        topic = d.get("response_topic")
        if not topic:
            raise ValueError("the message has no Response Topic")
        props = dict(properties) if properties else {}
        if "correlation_data" in d:
            props["correlation_data"] = d["correlation_data"]
        return topic, props

    def _call(self, fn, arg):
        fn(arg)

    def _complete(self, pid, packet):
        pass  # the adapters wake whoever waits for ``pid``

    # -- reconnecting -----------------------------------------------------------

    def _backoff(self):
        """Seconds to wait before the next reconnect attempt: exponential from
        ``backoff_min`` to ``backoff_max``, the upper half jittered."""
        d = min(self.backoff_max, self.backoff_min * (1 << min(self._attempt, 20)))
        self._attempt += 1
        return d / 2 + d / 2 * _random()


def _random():
    try:
        from random import getrandbits
    except ImportError:
        return 0.5
    return getrandbits(16) / 65536
