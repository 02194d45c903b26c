"""The control packets of a connection's life: CONNECT, SUBSCRIBE and
UNSUBSCRIBE encoded, CONNACK, SUBACK and UNSUBACK decoded, and DISCONNECT and
AUTH both ways.

A device exchanges these when it connects, subscribes or leaves, not per
message, so ``_codec`` loads this module for each use: on MicroPython it is
let go after it (``fieldline._use``), and a board holds only the codec of
PUBLISH and its acknowledgements between connects. The functions take and
return what the ones in ``_codec`` do.
"""

from ._codec import (
    _check_qos,
    _encode_binary,
    _encode_props,
    _encode_topic,
    _frame,
    _malformed,
    _packet_id,
    _pid,
    _read_props,
    encode_string,
)
from ._errors import LocalProtocolError, RemoteProtocolError
from ._packets import Auth, ConnAck, Disconnect, SubAck, UnsubAck

try:
    from micropython import const
except ImportError:  # CPython
    const = int

_CONNECT = const(1)
_CONNACK = const(2)
_SUBSCRIBE = const(8)
_SUBACK = const(9)
_UNSUBSCRIBE = const(10)
_UNSUBACK = const(11)
_DISCONNECT = const(14)
_AUTH = const(15)
_MQTT311 = const(4)
_MQTT5 = const(5)
_PROTOCOL_ERROR = const(0x82)
_UNSUPPORTED_PROTOCOL_VERSION = const(0x84)

# Error details: numbers of the texts in _names.DETAILS.
_E_BAD_LEVEL = const(13)
_E_PASSWORD_NEEDS_USER = const(14)
_E_BAD_KEEP_ALIVE = const(15)
_E_SUBSCRIBE_EMPTY = const(19)
_E_BAD_RETAIN_HANDLING = const(20)
_E_OPTIONS_NEED_V5 = const(21)
_E_NO_LOCAL_SHARED = const(47)
_E_UNSUBSCRIBE_EMPTY = const(23)
_E_AUTH_NEEDS_V5 = const(26)
_E_V3_DISCONNECT_EMPTY = const(27)
_E_CONNACK_RESERVED_FLAGS = const(35)
_E_BYTES_AFTER_CONNACK = const(36)
_E_BYTES_AFTER_PROPS = const(42)
_E_WRONG_LENGTH = const(43)
_E_NO_REASON_CODES = const(49)
_E_AUTH_IN_V3 = const(52)
_E_DISCONNECT_WITH_BODY = const(53)
_E_BAD_REASON_CODE = const(97)

# Reason codes each packet may carry (2.4), as bytes for a cheap `in`.
_SUBACK_CODES = b"\x00\x01\x02\x80\x83\x87\x8f\x91\x97\x9e\xa1\xa2"
_SUBACK_CODES_V3 = b"\x00\x01\x02\x80"
_UNSUBACK_CODES = b"\x00\x11\x80\x83\x87\x8f\x91"
_CONNACK_CODES = (
    b"\x00\x80\x81\x82\x83\x84\x85\x86\x87\x88\x89\x8a\x8c\x90\x95\x97\x99\x9a\x9b\x9c\x9d\x9f"
)
_DISCONNECT_CODES = (
    b"\x00\x04\x80\x81\x82\x83\x87\x89\x8b\x8d\x8e\x8f\x90\x93\x94\x95\x96\x97\x98\x99"
    b"\x9a\x9b\x9c\x9d\x9e\x9f\xa0\xa1\xa2"
)
_AUTH_CODES = b"\x00\x18\x19"


def _e_connect(p, v):
    v = p.protocol_level
    if v not in (_MQTT311, _MQTT5):
        raise LocalProtocolError(_UNSUPPORTED_PROTOCOL_VERSION, _E_BAD_LEVEL)
    flags = 2 if p.clean_start else 0
    w = p.will
    if w is not None:
        _check_qos(w.qos)
        flags |= 4 | (w.qos << 3) | (32 if w.retain else 0)
    if p.username is not None:
        flags |= 128
    if p.password is not None:
        if v == _MQTT311 and p.username is None:
            raise LocalProtocolError(_PROTOCOL_ERROR, _E_PASSWORD_NEEDS_USER)
        flags |= 64
    ka = p.keep_alive
    if not isinstance(ka, int) or ka < 0 or ka > 0xFFFF:
        raise LocalProtocolError(_PROTOCOL_ERROR, _E_BAD_KEEP_ALIVE)
    body = bytearray(b"\x00\x04MQTT")
    body += bytes((v, flags, ka >> 8, ka & 255))
    body += _encode_props(p.properties, _CONNECT, v)
    body += encode_string(p.client_id)
    if w is not None:
        body += _encode_props(w.properties, 0, v)
        body += _encode_topic(w.topic, False)
        body += _encode_binary(w.payload)
    if p.username is not None:
        body += encode_string(p.username)
    if p.password is not None:
        body += _encode_binary(p.password)
    return _frame(0x10, body)


def _e_subscribe(p, v):
    subs = p.subscriptions
    if not subs:
        raise LocalProtocolError(_PROTOCOL_ERROR, _E_SUBSCRIBE_EMPTY)  # MQTT-3.8.3-3
    body = bytearray(_packet_id(p.packet_id))
    body += _encode_props(p.properties, _SUBSCRIBE, v)
    # Imported here, not with this module: a device that never subscribes
    # (CONNECT and DISCONNECT load this module too) never loads _topic.
    from ._topic import validate_topic_filter

    for s in subs:
        f = s.topic_filter
        # MQTT-4.7.1-1, -2, 4.7.3-1: TOPIC_FILTER_INVALID, nothing sent.
        validate_topic_filter(f)
        _check_qos(s.qos)
        opts = s.qos
        if s.no_local:
            opts |= 4
        if s.retain_as_published:
            opts |= 8
        rh = s.retain_handling
        if rh not in (0, 1, 2):
            raise LocalProtocolError(_PROTOCOL_ERROR, _E_BAD_RETAIN_HANDLING)
        opts |= rh << 4
        if v != _MQTT5 and opts > 3:
            raise LocalProtocolError(_PROTOCOL_ERROR, _E_OPTIONS_NEED_V5)
        if opts & 4 and f.startswith("$share/"):
            raise LocalProtocolError(_PROTOCOL_ERROR, _E_NO_LOCAL_SHARED)  # MQTT-3.8.3-4
        body += encode_string(f)
        body.append(opts)
    return _frame(0x82, body)


def _e_unsubscribe(p, v):
    if not p.topic_filters:
        raise LocalProtocolError(_PROTOCOL_ERROR, _E_UNSUBSCRIBE_EMPTY)
    body = bytearray(_packet_id(p.packet_id))
    body += _encode_props(p.properties, _UNSUBSCRIBE, v)
    from ._topic import validate_topic_filter

    for f in p.topic_filters:
        validate_topic_filter(f)
        body += encode_string(f)
    return _frame(0xA2, body)


def _e_reason(p, v):
    # DISCONNECT and AUTH: reason code and properties, both optional on the wire.
    t = p.type
    rc = p.reason_code
    if rc not in (_AUTH_CODES if t == _AUTH else _DISCONNECT_CODES):
        raise LocalProtocolError(_PROTOCOL_ERROR, (_E_BAD_REASON_CODE, rc))
    if v != _MQTT5:
        if t == _AUTH:
            raise LocalProtocolError(_PROTOCOL_ERROR, _E_AUTH_NEEDS_V5)
        if rc or p.properties:
            raise LocalProtocolError(_PROTOCOL_ERROR, _E_V3_DISCONNECT_EMPTY)
        return b"\xe0\x00"
    if p.properties:
        return _frame(t << 4, bytes((rc,)) + _encode_props(p.properties, t, v))
    if rc:
        return bytes((t << 4, 1, rc))
    return bytes((t << 4, 0))


def _d_connack(t, flags, data, pos, v):
    f = data[pos]
    if f & 0xFE:
        raise _malformed(_E_CONNACK_RESERVED_FLAGS)  # MQTT-3.2.2-1
    rc = data[pos + 1]
    pos += 2
    props = None
    if v == _MQTT5:
        if rc not in _CONNACK_CODES:
            raise RemoteProtocolError(_PROTOCOL_ERROR, (_E_BAD_REASON_CODE, rc))
        props, pos = _read_props(data, pos, _CONNACK)
    elif rc > 5:
        raise RemoteProtocolError(_PROTOCOL_ERROR, (_E_BAD_REASON_CODE, rc))
    if pos != len(data):
        raise _malformed(_E_BYTES_AFTER_CONNACK)
    return ConnAck(f == 1, rc, props)


def _d_codes(data, pos, allowed):
    codes = list(data[pos:])
    if not codes:
        raise RemoteProtocolError(_PROTOCOL_ERROR, _E_NO_REASON_CODES)
    for c in codes:
        if c not in allowed:
            raise RemoteProtocolError(_PROTOCOL_ERROR, (_E_BAD_REASON_CODE, c))
    return codes


def _d_suback(t, flags, data, pos, v):
    pid = _pid(data, pos)
    pos += 2
    props = None
    if v == _MQTT5:
        props, pos = _read_props(data, pos, _SUBACK)
    codes = _d_codes(data, pos, _SUBACK_CODES if v == _MQTT5 else _SUBACK_CODES_V3)
    return SubAck(pid, codes, props)


def _d_unsuback(t, flags, data, pos, v):
    pid = _pid(data, pos)
    if v != _MQTT5:
        if len(data) - pos != 2:
            raise _malformed(_E_WRONG_LENGTH)
        return UnsubAck(pid)
    props, pos = _read_props(data, pos + 2, _UNSUBACK)
    return UnsubAck(pid, _d_codes(data, pos, _UNSUBACK_CODES), props)


def _d_reason(t, flags, data, pos, v):
    n = len(data) - pos
    if t == _AUTH and v != _MQTT5:
        raise RemoteProtocolError(_PROTOCOL_ERROR, _E_AUTH_IN_V3)
    rc = 0
    props = None
    if n:
        if v != _MQTT5:
            raise _malformed(_E_DISCONNECT_WITH_BODY)
        rc = data[pos]
        if rc not in (_AUTH_CODES if t == _AUTH else _DISCONNECT_CODES):
            raise RemoteProtocolError(_PROTOCOL_ERROR, (_E_BAD_REASON_CODE, rc))
        if n > 1:
            props, pos = _read_props(data, pos + 1, t)
            if pos != len(data):
                raise _malformed(_E_BYTES_AFTER_PROPS)
    return (Auth if t == _AUTH else Disconnect)(rc, props)


ENCODERS = {
    _CONNECT: _e_connect,
    _SUBSCRIBE: _e_subscribe,
    _UNSUBSCRIBE: _e_unsubscribe,
    _DISCONNECT: _e_reason,
    _AUTH: _e_reason,
}
DECODERS = {
    _CONNACK: _d_connack,
    _SUBACK: _d_suback,
    _UNSUBACK: _d_unsuback,
    _DISCONNECT: _d_reason,
    _AUTH: _d_reason,
}
