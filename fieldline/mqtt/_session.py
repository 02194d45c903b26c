"""The MQTT session state machine, for either end of the connection.

Theory of operation
-------------------
A ``Session`` is what one MQTT session remembers, kept by the client (role
CLIENT) or by the server (role SERVER). It outlives network connections and
never touches a socket or a clock: bytes go in through ``receive_data()``,
bytes come out of ``data_to_send()``, and time is the ``now`` argument of
``receive_data()``, ``connect()`` and ``tick()``.

``next_event()`` parses one packet, checks it against ``_RX`` below -- the one
table saying which packet types each role may receive in each connection
state -- and runs the handler named there, looked up on the session: a
connection that asked for more checks on what it receives (Request Problem
Information 0, Retain Available 0) has them wrapped around its handlers
there (``_session5.guard``), so the others pay nothing for them. The handler
updates the session, queues any automatic answer (PUBACK, PUBREC, PUBCOMP,
PINGRESP) and returns the packet when the application has something to do
with it, which is then the event.

Connection states: IDLE (no connection) -> CONNECTING (CONNECT sent or
received, no CONNACK yet; AUTH may go both ways) -> CONNECTED -> CLOSED
(DISCONNECT sent or received) -> IDLE again on ``connection_lost()`` or EOF.
A peer that breaks the protocol moves the session to ERROR: the DISCONNECT
(or, before CONNACK, the CONNACK) carrying the reason code is queued and
RemoteProtocolError is raised; write ``data_to_send()`` and close. A call the
protocol does not allow raises LocalProtocolError and changes nothing.

State kept across connections: our QoS 1/2 messages not yet completed, in
the order their last packet went out (``_order`` of packet ids, ``_msgs``
id -> Publish, or PubRel once PUBREC came: the id then moves behind all sent
before that PUBREL, so a resumption resends in the order first sent); the
first ``_nsent`` of them went out on this connection, the rest wait, in
publish order, for the peer's Receive Maximum (MQTT-4.9.0-2); the ids of QoS 2
messages received but not yet released (``_rx2``); with manual_ack, the
received messages the application has not answered yet (``_acks``); the
session expiry interval. Topic aliases, SUBSCRIBE ids awaiting their ack and
keepalive timers belong to one connection. The 5.0-only parts (topic
aliases, AUTH) live in ``_session5``, manual acknowledgement in
``_session_ack``; they load when first needed. A function there called by
one method here bears that method's name (``_session5._rx_auth`` for
``Session._rx_auth``): on MicroPython each distinct name is a qstr that
loading this module interns, so a shared name costs the board no RAM.
"""

from ._codec import Parser, encode
from ._errors import LocalProtocolError, RemoteProtocolError
from ._packets import (
    Disconnect,
    PingReq,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Subscribe,
    Subscription,
    Unsubscribe,
)

try:
    from micropython import const
except ImportError:  # CPython
    const = int

_CLIENT = const(0)
_SERVER = const(1)
CLIENT = _CLIENT
SERVER = _SERVER

# Connection states.
_IDLE = const(0)
_CONNECTING = const(1)
_CONNECTED = const(2)
_CLOSED = const(3)
_ERROR = const(4)
IDLE = _IDLE
CONNECTING = _CONNECTING
CONNECTED = _CONNECTED
CLOSED = _CLOSED
ERROR = _ERROR

# Private copies of the numbers in _const: folded into the bytecode, no RAM.
_PUBLISH = const(3)
_PUBREC = const(5)
_PUBREL = const(6)
_PUBCOMP = const(7)
_SUBSCRIBE = const(8)
_MQTT5 = const(5)
_PROTOCOL_ERROR = const(0x82)
_CLIENT_IDENTIFIER_NOT_VALID = const(0x85)
_PACKET_IDENTIFIER_NOT_FOUND = const(0x92)
_RECEIVE_MAXIMUM_EXCEEDED = const(0x93)
_PACKET_TOO_LARGE = const(0x95)
_QUOTA_EXCEEDED = const(0x97)
_RETAIN_NOT_SUPPORTED = const(0x9A)
_QOS_NOT_SUPPORTED = const(0x9B)
_MAX_PACKET_SIZE = const(268435460)

# State masks (1 << state) for the table.
_I = const(1)
_C = const(2)
_K = const(4)

# Error details: numbers of the texts in _names.DETAILS, which loads only
# when an error is printed (tests check each number against its name).
_E_RECEIVE_BEFORE_CONNECT = const(61)
_E_EMPTY_ID_NEEDS_CLEAN = const(63)
_E_SERVER_MAX_QOS = const(64)
_E_NO_RETAIN = const(65)
_E_QOS0_NEEDS_CONNECTION = const(66)
_E_OVER_PEER_MAX = const(67)
_E_PRESENT_WITH_CLEAN = const(69)
_E_OVER_MAX_QOS = const(71)
_E_OVER_RECEIVE_MAX = const(72)
_E_ACK_NOT_SENT = const(75)
_E_SUBACK_UNKNOWN_ID = const(76)
_E_REASON_CODE_COUNT = const(77)
_E_IDS_EXHAUSTED = const(79)
_E_ID_IN_USE = const(120)
_E_UNEXPECTED_TYPE = const(102)
_E_NOT_IN_STATE = const(103)

# Session Expiry Interval meaning "never" (3.1.2.11.2).
NEVER = 0xFFFFFFFF

# The transition table: three entries per packet type, at 3 * type: the
# states in which a CLIENT may receive it, the states in which a SERVER may,
# and the handler (flat: a tuple per row would cost 0.4 KiB of RAM on a
# board). A packet outside its states is a Protocol Error: a first packet
# other than CONNECT (MQTT-3.1.0-1), a second CONNECT (MQTT-3.1.0-2),
# anything but CONNACK or AUTH before CONNACK (MQTT-3.2.0-1 and 4.12), a
# packet meant for the other role.
# fmt: off
_RX = (  # type: tuple
    0, 0, None,  # type 0 is reserved (the codec refuses it)
    0, _I, "_rx_server",  # CONNECT
    _C, 0, "_rx_connack",  # CONNACK
    _K, _K, "_rx_publish",  # PUBLISH
    _K, _K, "_rx_ack",  # PUBACK
    _K, _K, "_rx_ack",  # PUBREC
    _K, _K, "_rx_pubrel",  # PUBREL
    _K, _K, "_rx_ack",  # PUBCOMP
    0, _K, "_rx_server",  # SUBSCRIBE
    _K, 0, "_rx_suback",  # SUBACK
    0, _K, "_rx_server",  # UNSUBSCRIBE
    _K, 0, "_rx_suback",  # UNSUBACK
    0, _K, "_rx_server",  # PINGREQ
    _K, 0, None,  # PINGRESP: receive_data() already noted the peer is alive
    _K, _C | _K, "_rx_disconnect",  # DISCONNECT
    _C | _K, _C | _K, "_rx_auth",  # AUTH
)
# fmt: on


def _local(code, why):
    return LocalProtocolError(code, why)


def _remote(why, code=_PROTOCOL_ERROR):
    return RemoteProtocolError(code, why)


_ack = None  # _session_ack.ack, once a session acknowledges by hand


class Session:
    """One MQTT session, client or server side; see the module docstring.

    ``role``: CLIENT or SERVER. ``version``: 4 (3.1.1) or 5 (5.0); a server
    session takes it from the CONNECT. Our own limits, announced to the peer
    in CONNECT (client) or CONNACK (server) and enforced on what it sends:
    ``receive_maximum`` (QoS 2 messages we hold unreleased), ``max_packet_size``,
    ``topic_alias_maximum`` (0: we accept no aliases), ``maximum_qos``
    (server only); a ``topic_alias_maximum`` put in the CONNECT or accept()
    properties wins, and becomes the attribute, as does a ``maximum_qos`` put
    in the accept() properties. ``auto_alias``: give outgoing topics
    aliases within the peer's Topic Alias Maximum (5.0). ``manual_ack``: a
    received QoS 1/2 message is delivered unanswered, and the application
    answers it with ack() (default: the session answers it before
    delivering it).
    ``released_events``: a PUBREC accepting one of our QoS 2 messages is an
    event too (PubRec, reason < 0x80; its PUBREL is sent), for a client
    that stores its messages and must then resend the PUBREL, not the
    PUBLISH, after a restart (see release()); on a server, so is a PUBREL
    (PubRel; its PUBCOMP is queued, the last packet), for a broker that
    stores the ids of the QoS 2 messages it received.

    Attributes to read: ``state``, ``role``, ``version``, ``client_id``,
    ``keep_alive`` (in force: Server Keep Alive overrides), and
    ``session_expiry_interval``. The peer's limits for the current
    connection, from its CONNECT (server) or CONNACK (client), 5.0 only (the
    defaults otherwise and between connections): ``peer_receive_maximum``
    (65535: none announced), ``peer_max_packet_size`` (268435460: none),
    ``peer_topic_alias_maximum`` (0: it takes no aliases from us).
    """

    # Set by _session5 when a 5.0 connection is up, and read only then (an
    # annotation alone costs no RAM on the board).
    _rx_alias: "dict | None"

    def __init__(
        self,
        role=_CLIENT,
        version=_MQTT5,
        receive_maximum=65535,
        max_packet_size=_MAX_PACKET_SIZE,
        topic_alias_maximum=0,
        auto_alias=False,
        maximum_qos=2,
        manual_ack=False,
        released_events=False,
    ):
        self.role = role
        self._rel_events = released_events
        self.version = version
        self.receive_maximum = receive_maximum
        self.max_packet_size = max_packet_size
        self.topic_alias_maximum = topic_alias_maximum
        self.auto_alias = auto_alias
        self.maximum_qos = maximum_qos
        self.state = _IDLE
        self.client_id = ""
        self.keep_alive = 0
        self.session_expiry_interval = 0
        self._msgs = {}
        self._order = []
        self._rx2 = set()
        self._acks = {} if manual_ack else None  # type: dict | None  # _session_ack
        self._next_id = 0
        self._now = 0
        self._lost_at = None
        self._reset()

    def _reset(self):
        # Everything that belongs to one network connection.
        self._parser = Parser(self.version if self.role == _CLIENT else None, self.max_packet_size)
        self._out = []  # encoded packets not yet taken by data_to_send()
        self._events = []
        self._eof = False
        self._hold = False  # server: an event awaits accept()/reject()/auth()
        self._reauth = False
        self._pending = {}  # SUBSCRIBE/UNSUBSCRIBE id -> (type, count)
        self._tx_alias = None
        self._nsent = 0
        self._ping_at = None
        self._last_rx = self._last_tx = self._now
        self.peer_receive_maximum = 65535
        self.peer_max_packet_size = _MAX_PACKET_SIZE
        self.peer_topic_alias_maximum = 0
        self._peer_qos = 2
        self._peer_retain = 1

    # -- bytes in, events out -------------------------------------------------

    def receive_data(self, data, now):
        """Feed bytes read from the network; ``b""`` means EOF. Returns None.
        Raises LocalProtocolError if a client session has not called connect()."""
        self._now = now
        if not data:
            self._eof = True
            return
        if self.role == _CLIENT and self.state == _IDLE:
            raise _local(_PROTOCOL_ERROR, _E_RECEIVE_BEFORE_CONNECT)
        self._parser.feed(data)

    def next_event(self):
        """Return the next event (a packet object) or None when more bytes are
        needed. Events: Connect, Auth, Subscribe, Unsubscribe (server);
        ConnAck, SubAck, UnsubAck (client); Publish (a new message, delivered
        once: already acknowledged as far as the session goes, or with
        manual_ack, to be answered with ack()); PubAck,
        PubComp, or PubRec with reason >= 0x80 (one of our QoS 1/2 messages
        is complete; a PubAck with 0x95 also reports a queued message found
        too large for the peer, with 0x9B or 0x9A one queued before a
        CONNACK whose Maximum QoS or Retain Available forbids it);
        Disconnect; with released_events, PubRec with reason < 0x80 too (our
        QoS 2 message was released), and on a server PubRel (the peer's
        was). A server session returns None while a Connect or Auth awaits
        accept(), reject() or auth(). After EOF
        and the last event, the session is IDLE as after connection_lost().
        Raises RemoteProtocolError (session now ERROR, answer queued); also
        PACKET_TOO_LARGE when, while nothing is read (awaiting accept(), or
        CLOSED), more than max_packet_size bytes wait."""
        ev = self._events
        while True:
            if ev:
                return ev.pop(0)
            st = self.state
            if st >= _CLOSED or self._hold or self.role == _CLIENT and st == _IDLE:
                if self._eof and st != _IDLE:
                    self.connection_lost()
                elif self._parser.buffered() > self.max_packet_size:
                    # Nothing is parsed now, so nothing checks packet sizes:
                    # bound what waits instead (rare: loads on demand).
                    from ._session_rare import overflow

                    overflow(self)
                return None
            try:
                p = self._parser.next_packet()
                if p is None:
                    if self._eof:
                        self.connection_lost()
                    return None
                # A whole packet shows the peer alive (MQTT-3.1.2-24), not a
                # byte: one byte per Keep Alive must not hold a connection.
                self._last_rx = self._now
                self._ping_at = None
                t = 3 * p.type
                if not _RX[t + self.role] & (1 << st):
                    raise _remote((_E_UNEXPECTED_TYPE, p.type))
                h = _RX[t + 2]
                p = getattr(self, h)(p) if h else None
            except RemoteProtocolError as e:
                # The peer broke the protocol (rare: loads on demand).
                from ._session_rare import fail

                fail(self, e)
                raise
            if p is not None:
                return p

    def data_to_send(self):
        """Return (and forget) the bytes queued for the network, b"" if none."""
        out = self._out
        if not out:
            return b""
        # The packets as encode() made them: one needs no copy (the usual
        # case: a device writes each publish at once), more are joined once.
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def connection_lost(self, now=None):
        """The network connection ended (any state, also after an error).
        The session state stays for the next connection; per-connection state
        (aliases, pending SUBSCRIBE ids, unsent bytes, events) is dropped.
        Returns None; never raises."""
        if now is not None:
            self._now = now
        if self.state != _IDLE:
            self._lost_at = self._now
        self.state = _IDLE
        self._reset()

    def expired(self, now):
        """True if the session's expiry interval has run out since its
        connection was lost (server side: drop the Session then). False while
        connected or if it never was."""
        e = self.session_expiry_interval
        if self.state != _IDLE or self._lost_at is None or e == NEVER:
            return False
        return now >= self._lost_at + e

    def resumable(self, now):
        """Server: True if a new connection for this client id may resume this
        session's state at time ``now`` (pass it to accept(resume=...)): a
        connection was accepted on it and it has not expired(). False for a
        client session."""
        return getattr(self, "_known", False) and not self.expired(now)

    # -- time -----------------------------------------------------------------

    def next_deadline(self):
        """Return the time at which tick() must next be called, or None if no
        timer runs (no connection, or Keep Alive 0)."""
        k = self.keep_alive
        if (
            not k
            or self.state != _CONNECTED
            and (self.role == _CLIENT or self.state != _CONNECTING)
        ):
            return None
        if self.role == _SERVER:
            return self._last_rx + k * 3 / 2
        if self._ping_at is not None:
            return self._ping_at + k / 2
        return min(self._last_tx, self._last_rx) + k

    def tick(self, now):
        """Run the keepalive timers at time ``now``. A client queues a PINGREQ
        when nothing was sent, or nothing received, for Keep Alive seconds.
        Returns None. Raises RemoteProtocolError(KEEP_ALIVE_TIMEOUT): server,
        nothing received for 1.5 x Keep Alive (MQTT-3.1.2-24 in 3.1.1,
        MQTT-3.1.2-22 in 5.0); client, no answer within Keep Alive / 2 of a
        PINGREQ (3.1.2.10: "a reasonable amount of time")."""
        self._now = now
        d = self.next_deadline()
        if d is None or now < d:
            return
        if self.role == _CLIENT and self._ping_at is None:
            self.ping()
            return
        from ._session_rare import timeout

        timeout(self)

    # -- client calls ---------------------------------------------------------

    def connect(self, packet, now):
        """Client: start a connection with the Connect ``packet`` (its
        ``protocol_level`` sets the version; our receive_maximum,
        max_packet_size and topic_alias_maximum are added to its 5.0
        properties). Clean start discards the session state (MQTT-3.1.2-4).
        Returns None. Raises LocalProtocolError if not IDLE or the packet is
        invalid."""
        self._need(_CLIENT, _I)
        v = packet.protocol_level
        if v == _MQTT5:
            from ._session5 import connect

            e = connect(self, packet)
        else:
            e = 0 if packet.clean_start else NEVER
            if not packet.client_id and not packet.clean_start:
                raise _local(_CLIENT_IDENTIFIER_NOT_VALID, _E_EMPTY_ID_NEEDS_CLEAN)
        data = encode(packet, v)  # raises before anything changes
        self.version = self._parser.version = v
        self._now = now
        self._reset()
        self.client_id = packet.client_id
        self.keep_alive = packet.keep_alive
        self.session_expiry_interval = e
        self._clean = packet.clean_start
        if self._clean:
            self._discard()
        self.state = _CONNECTING
        self._put(data)

    def subscribe(self, subscriptions, properties=None):
        """Client: send SUBSCRIBE for a Subscription, a topic filter string
        (QoS 0) or a list of those. Returns the packet id; the SubAck event
        answers it. Raises LocalProtocolError if not connected or invalid."""
        subs = []  # a loop, not a comprehension: that would be one more function
        for s in subscriptions if isinstance(subscriptions, list) else [subscriptions]:
            subs.append(Subscription(s) if isinstance(s, str) else s)
        return self._request(Subscribe, subs, properties)

    def unsubscribe(self, topic_filters, properties=None):
        """Client: send UNSUBSCRIBE for a filter or a list of filters. Returns
        the packet id; the UnsubAck event answers it. Raises LocalProtocolError."""
        if isinstance(topic_filters, str):
            topic_filters = [topic_filters]
        return self._request(Unsubscribe, topic_filters, properties)

    def ping(self):
        """Client: send PINGREQ now (tick() does this by itself). Returns None."""
        self._need(_CLIENT, _K)
        self._send(PingReq())
        self._ping_at = self._now

    # -- server calls ---------------------------------------------------------

    def accept(self, properties=None, assigned_client_id=None, resume=None):
        """Server: accept the CONNECT (after the Connect event, or an Auth
        event) with a CONNACK carrying ``properties``; our limits and the
        authentication method are added. ``assigned_client_id`` (str, or an
        int counter turned into "auto-N") names a client that sent an empty
        client id (MQTT-3.1.3-6). A ``response_information`` property is
        left out unless the CONNECT asked for it (MQTT-3.1.2-28), and
        ``authentication_method`` and ``authentication_data`` unless the
        CONNECT had a method (MQTT-4.12.0-6).
        ``resume``: the broker's stored Session for this client id, whose
        state moves into this one (default: this
        session's own state, if it had a connection before). Session Present
        is set when state is resumed and Clean Start was 0 (MQTT-3.2.2-2, -3);
        unacknowledged messages are then resent. Returns the Session Present
        flag. A CONNACK larger than the client's Maximum Packet Size goes
        without its reason_string and user_property (MQTT-3.2.2-19, -20).
        A ``maximum_qos`` or ``retain_available`` 0 in ``properties`` (5.0)
        is enforced as announced: a PUBLISH above that QoS gets DISCONNECT
        0x9B, a retained one 0x9A (the latter on this connection only).
        Raises LocalProtocolError if not awaiting a CONNECT answer,
        PACKET_TOO_LARGE if the CONNACK is too large even so, or
        QOS_NOT_SUPPORTED, RETAIN_NOT_SUPPORTED if the CONNECT's Will
        exceeds those ``properties`` (MQTT-3.2.2-12, -13); nothing is sent
        then: reject() may still answer, with that code."""
        from ._session_server import accept

        return accept(self, properties, assigned_client_id, resume)

    def reject(self, reason_code, properties=None):
        """Server: refuse the CONNECT with a CONNACK carrying ``reason_code``
        (5.0 code >= 0x80; mapped to a 3.1.1 return code, e.g. 0x87 -> 5).
        The session is then CLOSED: send data_to_send() and close. Returns
        None. Raises LocalProtocolError if not awaiting a CONNECT answer or
        the code is a success code (< 0x80)."""
        from ._session_server import reject

        reject(self, reason_code, properties)

    def suback(self, packet_id, reason_codes, properties=None):
        """Server: answer the Subscribe event ``packet_id`` with one reason
        code per subscription (MQTT-3.9.3-1). Returns None. Raises
        LocalProtocolError for an unknown id or a wrong count."""
        from ._session_server import suback

        suback(self, packet_id, reason_codes, properties)

    def unsuback(self, packet_id, reason_codes=None, properties=None):
        """Server: answer the Unsubscribe event ``packet_id`` (5.0: one reason
        code per filter, MQTT-3.11.3-1; 3.1.1: none). Returns None. Raises
        LocalProtocolError for an unknown id or a wrong count."""
        from ._session_server import unsuback

        unsuback(self, packet_id, reason_codes, properties)

    # -- both ends ------------------------------------------------------------

    def publish(
        self, topic, payload=b"", qos=0, retain=False, properties=None, packet_id=None, dup=False
    ):
        """Send an application message. Returns the packet id, or None for QoS
        0. ``packet_id``: the id of a QoS 1/2 message (default: a free one),
        as new_packet_id() gave it or a store kept it with the message;
        ``dup=True``: it may have gone out before (a message a store kept
        across a restart of the program: MQTT-3.3.1-1, MQTT-4.4.0-1).
        QoS 1/2 messages are kept until complete (event PubAck, PubComp,
        or failed PubRec) and wait in order while the peer's Receive Maximum
        is reached or no connection is up (those queued before the CONNACK
        fail then if it forbids their QoS or retain: see next_event()). QoS 0
        needs a connection.
        Raises LocalProtocolError: QoS 0 while not connected, QoS or retain
        the server does not offer (MQTT-3.2.2-11, -14: QOS_NOT_SUPPORTED,
        RETAIN_NOT_SUPPORTED), larger than the peer's Maximum Packet Size
        (PACKET_TOO_LARGE, MQTT-3.2.2-15), a ``topic_alias`` property above
        the peer's Topic Alias Maximum (TOPIC_ALIAS_INVALID, MQTT-3.3.2-9,
        -11), a ``subscription_identifier`` from a client (MQTT-3.3.4-6), a
        ``packet_id`` in use or out of range, or an invalid topic or
        property."""
        connected = self.state == _CONNECTED
        if connected:
            if qos > self._peer_qos:
                raise _local(_QOS_NOT_SUPPORTED, _E_SERVER_MAX_QOS)
            if retain and not self._peer_retain:
                raise _local(_RETAIN_NOT_SUPPORTED, _E_NO_RETAIN)
        elif not qos:
            raise _local(_PROTOCOL_ERROR, _E_QOS0_NEEDS_CONNECTION)
        p = Publish(topic, payload, qos, retain, dup, None, properties)
        if properties:
            from ._session5 import publish

            publish(self, p)
        if not qos:
            self._tx_publish(p)
            return None
        pid = packet_id
        if pid is None:
            pid = self.new_packet_id()
        elif pid in self._msgs or pid in self._pending:
            raise _local(_PROTOCOL_ERROR, (_E_ID_IN_USE, pid))
        p.packet_id = pid
        order = self._order
        n = self._nsent
        if connected and n == len(order) and n < self.peer_receive_maximum:
            self._tx_publish(p)
            self._nsent = n + 1
        elif len(encode(p, self.version)) > self.peer_max_packet_size:  # checked now, sent later
            raise _local(_PACKET_TOO_LARGE, _E_OVER_PEER_MAX)
        self._msgs[pid] = p
        order.append(pid)
        return pid

    def disconnect(self, reason_code=0, properties=None):
        """Send DISCONNECT (5.0 server too; a 3.1.1 server has none, so it
        only closes) and move to CLOSED: then close the connection. A client
        may change the Session Expiry Interval here, but not from 0
        (MQTT-3.14.2-2). A server only once connected: before its CONNACK it
        answers with reject() (MQTT-3.14.0-1). Returns None. Raises
        LocalProtocolError, also for a reason code the other role sends
        (MQTT-3.14.2-1: 0x04 is a client's, 0x87, 0x89, 0x8B, 0x8D to 0x8F
        and 0x9A to 0xA2 a server's)."""
        self._need(None, _K if self.role else _C | _K)
        if properties or reason_code or self.role:
            from ._session5 import disconnect

            return disconnect(self, reason_code, properties)
        self._send(Disconnect())
        self.state = _CLOSED
        return None

    def auth(self, data=None, reason_code=None, properties=None):
        """5.0 enhanced authentication: send AUTH with ``authentication_data``
        ``data`` and the method from the CONNECT. Default reason: 0x19
        (re-authenticate) for a connected client not yet re-authenticating,
        else 0x18 (continue); a server ends a re-authentication with 0x00.
        Returns None. Raises LocalProtocolError when no AUTH may be sent."""
        from ._session5 import auth

        auth(self, data, reason_code, properties)

    def ack(self, packet_id, reason_code=0, properties=None):
        """With manual_ack: answer the received QoS 1/2 Publish ``packet_id``
        with PUBACK (QoS 1) or PUBREC (QoS 2) carrying ``reason_code`` and
        ``properties`` (5.0). Success codes (< 0x80, e.g. 0x10 No matching
        subscribers) accept the message: a QoS 2 one then awaits PUBREL and a
        resend is not delivered again. A code >= 0x80 (e.g. 0x87 Not
        authorized, 0x97 Quota exceeded) refuses it and ends the exchange
        (4.3.3). 3.1.1 acks carry no reason code: a success code sends a plain
        ack, a code >= 0x80 sends nothing and moves a connected session to
        CLOSED (MQTT-3.3.5-2: close the connection), and the peer may send the
        message again on a later connection. Works in any state: while no
        connection is up the answer is kept and sent when the peer resends
        the message. Returns None. Raises LocalProtocolError: no message
        awaits an answer under that id (never delivered, already answered, or
        the session state was discarded or moved), a reason code PUBACK/PUBREC
        does not allow, properties on 3.1.1."""
        global _ack
        if _ack is None:  # loaded on first use; kept, as this runs per message
            from ._session_ack import ack as _ack
        _ack(self, packet_id, reason_code, properties)  # type: ignore[misc]

    @property
    def inflight(self):
        """Number of our QoS 1/2 messages not yet complete (sent or queued)."""
        return len(self._order)

    def drop_oldest(self):
        """Forget the oldest QoS 1/2 message that has not gone out on the wire
        (for a bounded queue that drops the oldest). Returns its packet id, or
        None when every waiting message was already sent: those must complete."""
        from ._session_rare import drop_oldest

        return drop_oldest(self)

    def release(self, packet_id):
        """Client: our QoS 2 message ``packet_id``, not sent on this
        connection, was released before (its PUBREC came, as a store kept
        across a restart of the program): send PUBREL for it instead of the
        PUBLISH (MQTT-4.3.3-4). Returns None. Raises LocalProtocolError if
        there is no such message."""
        from ._session_rare import release

        release(self, packet_id)

    def new_packet_id(self):
        """A packet id no message or request of ours uses now (MQTT-2.2.1-3),
        for a publish() to come: a client that stores the message first
        stores its id with it. Raises LocalProtocolError when all are used."""
        i = self._next_id
        for _ in range(65535):
            i = i % 65535 + 1
            if i not in self._msgs and i not in self._pending:
                self._next_id = i
                return i
        raise _local(_QUOTA_EXCEEDED, _E_IDS_EXHAUSTED)

    # -- receive handlers (named in _RX) --------------------------------------

    def _rx_server(self, p):
        # CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ: only a server receives them.
        from ._session_server import _rx_server

        return _rx_server(self, p)

    def _rx_connack(self, p):
        if p.reason_code:
            self.state = _CLOSED  # refused: the server closes (MQTT-3.2.2-7)
            return p
        if p.session_present and self._clean:
            raise _remote(_E_PRESENT_WITH_CLEAN)  # MQTT-3.2.2-2
        if self.version == _MQTT5:
            from ._session5 import _rx_connack

            _rx_connack(self, p)
        self._connected(p.session_present)
        return p

    def _rx_publish(self, p):
        if self.version == _MQTT5 and (self._rx_alias is not None or p.properties):
            from ._session5 import rx_alias

            rx_alias(self, p)
        q = p.qos
        if q > self.maximum_qos:
            raise _remote(_E_OVER_MAX_QOS, _QOS_NOT_SUPPORTED)  # MQTT-3.2.2-12
        if not q:
            return p
        if self._acks is not None:
            from ._session_ack import _rx_publish

            return _rx_publish(self, p)
        pid = p.packet_id
        if q == 1:
            self._send(PubAck(pid))  # MQTT-4.3.2-4
            return p
        rx2 = self._rx2
        if pid in rx2:
            # Not yet released: acknowledge again, deliver no duplicate
            # (MQTT-4.3.3-9), whatever the DUP flag says.
            self._send(PubRec(pid))
            return None
        if self.version == _MQTT5 and len(rx2) >= self.receive_maximum:
            raise _remote(_E_OVER_RECEIVE_MAX, _RECEIVE_MAXIMUM_EXCEEDED)  # MQTT-3.3.4-9
        rx2.add(pid)
        self._send(PubRec(pid))  # MQTT-4.3.3-8
        return p

    def _rx_ack(self, p):
        # PUBACK, PUBREC or PUBCOMP for one of our messages.
        t = p.type
        pid = p.packet_id
        m = self._msgs.get(pid)
        # Expected: PUBACK (4) for QoS 1, PUBREC (5) for QoS 2, PUBCOMP for
        # our PUBREL. Anything else (late, repeated, wrong) is rare.
        if m is None or t != (_PUBCOMP if m.type == _PUBREL else m.qos + 3):
            from ._session_rare import _rx_ack

            return _rx_ack(self, p, m)
        order = self._order
        i = order.index(pid)
        n = self._nsent - 1  # the last one sent
        if t == _PUBREC and p.reason_code < 0x80:
            rel = self._msgs[pid] = PubRel(pid)  # MQTT-4.3.3-4: PUBLISH is not sent again
            if self.role == _CLIENT:
                rel.message = m  # type: ignore[attr-defined]  # until PUBCOMP, for _discard
            if i < n:
                # The PUBREL goes out after all sent so far: moved there, a
                # resumption resends in the order first sent (MQTT-4.6.0-1),
                # PUBRELs in the order the PUBRECs came (MQTT-4.6.0-4).
                del order[i]
                order.insert(n, pid)
            self._send(rel)
            return p if self._rel_events else None
        if i > n:
            raise _remote(_E_ACK_NOT_SENT)
        del order[i]
        del self._msgs[pid]
        self._nsent = n
        self._pump()
        return p

    def _rx_pubrel(self, p):
        pid = p.packet_id
        rc = 0
        if pid in self._rx2:
            self._rx2.remove(pid)  # MQTT-4.3.3-12: the id may now carry a new message
        elif self.version == _MQTT5:
            rc = _PACKET_IDENTIFIER_NOT_FOUND
        self._send(PubComp(pid, rc))  # MQTT-4.3.3-11
        return p if self._rel_events and self.role else None

    def _rx_suback(self, p):
        e = self._pending.pop(p.packet_id, None)
        if e is None or e[0] + 1 != p.type:
            raise _remote(_E_SUBACK_UNKNOWN_ID)
        if (self.version == _MQTT5 or e[0] == _SUBSCRIBE) and len(p.reason_codes) != e[1]:
            raise _remote(_E_REASON_CODE_COUNT)  # MQTT-3.9.3-1, MQTT-3.11.3-1
        return p

    def _rx_disconnect(self, p):
        if self.role == _SERVER:
            from ._session_server import _rx_disconnect

            _rx_disconnect(self, p)
        self.state = _CLOSED
        return p

    def _rx_auth(self, p):
        from ._session5 import _rx_auth

        return _rx_auth(self, p)

    # -- internals -------------------------------------------------------------

    def _need(self, role, mask):
        if role is not None and role != self.role or not (1 << self.state) & mask:
            raise _local(_PROTOCOL_ERROR, (_E_NOT_IN_STATE, self.state))

    def _put(self, data):
        self._out.append(data)
        self._last_tx = self._now

    def _send(self, p):
        data = encode(p, self.version)
        if len(data) > self.peer_max_packet_size:  # only a 5.0 peer sets a maximum
            from ._session5 import too_large

            return too_large(self, p)
        self._put(data)
        return None

    def _tx_publish(self, p):
        if self._tx_alias is not None and not p.dup:
            from ._session5 import tx_aliased

            tx_aliased(self, p)
        else:
            self._send(p)
        if p.qos:
            p.dup = True  # any later send is a redelivery (MQTT-3.3.1-1)

    def _pump(self):
        # Send waiting messages while the peer's Receive Maximum allows
        # (MQTT-4.9.0-2); after a resumption this resends in original order.
        order = self._order
        rmax = self.peer_receive_maximum
        while self.state == _CONNECTED and self._nsent < len(order) and self._nsent < rmax:
            pid = order[self._nsent]
            m = self._msgs[pid]
            try:
                if m.type == _PUBREL:
                    self._send(m)
                else:
                    self._tx_publish(m)
            except LocalProtocolError as e:
                # Too large for this connection's peer: drop it as if complete
                # (MQTT-3.1.2-25) and report it as a failed PubAck.
                del order[self._nsent]
                del self._msgs[pid]
                self._events.append(PubAck(pid, e.reason_code))
                continue
            self._nsent += 1

    def _connected(self, present):
        # CONNACK sent or received with success.
        self.state = _CONNECTED
        if not present:
            self._discard()  # MQTT-3.2.2-5 (client), MQTT-3.1.2-4 (server)
        if self.version == _MQTT5:
            from ._session5 import _connected

            _connected(self)
        self._nsent = 0
        # MQTT-4.4.0-1: resend unacknowledged PUBLISH (DUP set) and PUBREL, in order.
        self._pump()

    def _discard(self):
        # Drop the session state (MQTT-3.1.2-4): nothing to do, the usual
        # case, unless messages are stored.
        if self._order or self._rx2 or self._acks:
            from ._session_rare import _discard

            _discard(self)

    def _request(self, cls, items, properties):
        self._need(_CLIENT, _K)
        pid = self.new_packet_id()
        self._send(cls(pid, items, properties))
        self._pending[pid] = (cls.type, len(items))
        return pid
