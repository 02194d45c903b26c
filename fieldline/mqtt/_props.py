"""MQTT 5.0 properties (2.2.2): the table of identifiers, wire types and the
packets each may appear in, with their encoder and decoder.

Loaded only when a 5.0 packet carries properties, so a 3.1.1 device never
pays for it. A property dict is keyed by the snake_case spec name; the two
properties that may repeat come as lists: ``user_property`` (list of
``(name, value)`` string pairs, order kept; a dict is taken too) and ``subscription_identifier``
in PUBLISH (list of ints; a single int in SUBSCRIBE).
"""

from ._codec import encode_string, encode_varint, read_string, read_varint
from ._errors import LocalProtocolError, RemoteProtocolError

try:
    from micropython import const
except ImportError:  # CPython
    const = int

_PUBLISH = const(3)  # the packet type; _IN_PUBLISH below is its mask bit
_MALFORMED_PACKET = const(0x81)
_PROTOCOL_ERROR = const(0x82)
_TOPIC_ALIAS_INVALID = const(0x94)

# Wire types.
_BYTE = const(1)
_INT2 = const(2)
_INT4 = const(4)
_VARINT = const(7)
_STRING = const(8)
_BINARY = const(9)
_PAIR = const(10)

# Bit masks of where a property may appear: bit n is packet type n (1..15);
# bit 0 stands for the Will Properties of CONNECT.
_IN_WILL = const(1)
_IN_CONNECT = const(1 << 1)
_IN_CONNACK = const(1 << 2)
_IN_PUBLISH = const(1 << 3)
_IN_SUBSCRIBE = const(1 << 8)
_IN_UNSUBSCRIBE = const(1 << 10)
_IN_DISCONNECT = const(1 << 14)
_IN_AUTH = const(1 << 15)
_IN_ALL = const(0xFFFF)

# Error details: numbers of the texts in _names.DETAILS, which loads only
# when an error is printed (tests check each number against its name).
_E_PROPS_PAST_END = const(84)
_E_ONE_SUBSCRIPTION_ID = const(85)
_E_PROP_NOT_ALLOWED = const(107)
_E_PROP_VALUE = const(108)
_E_PROP_ZERO = const(109)
_E_PROP_TWICE = const(110)
_E_UNKNOWN_PROP = const(111)
_E_PROP_PLACE = const(112)
_E_PROP_TOO_LONG = const(113)
_E_PROP_RANGE = const(114)

# The property table (2.2.2.2), a row of four per property: identifier, name,
# wire type, where it may appear. One flat tuple rather than a dict of tuples: on
# MicroPython each small tuple is a heap object of its own. Every _BYTE property
# is a flag that may only be 0 or 1.
_TABLE = (
    0x01, "payload_format_indicator", _BYTE, _IN_PUBLISH | _IN_WILL,
    0x02, "message_expiry_interval", _INT4, _IN_PUBLISH | _IN_WILL,
    0x03, "content_type", _STRING, _IN_PUBLISH | _IN_WILL,
    0x08, "response_topic", _STRING, _IN_PUBLISH | _IN_WILL,
    0x09, "correlation_data", _BINARY, _IN_PUBLISH | _IN_WILL,
    0x0B, "subscription_identifier", _VARINT, _IN_PUBLISH | _IN_SUBSCRIBE,
    0x11, "session_expiry_interval", _INT4, _IN_CONNECT | _IN_CONNACK | _IN_DISCONNECT,
    0x12, "assigned_client_identifier", _STRING, _IN_CONNACK,
    0x13, "server_keep_alive", _INT2, _IN_CONNACK,
    0x15, "authentication_method", _STRING, _IN_CONNECT | _IN_CONNACK | _IN_AUTH,
    0x16, "authentication_data", _BINARY, _IN_CONNECT | _IN_CONNACK | _IN_AUTH,
    0x17, "request_problem_information", _BYTE, _IN_CONNECT,
    0x18, "will_delay_interval", _INT4, _IN_WILL,
    0x19, "request_response_information", _BYTE, _IN_CONNECT,
    0x1A, "response_information", _STRING, _IN_CONNACK,
    0x1C, "server_reference", _STRING, _IN_CONNACK | _IN_DISCONNECT,
    # Not in UNSUBSCRIBE: its only property is User Property (3.10.2.1).
    0x1F, "reason_string", _STRING,
    _IN_ALL & ~(_IN_CONNECT | _IN_PUBLISH | _IN_SUBSCRIBE | _IN_UNSUBSCRIBE | _IN_WILL),
    0x21, "receive_maximum", _INT2, _IN_CONNECT | _IN_CONNACK,
    0x22, "topic_alias_maximum", _INT2, _IN_CONNECT | _IN_CONNACK,
    0x23, "topic_alias", _INT2, _IN_PUBLISH,
    0x24, "maximum_qos", _BYTE, _IN_CONNACK,
    0x25, "retain_available", _BYTE, _IN_CONNACK,
    0x26, "user_property", _PAIR, _IN_ALL,
    0x27, "maximum_packet_size", _INT4, _IN_CONNECT | _IN_CONNACK,
    0x28, "wildcard_subscription_available", _BYTE, _IN_CONNACK,
    0x29, "subscription_identifier_available", _BYTE, _IN_CONNACK,
    0x2A, "shared_subscription_available", _BYTE, _IN_CONNACK,
)  # type: tuple  # fmt: skip

# Properties whose value 0 is a Protocol Error (3.1.2.11.3, 3.1.2.11.4, 3.3.2.3.8, 3.3.4).
_NONZERO = b"\x0b\x21\x23\x27"

# Where each identifier's row starts in _TABLE, plus one (0: no such property),
# and each name's identifier.
_ROW = bytearray(0x2B)
_BY_NAME = {}
for _i in range(0, len(_TABLE), 4):
    _ROW[_TABLE[_i]] = _i + 1
    _BY_NAME[_TABLE[_i + 1]] = _TABLE[_i]
del _i

_RANGES = {_BYTE: 0xFF, _INT2: 0xFFFF, _INT4: 0xFFFFFFFF, _VARINT: 268435455}


def decode_properties(data, pos, ptype):
    """Decode a property block starting at ``pos`` of ``data`` for packet type
    ``ptype`` (0 = Will Properties). Returns ``(dict or None, next_pos)``;
    raises RemoteProtocolError (0x81 for unknown, misplaced or truncated
    properties, 0x82 for duplicates and forbidden values)."""
    n, pos = read_varint(data, pos)
    end = pos + n
    if end > len(data):
        raise RemoteProtocolError(_MALFORMED_PACKET, _E_PROPS_PAST_END)
    if not n:
        return None, pos
    props = {}  # type: dict
    bit = 1 << ptype
    while pos < end:
        pid, pos = read_varint(data, pos)
        row = _ROW[pid] if pid < 0x2B else 0
        if not row or not _TABLE[row + 2] & bit:
            # MQTT 2.2.2.2: an identifier not valid for the packet type is malformed.
            raise RemoteProtocolError(_MALFORMED_PACKET, (_E_PROP_NOT_ALLOWED, pid))
        name = _TABLE[row]
        wire = _TABLE[row + 1]
        if wire == _BYTE:
            value = data[pos]
            pos += 1
        elif wire == _INT2:
            if pos + 2 > end:
                raise IndexError
            value = (data[pos] << 8) | data[pos + 1]
            pos += 2
        elif wire == _INT4:
            if pos + 4 > end:
                raise IndexError
            value = (data[pos] << 24) | (data[pos + 1] << 16) | (data[pos + 2] << 8) | data[pos + 3]
            pos += 4
        elif wire == _VARINT:
            value, pos = read_varint(data, pos)
        elif wire == _STRING:
            value, pos = read_string(data, pos, end)
        elif wire == _BINARY:
            ln = (data[pos] << 8) | data[pos + 1]
            pos += 2
            if pos + ln > end:
                raise IndexError
            value = data[pos : pos + ln]
            pos += ln
        else:
            k, pos = read_string(data, pos, end)
            v, pos = read_string(data, pos, end)
            value = (k, v)
        if pos > end:
            raise IndexError
        if wire == _BYTE and value > 1:
            raise RemoteProtocolError(_PROTOCOL_ERROR, (_E_PROP_VALUE, name, value))
        if not value and pid in _NONZERO:
            # Topic Alias 0 (MQTT-3.3.2-8) as Mosquitto and EMQX answer it.
            code = _TOPIC_ALIAS_INVALID if pid == 0x23 else _PROTOCOL_ERROR
            raise RemoteProtocolError(code, (_E_PROP_ZERO, name))
        if wire == _PAIR or (pid == 0x0B and ptype == _PUBLISH):
            lst = props.get(name)
            if lst is None:
                props[name] = [value]
            else:
                lst.append(value)
        elif name in props:
            raise RemoteProtocolError(_PROTOCOL_ERROR, (_E_PROP_TWICE, name))
        else:
            props[name] = value
    return props, pos


def encode_properties(props, ptype):
    """Encode a property dict for packet type ``ptype`` (0 = Will), length
    prefix included. Raises LocalProtocolError for unknown or misplaced names
    and out-of-range values."""
    out = bytearray()
    bit = 1 << ptype
    for name in props:
        value = props[name]
        pid = _BY_NAME.get(name)
        if pid is None:
            raise LocalProtocolError(_PROTOCOL_ERROR, (_E_UNKNOWN_PROP, name))
        row = _ROW[pid]
        wire = _TABLE[row + 1]
        if not _TABLE[row + 2] & bit:
            raise LocalProtocolError(_PROTOCOL_ERROR, (_E_PROP_PLACE, name))
        if wire == _PAIR and isinstance(value, dict):
            value = list(value.items())  # {name: value}: one pair each
        many = wire == _PAIR or pid == 0x0B
        values = (
            value
            if many
            and isinstance(value, (list, tuple))
            and (wire != _PAIR or not value or isinstance(value[0], (list, tuple)))
            else (value,)
        )
        if pid == 0x0B and ptype != _PUBLISH and len(values) != 1:
            raise LocalProtocolError(_PROTOCOL_ERROR, _E_ONE_SUBSCRIPTION_ID)
        for v in values:
            out += encode_varint(pid)
            if wire == _STRING:
                out += encode_string(v)
            elif wire == _BINARY:
                if isinstance(v, str):
                    v = v.encode()
                if len(v) > 0xFFFF:
                    raise LocalProtocolError(_PROTOCOL_ERROR, (_E_PROP_TOO_LONG, name))
                out += bytes((len(v) >> 8, len(v) & 255))
                out += v
            elif wire == _PAIR:
                if not isinstance(v, (list, tuple)) or len(v) != 2:
                    raise LocalProtocolError(_PROTOCOL_ERROR, (_E_PROP_VALUE, name, v))
                out += encode_string(v[0])
                out += encode_string(v[1])
            else:
                if not isinstance(v, int) or v < 0 or v > _RANGES[wire]:
                    raise LocalProtocolError(_PROTOCOL_ERROR, (_E_PROP_RANGE, name, v))
                if (wire == _BYTE and v > 1) or (not v and pid in _NONZERO):
                    raise LocalProtocolError(_PROTOCOL_ERROR, (_E_PROP_VALUE, name, v))
                if wire == _VARINT:
                    out += encode_varint(v)
                else:
                    out += v.to_bytes(wire, "big")
    return encode_varint(len(out)) + out
