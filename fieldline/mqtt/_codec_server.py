"""The parts of the codec only a server needs: decoding CONNECT, SUBSCRIBE
and UNSUBSCRIBE, encoding CONNACK, SUBACK and UNSUBACK.

``_codec`` loads this on first use, so a client device never does. The
functions take and return what the ones in ``_codec`` do.
"""

from ._codec import (
    _encode_props,
    _frame,
    _malformed,
    _packet_id,
    _pid,
    _read_binary,
    _read_props,
    read_string,
)
from ._codec_control import _CONNACK_CODES, _SUBACK_CODES, _SUBACK_CODES_V3, _UNSUBACK_CODES
from ._errors import LocalProtocolError, RemoteProtocolError
from ._packets import Connect, Subscribe, Subscription, Unsubscribe, Will

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
_MQTT311 = const(4)
_MQTT5 = const(5)
_MALFORMED_PACKET = const(0x81)
_PROTOCOL_ERROR = const(0x82)
_UNSUPPORTED_PROTOCOL_VERSION = const(0x84)
_TOPIC_NAME_INVALID = const(0x90)

# Error details: numbers of the texts in _names.DETAILS.
_E_SUBACK_EMPTY = const(22)
_E_UNSUBACK_EMPTY = const(24)
_E_V3_UNSUBACK_NO_REASON = const(25)
_E_CONNECT_RESERVED_FLAG = const(29)
_E_WILL_QOS_3 = const(30)
_E_BAD_WILL_TOPIC = const(31)
_E_WILL_FLAGS_WITHOUT_WILL = const(32)
_E_PASSWORD_WITHOUT_USER = const(33)
_E_BYTES_AFTER_CONNECT = const(34)
_E_RESERVED_OPTION_BITS = const(44)
_E_SUBSCRIPTION_QOS_3 = const(45)
_E_RETAIN_HANDLING_3 = const(46)
_E_NO_LOCAL_SHARED = const(47)
_E_SUBSCRIBE_NO_FILTER = const(48)
_E_UNSUBSCRIBE_NO_FILTER = const(50)
_E_BAD_REASON_CODE = const(97)
_E_BAD_PROTOCOL = const(99)


def _e_connack(p, v):
    rc = p.reason_code
    # 3.1.1 return codes are 0-5 (3.2.2.3); 5.0 reason codes as listed in 3.2.2.2.
    if (
        not isinstance(rc, int)
        or rc < 0
        or rc > 255
        or (rc not in _CONNACK_CODES if v == _MQTT5 else rc > 5)
    ):
        raise LocalProtocolError(_PROTOCOL_ERROR, (_E_BAD_REASON_CODE, rc))
    return _frame(
        0x20, bytes((1 if p.session_present else 0, rc)) + _encode_props(p.properties, _CONNACK, v)
    )


def _e_suback(p, v):
    codes = bytes(p.reason_codes)
    allowed = _SUBACK_CODES if v == _MQTT5 else _SUBACK_CODES_V3
    for c in codes:
        if c not in allowed:
            raise LocalProtocolError(_PROTOCOL_ERROR, (_E_BAD_REASON_CODE, c))
    if not codes:
        raise LocalProtocolError(_PROTOCOL_ERROR, _E_SUBACK_EMPTY)
    return _frame(0x90, _packet_id(p.packet_id) + _encode_props(p.properties, _SUBACK, v) + codes)


def _e_unsuback(p, v):
    body = _packet_id(p.packet_id)
    if v == _MQTT5:
        codes = bytes(p.reason_codes)
        for c in codes:
            if c not in _UNSUBACK_CODES:
                raise LocalProtocolError(_PROTOCOL_ERROR, (_E_BAD_REASON_CODE, c))
        if not codes:
            raise LocalProtocolError(_PROTOCOL_ERROR, _E_UNSUBACK_EMPTY)
        body += _encode_props(p.properties, _UNSUBACK, v) + codes
    elif p.reason_codes or p.properties:
        raise LocalProtocolError(_PROTOCOL_ERROR, _E_V3_UNSUBACK_NO_REASON)
    return _frame(0xB0, body)


def _d_connect(t, flags, data, pos, v):
    end = len(data)
    name, pos = read_string(data, pos, end)
    level = data[pos]
    if name != "MQTT" or level not in (_MQTT311, _MQTT5):
        # MQTT-3.1.2-2: answer CONNACK 0x84 (3.1.1: return code 1) and close.
        raise RemoteProtocolError(_UNSUPPORTED_PROTOCOL_VERSION, (_E_BAD_PROTOCOL, name, level))
    cf = data[pos + 1]
    if cf & 1:
        raise _malformed(_E_CONNECT_RESERVED_FLAG)  # MQTT-3.1.2-3
    ka = (data[pos + 2] << 8) | data[pos + 3]
    pos += 4
    props = None
    if level == _MQTT5:
        props, pos = _read_props(data, pos, _CONNECT)
    client_id, pos = read_string(data, pos, end)
    will = None
    if cf & 4:
        wqos = (cf >> 3) & 3
        if wqos == 3:
            raise _malformed(_E_WILL_QOS_3)  # MQTT-3.1.2-14
        wprops = None
        if level == _MQTT5:
            wprops, pos = _read_props(data, pos, 0)
        wtopic, pos = read_string(data, pos, end)
        if not wtopic or "+" in wtopic or "#" in wtopic:
            raise RemoteProtocolError(_TOPIC_NAME_INVALID, _E_BAD_WILL_TOPIC)
        wpayload, pos = _read_binary(data, pos, end)
        will = Will(wtopic, wpayload, wqos, bool(cf & 32), wprops)
    elif cf & 0x38:
        raise _malformed(_E_WILL_FLAGS_WITHOUT_WILL)  # MQTT-3.1.2-11, -13, -15
    username = password = None
    if cf & 128:
        username, pos = read_string(data, pos, end)
    elif level == _MQTT311 and cf & 64:
        raise _malformed(_E_PASSWORD_WITHOUT_USER)  # MQTT-3.1.2-22
    if cf & 64:
        password, pos = _read_binary(data, pos, end)
    if pos != end:
        raise _malformed(_E_BYTES_AFTER_CONNECT)
    return Connect(client_id, bool(cf & 2), ka, username, password, will, level, props)


def _d_subscribe(t, flags, data, pos, v):
    end = len(data)
    pid = _pid(data, pos)
    pos += 2
    props = None
    if v == _MQTT5:
        props, pos = _read_props(data, pos, _SUBSCRIBE)
    subs = []
    while pos < end:
        f, pos = read_string(data, pos, end)
        o = data[pos]
        pos += 1
        if o & (0xC0 if v == _MQTT5 else 0xFC):
            raise _malformed(_E_RESERVED_OPTION_BITS)  # MQTT-3.8.3-5
        if o & 3 == 3:
            # 3.1.1: malformed (MQTT-3-8.3-4); 5.0: protocol error (3.8.3.1).
            raise RemoteProtocolError(
                _PROTOCOL_ERROR if v == _MQTT5 else _MALFORMED_PACKET, _E_SUBSCRIPTION_QOS_3
            )
        if o >> 4 == 3:
            raise RemoteProtocolError(_PROTOCOL_ERROR, _E_RETAIN_HANDLING_3)
        if o & 4 and f.startswith("$share/"):
            raise RemoteProtocolError(_PROTOCOL_ERROR, _E_NO_LOCAL_SHARED)
        subs.append(Subscription(f, o & 3, bool(o & 4), bool(o & 8), o >> 4))
    if not subs:
        raise RemoteProtocolError(_PROTOCOL_ERROR, _E_SUBSCRIBE_NO_FILTER)  # MQTT-3.8.3-3
    return Subscribe(pid, subs, props)


def _d_unsubscribe(t, flags, data, pos, v):
    end = len(data)
    pid = _pid(data, pos)
    pos += 2
    props = None
    if v == _MQTT5:
        props, pos = _read_props(data, pos, _UNSUBSCRIBE)
    filters = []
    while pos < end:
        f, pos = read_string(data, pos, end)
        filters.append(f)
    if not filters:
        # MQTT-3.10.3-2
        raise RemoteProtocolError(_PROTOCOL_ERROR, _E_UNSUBSCRIBE_NO_FILTER)
    return Unsubscribe(pid, filters, props)


ENCODERS = {_CONNACK: _e_connack, _SUBACK: _e_suback, _UNSUBACK: _e_unsuback}
DECODERS = {_CONNECT: _d_connect, _SUBSCRIBE: _d_subscribe, _UNSUBSCRIBE: _d_unsubscribe}
