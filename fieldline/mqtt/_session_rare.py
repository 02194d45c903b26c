"""The session's rare paths: a peer that breaks the protocol or goes
quiet, and stored messages off the usual path (dropping the session state,
a queue that drops its oldest message, a QoS 2 message restored as released
after a restart, acks that do not match the message stored: late, repeated
after a reconnection, or wrong).

Imported by ``_session`` on first use: a client that connects with clean
start, gets the acks it expects and meets no misbehaving peer never loads
it. One module rather than two, as these paths once were: on a board each
``.mpy`` file carries its own header and table of names, and together they
are 0.2 KB smaller. Each function takes the Session ``s``.
"""

from ._codec import Parser, encode
from ._errors import LocalProtocolError, MQTTError, RemoteProtocolError
from ._packets import ConnAck, Disconnect, PubComp, PubRel

try:
    from micropython import const
except ImportError:  # CPython
    const = int

# Same values as in _session and _const (imported names would cost RAM).
_CLIENT = const(0)
_SERVER = const(1)
_IDLE = const(0)
_CONNECTING = const(1)
_CLOSED = const(3)
_ERROR = const(4)
_PUBLISH = const(3)
_PUBREC = const(5)
_PUBREL = const(6)
_MQTT311 = const(4)
_MQTT5 = const(5)
_PROTOCOL_ERROR = const(0x82)
_UNSUPPORTED_PROTOCOL_VERSION = const(0x84)
_KEEP_ALIVE_TIMEOUT = const(0x8D)
_PACKET_IDENTIFIER_NOT_FOUND = const(0x92)
_PACKET_TOO_LARGE = const(0x95)

# Error details: numbers of the texts in _names.DETAILS, which loads only
# when an error is printed (tests check each number against its name).
_E_KEEP_ALIVE_EXPIRED = const(62)
_E_PUBACK_FOR_QOS2 = const(73)
_E_ACK_QOS_MISMATCH = const(74)
_E_HELD_OVER_MAX = const(118)
_E_NOT_RELEASABLE = const(121)

# 5.0 CONNACK reason codes that have a 3.1.1 return code (3.2.2.3).
V3_CODES = {0x84: 1, 0x85: 2, 0x88: 3, 0x86: 4, 0x87: 5}


def fail(s, e):
    """Move Session ``s`` to ERROR and queue the answer that carries the
    reason code of the RemoteProtocolError ``e``, if this version and state
    have one."""
    code = e.reason_code
    st = s.state
    s.state = _ERROR
    s._hold = False
    v = s.version
    try:
        if s.role == _SERVER and st == _IDLE and code == _UNSUPPORTED_PROTOCOL_VERSION:
            # MQTT-3.1.2-2. The CONNECT's level is the detail's last value
            # (_codec_server._d_connect): a 5.0 one with a wrong protocol
            # name gets a 5.0 CONNACK, any other 3.1.1's return code 1.
            m = e.message
            if type(m) is tuple and m[-1] == _MQTT5:
                s._put(encode(ConnAck(False, code), _MQTT5))
            else:
                s._put(encode(ConnAck(False, 1), _MQTT311))
        elif s.role == _SERVER and st == _CONNECTING:
            if v != _MQTT5:
                code = V3_CODES.get(code)
            if code is not None:
                s._send(ConnAck(False, code))  # MQTT-3.2.2-6
        elif v == _MQTT5 and st and st < _CLOSED:
            s._send(Disconnect(code))
    except MQTTError:
        pass


def timeout(s):
    """Keep Alive ran out (Session.tick()): fail with KEEP_ALIVE_TIMEOUT and
    raise RemoteProtocolError."""
    e = RemoteProtocolError(_KEEP_ALIVE_TIMEOUT, _E_KEEP_ALIVE_EXPIRED)
    if s.role:
        fail(s, e)
    else:
        # A client just closes (3.1.2.10): 0x8D is a server's DISCONNECT
        # reason code (MQTT-3.14.2-1).
        s.state = _ERROR
    raise e


def overflow(s):
    """Session.next_event() reads nothing while a server awaits accept() or
    after CLOSED, so the parser's check of each packet's size does not run,
    and a peer that kept sending would fill memory: more than
    max_packet_size bytes waiting fails with PACKET_TOO_LARGE (CONNACK 0x95
    in 5.0 before accepting). The bytes are dropped. Raises
    RemoteProtocolError."""
    e = RemoteProtocolError(_PACKET_TOO_LARGE, (_E_HELD_OVER_MAX, s._parser.buffered()))
    fail(s, e)
    s._parser = Parser(s.version, s.max_packet_size)
    raise e


# -- stored messages ---------------------------------------------------------


def _discard(s):
    """Drop the session state (with any answer manual_ack still owes or
    kept, see _session_ack). A client does not drop its application
    messages, though: those not yet acknowledged go out again as new
    messages (DUP 0) in the new session, so a broker that lost the session
    costs at most a duplicate, never a loss. That holds for a QoS 2 message
    whose PUBREC came but whose PUBCOMP did not, too: a broker may deliver
    it only on our PUBREL (Mosquitto does), which the lost session took
    with it."""
    keep = []
    client = s.role == _CLIENT
    msgs = s._msgs
    for pid in s._order:
        m = msgs[pid]
        if client and m.type == _PUBREL:
            m = msgs[pid] = getattr(m, "message", None) or m  # the PUBLISH again
        if client and m.type == _PUBLISH:
            m.dup = False
            keep.append(pid)
        else:
            del msgs[pid]
            if client:
                s._events.append(PubComp(pid))
    s._order = keep
    s._rx2 = set()
    if s._acks:
        s._acks = {}


def drop_oldest(s):
    """Session.drop_oldest(); see there."""
    order = s._order
    msgs = s._msgs
    i = s._nsent
    while i < len(order):
        pid = order[i]
        m = msgs[pid]
        if m.type == _PUBLISH and not m.dup:
            del order[i]
            del msgs[pid]
            return pid
        i += 1
    return None


def release(s, pid):
    """Session.release(); see there."""
    m = s._msgs.get(pid)
    if m is None or m.type != _PUBLISH or m.qos != 2 or s._order.index(pid) < s._nsent:
        raise LocalProtocolError(_PROTOCOL_ERROR, (_E_NOT_RELEASABLE, pid))
    rel = s._msgs[pid] = PubRel(pid)
    if s.role == _CLIENT:
        rel.message = m  # type: ignore[attr-defined]  # for _discard, as in Session._rx_ack


def _rx_ack(s, p, m):
    """Handle a PUBACK, PUBREC or PUBCOMP ``p`` that is not the answer
    expected for the stored message ``m`` (None: no message has its id);
    returns None or raises RemoteProtocolError."""
    t = p.type
    pid = p.packet_id
    if m is None:
        if t == _PUBREC:
            # Unknown id: release it anyway so the peer can free its state.
            s._send(PubRel(pid, _PACKET_IDENTIFIER_NOT_FOUND if s.version == _MQTT5 else 0))
        return None  # a late PUBACK/PUBCOMP: nothing to complete
    if m.type == _PUBREL:
        if t == _PUBREC:
            s._send(m)  # our PUBREL was lost: send it again
            return None
        raise RemoteProtocolError(_PROTOCOL_ERROR, _E_PUBACK_FOR_QOS2)
    raise RemoteProtocolError(_PROTOCOL_ERROR, _E_ACK_QOS_MISMATCH)
