"""Stored messages off the usual path: dropping the session state, a queue
that drops its oldest message, and acks that do not match the message
stored (late, repeated after a reconnection, or wrong).

Imported by ``_session`` on first use: a client that connects with clean
start and gets the acks it expects never loads it. Each function takes the
Session ``s``.
"""

from ._errors import RemoteProtocolError
from ._packets import PubComp, PubRel

try:
    from micropython import const
except ImportError:  # CPython
    const = int

# Same values as in _session and _const (imported names would cost RAM).
_CLIENT = const(0)
_PUBLISH = const(3)
_PUBREC = const(5)
_PUBREL = const(6)
_MQTT5 = const(5)
_PROTOCOL_ERROR = const(0x82)
_PACKET_IDENTIFIER_NOT_FOUND = const(0x92)

# Error details: numbers of the texts in _names.DETAILS, which loads only
# when an error is printed (tests check each number against its name).
_E_PUBACK_FOR_QOS2 = const(73)
_E_ACK_QOS_MISMATCH = const(74)


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
