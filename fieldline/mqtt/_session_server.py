"""Server side of the session: the CONNECT and its answer, SUBACK/UNSUBACK.

Imported by ``_session`` on first use, so a client device never loads it.
Each function takes the Session ``s``; the public docstrings are on the
``Session`` methods that call these.
"""

from ._codec import encode
from ._packets import ConnAck, PingResp, SubAck, UnsubAck
from ._session import NEVER, _local, _remote
from ._session5 import guard, our_limits, peer_limits, quiet
from ._session_rare import V3_CODES

try:
    from micropython import const
except ImportError:  # CPython
    const = int

# Same values as in _session (its underscored const() names do not exist at
# run time on MicroPython, so they cannot be imported).
_SERVER = const(1)
_CONNECTING = const(1)
_CLOSED = const(3)
_C = const(2)  # state masks (1 << state)
_K = const(4)
_CONNECT = const(1)
_SUBSCRIBE = const(8)
_UNSUBSCRIBE = const(10)
_PINGREQ = const(12)
_MQTT5 = const(5)
_PROTOCOL_ERROR = const(0x82)
_CLIENT_IDENTIFIER_NOT_VALID = const(0x85)
_PACKET_TOO_LARGE = const(0x95)
_RETAIN_NOT_SUPPORTED = const(0x9A)
_QOS_NOT_SUPPORTED = const(0x9B)

# Error details: numbers of the texts in _names.DETAILS, which loads only
# when an error is printed (tests check each number against its name).
_E_EMPTY_ID_NEEDS_CLEAN = const(63)
_E_NO_RETAIN = const(65)
_E_OVER_PEER_MAX = const(67)
_E_EXPIRY_WAS_0 = const(78)
_E_EMPTY_ID_PASS_ASSIGNED = const(82)
_E_NO_SUCH_REQUEST = const(83)
_E_WILL_QOS_OVER_MAX = const(116)
_E_AUTH_DATA_NO_METHOD = const(117)
_E_REJECT_WITH_SUCCESS = const(119)


def _get(p, name, default=None):
    d = p.properties
    return d.get(name, default) if d else default


def accept(s, properties=None, assigned_client_id=None, resume=None):
    s._need(_SERVER, _C)
    props = dict(properties) if properties else {}
    v5 = s.version == _MQTT5
    cid = s.client_id
    if not cid:
        if assigned_client_id is None:
            raise _local(_CLIENT_IDENTIFIER_NOT_VALID, _E_EMPTY_ID_PASS_ASSIGNED)
        if isinstance(assigned_client_id, int):
            assigned_client_id = "auto-%d" % assigned_client_id
        cid = assigned_client_id
        if v5:
            props["assigned_client_identifier"] = cid  # MQTT-3.2.2-16
    had = s._had
    if resume is not None and resume is not s:
        had = resume.resumable(s._now)
    present = had and not s._clean
    q = s.maximum_qos
    retain = True
    if v5:
        # Maximum QoS and Retain Available given here are announced, so they
        # are the ones enforced (3.2.2.3.4, 3.2.2.3.5): DISCONNECT 0x9B or
        # 0x9A for a PUBLISH beyond them. A Will beyond them refuses the
        # connection (MQTT-3.2.2-12, -13): raised, for reject() to answer.
        q = props.get("maximum_qos", q)
        retain = props.get("retain_available", 1)
        w = s._will
        if w is not None and w.qos > q:
            raise _local(_QOS_NOT_SUPPORTED, _E_WILL_QOS_OVER_MAX)
        if w is not None and w.retain and not retain:
            raise _local(_RETAIN_NOT_SUPPORTED, _E_NO_RETAIN)
        our_limits(s, props)
        if q < 2:
            props["maximum_qos"] = q
        if s._auth_method is not None:
            props["authentication_method"] = s._auth_method  # 4.12.0-5
        else:
            # No method in the CONNECT: none in the CONNACK (MQTT-4.12.0-6),
            # nor data, which needs one (3.2.2.3.18).
            props.pop("authentication_method", None)
            props.pop("authentication_data", None)
        if not s._resp_info:
            props.pop("response_information", None)  # MQTT-3.1.2-28
    data = encode(ConnAck(present, 0, props or None), s.version)
    big = len(data) > s.peer_max_packet_size
    if big and ("reason_string" in props or "user_property" in props):
        # Not beyond the client's Maximum Packet Size (MQTT-3.2.2-19, -20).
        props.pop("reason_string", None)
        props.pop("user_property", None)
        data = encode(ConnAck(present, 0, props or None), s.version)
    if len(data) > s.peer_max_packet_size:
        raise _local(_PACKET_TOO_LARGE, _E_OVER_PEER_MAX)  # MQTT-3.1.2-24
    if present and resume is not None and resume is not s:
        s._msgs, s._order, s._rx2 = resume._msgs, resume._order, resume._rx2
        s._next_id = resume._next_id
        resume._msgs, resume._order, resume._rx2 = {}, [], set()
        if s._acks is not None and resume._acks:
            # With manual_ack, answers the application still owes (or kept).
            s._acks, resume._acks = resume._acks, {}
    s.client_id = cid
    s.maximum_qos = q
    guard(s, "_rx_publish", None if retain else no_retain)
    s._will = None  # checked: a stored session need not hold its payload
    e = props.get("session_expiry_interval")
    if e is not None:
        s.session_expiry_interval = e
    ka = props.get("server_keep_alive")
    if ka is not None:
        s.keep_alive = ka  # MQTT-3.2.2-21
    s._put(data)
    s._hold = False
    s._known = True  # a connection was accepted on this session
    s._connected(present)
    return present


def reject(s, reason_code, properties=None):
    s._need(_SERVER, _C)
    if reason_code < 0x80:
        # A success code would tell the client it is connected, then close
        # (MQTT-3.2.2-7 pairs closing with a code of 0x80 or more).
        raise _local(_PROTOCOL_ERROR, (_E_REJECT_WITH_SUCCESS, reason_code))
    if s.version != _MQTT5:
        reason_code = V3_CODES.get(reason_code, 5)
        properties = None
    s._send(ConnAck(False, reason_code, properties))
    s._hold = False
    s.state = _CLOSED


def suback(s, packet_id, reason_codes, properties=None):
    answer(s, SubAck(packet_id, reason_codes, properties), _SUBSCRIBE)


def unsuback(s, packet_id, reason_codes=None, properties=None):
    if reason_codes is None and s.version == _MQTT5:
        reason_codes = [0] * s._pending.get(packet_id, (0, 0))[1]
    answer(s, UnsubAck(packet_id, reason_codes, properties), _UNSUBSCRIBE)


def _rx_server(s, p):
    """Handle a CONNECT, SUBSCRIBE, UNSUBSCRIBE or PINGREQ ``p`` (a server
    receives them, _RX says when); returns the event or None."""
    t = p.type
    if t == _CONNECT:
        return rx_connect(s, p)
    if t == _PINGREQ:
        s._send(PingResp())  # MQTT-3.12.4-1
        return None
    n = len(p.subscriptions) if t == _SUBSCRIBE else len(p.topic_filters)
    s._pending[p.packet_id] = (t, n)
    return p


def _rx_disconnect(s, p):
    """A client's DISCONNECT ``p``: it may change the Session Expiry Interval,
    but not from 0 (MQTT-3.14.2-2)."""
    e = _get(p, "session_expiry_interval")
    if e is not None:
        if e and not s._connect_expiry:
            raise _remote(_E_EXPIRY_WAS_0)
        s.session_expiry_interval = e
    s._hold = False


def rx_connect(s, p):
    v = s.version = p.protocol_level
    # Session state existed when the CONNECT came.
    s._had = s.resumable(s._now)
    s.state = _CONNECTING
    s._hold = True
    s.client_id = p.client_id
    s.keep_alive = p.keep_alive
    s._clean = p.clean_start
    if v == _MQTT5:
        e = _get(p, "session_expiry_interval", 0)
        m = s._auth_method = _get(p, "authentication_method")
        if m is None and _get(p, "authentication_data") is not None:
            raise _remote(_E_AUTH_DATA_NO_METHOD)  # 3.1.2.11.10: CONNACK 0x82
        peer_limits(s, p)
        s._quiet = _get(p, "request_problem_information") == 0
        s._resp_info = _get(p, "request_response_information")
    else:
        e = 0 if p.clean_start else NEVER
        s._auth_method = None
        if not p.client_id and not p.clean_start:
            raise _remote(_E_EMPTY_ID_NEEDS_CLEAN, _CLIENT_IDENTIFIER_NOT_VALID)
    s._connect_expiry = s.session_expiry_interval = e
    w = s._will = p.will
    if w is not None and w.qos > s.maximum_qos:
        # MQTT-3.2.2-12: refused, with CONNACK 0x9B in 5.0 (3.1.1 has no
        # return code for it: the connection just closes).
        raise _remote(_E_WILL_QOS_OVER_MAX, _QOS_NOT_SUPPORTED)
    return p


def no_retain(s, p):
    """A guard (see _session5.guard) for a connection accepted with Retain
    Available 0: a retained PUBLISH gets DISCONNECT 0x9A (3.2.2.3.5)."""
    if p.retain:
        raise _remote(_E_NO_RETAIN, _RETAIN_NOT_SUPPORTED)


def answer(s, p, t):
    s._need(_SERVER, _K)
    p.properties = quiet(s, p.properties)  # MQTT-3.1.2-29
    e = s._pending.get(p.packet_id)
    n = len(p.reason_codes)
    if e is None or e[0] != t or n != e[1] and (n or s.version == _MQTT5):
        raise _local(_PROTOCOL_ERROR, _E_NO_SUCH_REQUEST)
    s._send(p)
    del s._pending[p.packet_id]
