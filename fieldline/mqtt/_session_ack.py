"""Manual acknowledgement of received QoS 1/2 messages: ``Session(manual_ack=True)``.

Imported by ``_session`` on first use, so a session that acknowledges on its
own (the default) never loads it. Each function takes the Session ``s``; the
public docstring is on ``Session.ack``.

``s._acks`` (None when acknowledging automatically) maps the packet id of
each received QoS 1/2 message that was delivered but not yet answered to its
QoS, 1 or 2; or, once the application answered while no connection was up, to
that answer (PubAck or PubRec), kept until the peer sends the message again.
It is session state, like ``_rx2``: it survives ``connection_lost()``, moves
with ``accept(resume=...)`` and clean start drops it. A QoS 2 id moves into
``_rx2`` when answered with success, and leaves it on PUBREL as usual.
"""

from ._codec import encode
from ._errors import LocalProtocolError, RemoteProtocolError
from ._packets import PubAck, PubRec

try:
    from micropython import const
except ImportError:  # CPython
    const = int

# Same values as in _session and _const (imported names would cost RAM).
_CONNECTED = const(2)
_CLOSED = const(3)
_MQTT5 = const(5)
_PROTOCOL_ERROR = const(0x82)
_RECEIVE_MAXIMUM_EXCEEDED = const(0x93)

# Error details: numbers of the texts in _names.DETAILS, which loads only
# when an error is printed (tests check each number against its name).
_E_OVER_RECEIVE_MAX = const(72)
_E_NO_SUCH_REQUEST = const(83)


def _rx_publish(s, p):
    """A received QoS 1/2 PUBLISH ``p`` (topic alias and QoS already checked):
    returns it as the event, unanswered, or None when it was delivered before."""
    pid = p.packet_id
    acks = s._acks
    a = acks.get(pid)
    if a is not None:
        # Delivered already and not answered on the wire: the peer sends it
        # again (after a reconnection, or a QoS 1 id it may not reuse before
        # our PUBACK). Not delivered twice (MQTT-4.3.3-9 for QoS 2); the
        # application's pending ack() answers it, or the answer it gave while
        # no connection was up goes out now.
        if type(a) is not int:
            del acks[pid]
            s._send(a)
        return None
    rx2 = s._rx2
    if pid in rx2 and p.qos == 2:
        # Acknowledged, not yet released: acknowledge again, deliver no
        # duplicate (MQTT-4.3.3-9), whatever the DUP flag says.
        s._send(PubRec(pid))
        return None
    # Receive Maximum counts every QoS 1/2 message the peer has not had its
    # PUBACK, PUBCOMP or failed PUBREC for (3.3.4, MQTT-3.3.4-9).
    if s.version == _MQTT5 and len(acks) + len(rx2) >= s.receive_maximum:
        raise RemoteProtocolError(_RECEIVE_MAXIMUM_EXCEEDED, _E_OVER_RECEIVE_MAX)
    acks[pid] = p.qos
    return p


def ack(s, pid, rc, props):
    """Session.ack(); see there."""
    acks = s._acks
    q = acks.get(pid) if acks is not None else None
    if type(q) is not int:
        raise LocalProtocolError(_PROTOCOL_ERROR, _E_NO_SUCH_REQUEST)
    v = s.version
    if v != _MQTT5 and not rc and not props and s.state == _CONNECTED:
        # The common case, per message: a plain 3.1.1 PUBACK or PUBREC.
        del acks[pid]
        s._put(bytes((0x40 if q == 1 else 0x50, 2, pid >> 8, pid & 0xFF)))
        if q == 2:
            s._rx2.add(pid)  # MQTT-4.3.3-8
        return
    if v != _MQTT5:
        if rc:
            encode(PubAck(pid, rc), _MQTT5)  # a valid PUBACK/PUBREC reason code?
        if rc >= 0x80:
            # 3.1.1 acks carry no reason: refuse by closing (MQTT-3.3.5-2).
            del acks[pid]
            if s.state == _CONNECTED:
                s.state = _CLOSED
            return
        rc = 0  # a success code (0x10) is a plain ack in 3.1.1
    if props and s.role:  # a server
        from ._session5 import quiet

        props = quiet(s, props)  # MQTT-3.1.2-29
    a = (PubAck if q == 1 else PubRec)(pid, rc, props)
    if s.state == _CONNECTED:
        s._send(a)  # raises (reason code, properties) before anything changed
        del acks[pid]
    else:
        encode(a, v)  # the same checks
        if q == 1 or rc >= 0x80:
            acks[pid] = a  # sent when the peer sends the message again
        else:
            del acks[pid]  # the resend finds the id in _rx2 and gets PUBREC
    if q == 2 and rc < 0x80:
        s._rx2.add(pid)  # MQTT-4.3.3-8; a failed PUBREC ends the exchange (4.3.3)
