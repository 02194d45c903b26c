"""MQTT 5.0-only parts of the session: the limits both ends announce in
CONNECT and CONNACK, topic aliases, the AUTH exchange, and a DISCONNECT with
properties (or from a server, which loads this module anyway).

Imported by ``_session`` on first use, so a 3.1.1 device never loads them.
Each function takes the Session ``s`` and reads or updates its state. The
attributes only 5.0 uses are set here, at the start of each 5.0 connection
(``_auth_method``, ``_connect_expiry``, ``_rx_alias``), so a 3.1.1 session
does not carry them.
"""

from ._errors import LocalProtocolError, RemoteProtocolError
from ._packets import Auth, Disconnect, PubAck

try:
    from micropython import const
except ImportError:  # CPython
    const = int

# Same values as in _session and _const (imported names would cost RAM).
_CLIENT = const(0)
_SERVER = const(1)
_CONNECTING = const(1)
_CONNECTED = const(2)
_CLOSED = const(3)
_MQTT5 = const(5)
_SUCCESS = const(0)
_CONTINUE_AUTHENTICATION = const(0x18)
_RE_AUTHENTICATE = const(0x19)
_PROTOCOL_ERROR = const(0x82)
_TOPIC_ALIAS_INVALID = const(0x94)
_PUBLISH = const(3)
_PACKET_TOO_LARGE = const(0x95)
_RETAIN_NOT_SUPPORTED = const(0x9A)
_QOS_NOT_SUPPORTED = const(0x9B)
_MAX_PACKET_SIZE = const(268435460)

# DISCONNECT reason codes only a server sends (3.14.2.1, MQTT-3.14.2-1); 0x04
# Disconnect with Will Message is the only one only a client sends.
_SERVER_ONLY = b"\x87\x89\x8b\x8d\x8e\x8f\x9a\x9b\x9c\x9d\x9e\x9f\xa0\xa1\xa2"

# Error details: numbers of the texts in _names.DETAILS, which loads only
# when an error is printed (tests check each number against its name).
_E_OVER_PEER_MAX = const(67)
_E_EXPIRY_NOT_ALLOWED = const(68)
_E_CONNACK_AUTH_METHOD = const(70)
_E_AUTH_METHOD = const(80)
_E_AUTH_NOT_NOW = const(81)
_E_BAD_REASON_CODE = const(97)
_E_ALIAS_RANGE = const(104)
_E_ALIAS_NOT_SET = const(105)
_E_AUTH_OUT_OF_TURN = const(106)
_E_PROP_VALUE = const(108)
_E_PROP_PLACE = const(112)
_E_AUTH_DATA_NO_METHOD = const(117)
_E_ALIAS_ONLY = const(122)


def _get(p, name, default=None):
    d = p.properties
    return d.get(name, default) if d else default


def our_limits(s, props):
    """Add our limits (Receive Maximum, Maximum Packet Size, Topic Alias
    Maximum) to the CONNECT or CONNACK property dict ``props``. A Topic
    Alias Maximum the application put there itself is the one announced, so
    it becomes the session's own too: else the session would refuse the
    aliases it just allowed the peer (MQTT-3.3.2-10, -12). The other limits
    put there are announced but not enforced (only the session's own are):
    a client announces a Receive Maximum lower than it enforces, to bear
    brokers that exceed it (see _client_base)."""
    a = props.get("topic_alias_maximum")
    if a is not None:
        s.topic_alias_maximum = a
    if s.receive_maximum != 65535:
        props["receive_maximum"] = s.receive_maximum
    if s.max_packet_size < _MAX_PACKET_SIZE:
        props["maximum_packet_size"] = s.max_packet_size
    if s.topic_alias_maximum:
        props["topic_alias_maximum"] = s.topic_alias_maximum


def connect(s, packet):
    """The 5.0 part of Session.connect(): add our limits to the Connect
    ``packet``'s properties; returns its Session Expiry Interval. With
    Request Problem Information 0, guard what the server may not send then.
    The attributes set here are read only once connected (if encoding the
    packet fails next, the session stays IDLE and they are set again)."""
    w = packet.will
    if w is not None:
        no_wildcard(w.properties)
    props = dict(packet.properties) if packet.properties else {}
    our_limits(s, props)
    packet.properties = props
    s._auth_method = props.get("authentication_method")
    check = no_problem_info if props.get("request_problem_information") == 0 else None
    for h in ("_rx_ack", "_rx_pubrel", "_rx_suback", "_rx_auth"):
        guard(s, h, check)  # all a client receives but PUBLISH, CONNACK, DISCONNECT
    e = s._connect_expiry = props.get("session_expiry_interval", 0)
    return e


def _connected(s):
    """Start a 5.0 connection (for Session._connected, before it sends what
    waits): new topic alias maps, as they never carry over; and a client
    fails the messages waiting for this CONNACK that its Maximum QoS or
    Retain Available forbid (MQTT-3.2.2-11, -14). Sending them would make
    the server disconnect, so each ends as a PubAck event with 0x9B QoS not
    supported or 0x9A Retain not supported, like a queued message too large
    for the peer. Resent PUBLISHes (DUP) too: a server that lowered its
    limits while keeping the session would disconnect at each resend, for
    ever; a PUBREL may still go. Done once here, not per message in _pump:
    publish() checks what it queues while connected. A Topic Alias the
    application gave a message kept from an earlier connection is dropped:
    it mapped its topic there only (3.3.2.3.4), and could exceed this
    connection's Topic Alias Maximum (MQTT-3.3.2-9, -11); the message goes
    with its topic (publish() refuses an alias without one at QoS 1/2)."""
    s._rx_alias = {} if s.topic_alias_maximum else None
    if s.auto_alias and s.peer_topic_alias_maximum:
        s._tx_alias = {}
    msgs = s._msgs
    for pid in s._order:
        m = msgs[pid]
        d = m.properties
        if d and "topic_alias" in d:
            d = dict(d)
            del d["topic_alias"]
            m.properties = d or None
    q = s._peer_qos
    r = s._peer_retain
    if q > 1 and r:  # the defaults; always so on a server
        return
    keep = []
    for pid in s._order:
        m = msgs[pid]
        rc = 0
        if m.type == _PUBLISH:
            if m.qos > q:
                rc = _QOS_NOT_SUPPORTED
            elif m.retain and not r:
                rc = _RETAIN_NOT_SUPPORTED
        if rc:
            del msgs[pid]
            s._events.append(PubAck(pid, rc))
        else:
            keep.append(pid)
    s._order = keep


def peer_limits(s, p):
    """Take the peer's limits from its CONNECT or CONNACK ``p``."""
    s.peer_receive_maximum = _get(p, "receive_maximum", 65535)
    s.peer_max_packet_size = _get(p, "maximum_packet_size", _MAX_PACKET_SIZE)
    s.peer_topic_alias_maximum = _get(p, "topic_alias_maximum", 0)


def _rx_connack(s, p):
    """Apply the properties of an accepting 5.0 CONNACK ``p``."""
    m = s._auth_method
    if m is not None and _get(p, "authentication_method") != m:
        raise RemoteProtocolError(_PROTOCOL_ERROR, _E_CONNACK_AUTH_METHOD)  # 4.12.0-5
    d = p.properties
    if d and "authentication_data" in d and "authentication_method" not in d:
        raise RemoteProtocolError(_PROTOCOL_ERROR, _E_AUTH_DATA_NO_METHOD)  # 3.2.2.3.18
    peer_limits(s, p)
    s._peer_qos = _get(p, "maximum_qos", 2)
    s._peer_retain = _get(p, "retain_available", 1)
    cid = _get(p, "assigned_client_identifier")
    if cid:
        s.client_id = cid
    ka = _get(p, "server_keep_alive")
    if ka is not None:
        s.keep_alive = ka  # MQTT-3.2.2-21
    e = _get(p, "session_expiry_interval")
    if e is not None:
        s.session_expiry_interval = e


def guard(s, name, check):
    """Make the Session ``s`` call ``check(s, p)`` before its receive handler
    ``name`` (a name in _session._RX) for each packet ``p`` that handler
    gets; ``check`` raises RemoteProtocolError to refuse it. ``check`` None
    removes the guard. next_event() looks the handler up on the session, so
    the wrapper goes there, over the class's method: a check only some
    connections need (those asking for it in CONNECT or CONNACK) costs the
    others nothing, and adds nothing to the 3.1.1 core. Set at the start
    of each connection (connect(), accept()), for that connection."""
    if check is None:
        try:
            delattr(s, name)
        except AttributeError:  # no guard
            pass
        return
    h = getattr(type(s), name)

    def rx(p):
        check(s, p)
        return h(s, p)

    setattr(s, name, rx)


def no_problem_info(s, p):
    """A guard (see guard()) for a client whose CONNECT set Request Problem
    Information to 0: a Reason String or User Property in anything but
    PUBLISH, CONNACK and DISCONNECT is a Protocol Error (MQTT-3.1.2-29,
    3.1.2.11.7)."""
    d = p.properties
    if d:
        for k in ("reason_string", "user_property"):
            if k in d:
                raise RemoteProtocolError(_PROTOCOL_ERROR, (_E_PROP_PLACE, k))


def quiet(s, props):
    """``props`` for a packet a server sends other than PUBLISH, CONNACK and
    DISCONNECT: without Reason String and User Property when the client's
    CONNECT set Request Problem Information to 0 (MQTT-3.1.2-29). Returns
    ``props`` itself or a reduced copy."""
    if (
        props
        and s.role == _SERVER
        and getattr(s, "_quiet", False)
        and ("reason_string" in props or "user_property" in props)
    ):
        props = dict(props)
        props.pop("reason_string", None)
        props.pop("user_property", None)
    return props


def too_large(s, p):
    """Send packet ``p``, too large for the peer's Maximum Packet Size, without
    its Reason String and User Property, as the spec allows (3.2.2.3.6,
    3.4.2.2.2...). Raises LocalProtocolError(PACKET_TOO_LARGE) if it has
    none of those or is a PUBLISH."""
    d = p.properties
    if not d or p.type == _PUBLISH or "reason_string" not in d and "user_property" not in d:
        raise LocalProtocolError(_PACKET_TOO_LARGE, _E_OVER_PEER_MAX)
    d = dict(d)
    d.pop("reason_string", None)
    d.pop("user_property", None)
    p.properties = d
    s._send(p)


def publish(s, p):
    """The checks Session.publish() makes of the properties of PUBLISH ``p``
    (for 5.0; 3.1.1 refuses properties when encoding): a Topic Alias within
    the peer's Topic Alias Maximum (MQTT-3.3.2-9 client, -11 server; 0 when
    not connected, so a message queued offline cannot take one), no
    Subscription Identifier from a client (MQTT-3.3.4-6), no wildcard in
    the Response Topic (MQTT-3.3.2-14). Raises
    LocalProtocolError."""
    d = p.properties
    no_wildcard(d)
    a = d.get("topic_alias")
    if a is not None:
        if a > s.peer_topic_alias_maximum:
            raise LocalProtocolError(_TOPIC_ALIAS_INVALID, (_E_ALIAS_RANGE, a))
        if not p.topic and (p.qos or s._tx_alias is not None):
            # An alias maps a topic on one connection only (3.3.2.3.4): a
            # QoS 1/2 message may be resent on the next, where it maps
            # nothing (the peer would disconnect at every resend); and
            # auto_alias keys its aliases by topic.
            raise LocalProtocolError(_PROTOCOL_ERROR, _E_ALIAS_ONLY)
    if s.role == _CLIENT and "subscription_identifier" in d:
        raise LocalProtocolError(_PROTOCOL_ERROR, (_E_PROP_PLACE, "subscription_identifier"))


def no_wildcard(d):
    """Raise LocalProtocolError if the property dict ``d`` (of a PUBLISH or a
    Will) has a Response Topic with a wildcard (MQTT-3.3.2-14). Checked
    here, on what a session sends, not by the codec: encode() can still make
    such a packet, to test a peer with."""
    t = d.get("response_topic") if d else None
    if type(t) is str and ("+" in t or "#" in t):
        raise LocalProtocolError(_PROTOCOL_ERROR, (_E_PROP_VALUE, "response_topic", t))


def rx_alias(s, p):
    """Resolve the Topic Alias of a received PUBLISH ``p`` in place (3.3.2.3.4)
    and take it out of the properties: it means something on this connection
    only, so the event does not carry it (a broker forwarding the properties
    would send the alias on)."""
    d = p.properties
    a = d.pop("topic_alias", None) if d else None
    if a is None:
        return
    if not d:
        p.properties = None
    if a > s.topic_alias_maximum:  # 0 is refused by the codec
        # MQTT-3.3.2-10 (client) / MQTT-3.3.2-12 (server): only 1..our maximum.
        raise RemoteProtocolError(_TOPIC_ALIAS_INVALID, (_E_ALIAS_RANGE, a))
    m = s._rx_alias
    if p.topic:
        m[a] = p.topic
    else:
        t = m.get(a)
        if t is None:
            raise RemoteProtocolError(_PROTOCOL_ERROR, (_E_ALIAS_NOT_SET, a))
        p.topic = t


def tx_aliased(s, p):
    """Send PUBLISH ``p`` with a Topic Alias: the topic gets one on first use
    while the peer's Topic Alias Maximum allows (MQTT-3.3.2-9, -11), later
    sends carry only the alias. ``p`` itself keeps its topic and properties,
    so a resent copy carries the full topic."""
    m = s._tx_alias
    topic = p.topic
    a = m.get(topic)
    props = p.properties
    if a is None:
        if len(m) >= s.peer_topic_alias_maximum:
            s._send(p)
            return
        a = len(m) + 1
        try:
            p.properties = _with(props, a)
            s._send(p)
        finally:
            p.properties = props
        m[topic] = a
        return
    try:
        p.topic = ""
        p.properties = _with(props, a)
        s._send(p)
    finally:
        p.topic = topic
        p.properties = props


def _with(props, a):
    d = dict(props) if props else {}
    d["topic_alias"] = a
    return d


def _auth_ok(s, rc, sender):
    # Which AUTH reason codes the ``sender`` role may use now (4.12): 0x18
    # during the CONNECT exchange or a re-authentication, 0x19 from a
    # connected client to start one, 0x00 from the server to end one.
    if rc == _CONTINUE_AUTHENTICATION:
        return s.state == _CONNECTING or s._reauth
    if s.state != _CONNECTED:
        return False
    if sender == _CLIENT:
        return rc == _RE_AUTHENTICATE and not s._reauth
    return rc == _SUCCESS and s._reauth


def _rx_auth(s, p):
    """Check a received AUTH against the exchange in progress; returns it as
    the event. MQTT-4.12.0-5: same method as in CONNECT; AUTH without a
    method in CONNECT, or out of turn, is a Protocol Error (4.12)."""
    m = s._auth_method
    d = p.properties
    if m is None or not d or d.get("authentication_method") != m:
        raise RemoteProtocolError(_PROTOCOL_ERROR, _E_AUTH_METHOD)
    rc = p.reason_code
    if not _auth_ok(s, rc, 1 - s.role):
        raise RemoteProtocolError(_PROTOCOL_ERROR, (_E_AUTH_OUT_OF_TURN, rc))
    s._reauth = rc == _RE_AUTHENTICATE or rc == _CONTINUE_AUTHENTICATION and s._reauth
    s._hold = s.role != _CLIENT and s.state == _CONNECTING
    return p


def auth(s, data, rc, properties):
    """Send AUTH for Session.auth(); see there."""
    m = getattr(s, "_auth_method", None)  # unset: no 5.0 CONNECT yet
    if rc is None:
        ok = s.role == _CLIENT and s.state == _CONNECTED and not s._reauth
        rc = _RE_AUTHENTICATE if ok else _CONTINUE_AUTHENTICATION
    if s.version != _MQTT5 or m is None or not _auth_ok(s, rc, s.role):
        raise LocalProtocolError(_PROTOCOL_ERROR, _E_AUTH_NOT_NOW)
    d = dict(quiet(s, properties)) if properties else {}
    d["authentication_method"] = m
    if data is not None:
        d["authentication_data"] = data
    s._send(Auth(rc, d))
    s._reauth = rc == _RE_AUTHENTICATE or rc == _CONTINUE_AUTHENTICATION and s._reauth
    s._hold = False


def disconnect(s, reason_code, properties):
    """Session.disconnect() with a reason code or properties, or on a
    server; see there."""
    if s.version == _MQTT5 and (reason_code == 4 if s.role else reason_code in _SERVER_ONLY):
        raise LocalProtocolError(_PROTOCOL_ERROR, (_E_BAD_REASON_CODE, reason_code))
    e = properties.get("session_expiry_interval") if properties else None
    # A 3.1.1 CONNECT (properties are refused there anyway) has expiry 0
    # with clean session 1, "never" with 0.
    ce = s._connect_expiry if s.version == _MQTT5 or s.role == _SERVER else not s._clean
    if e is not None and (s.role == _SERVER or e and not ce):
        raise LocalProtocolError(_PROTOCOL_ERROR, _E_EXPIRY_NOT_ALLOWED)  # MQTT-3.14.2-2
    if s.role == _CLIENT or s.version == _MQTT5:
        s._send(Disconnect(reason_code, properties))
    if e is not None:
        s.session_expiry_interval = e
    s.state = _CLOSED
