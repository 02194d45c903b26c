"""Encode and decode MQTT 3.1.1 and 5.0 control packets.

``encode(packet, version)`` checks what the user built (the send path is
where a LocalProtocolError belongs) and returns bytes. ``Parser`` takes bytes
in any chunking and returns whole packets; a malformed packet raises
RemoteProtocolError with the reason code the spec prescribes. Decoders read
one packet's bytes by offset; the only copies made are the strings and the
payload handed to the application.

Written by hand rather than taken from a library: it must run on MicroPython
and stay small enough for an ESP32's RAM.
"""

import sys

from ._errors import LocalProtocolError, RemoteProtocolError
from ._packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)

try:
    from micropython import const
except ImportError:  # CPython
    const = int

# Private copies of the numbers in _const: folded into the bytecode, no RAM.
_CONNECT = const(1)
_CONNACK = const(2)
_PUBLISH = const(3)
_PUBACK = const(4)
_PUBREC = const(5)
_PUBREL = const(6)
_SUBSCRIBE = const(8)
_SUBACK = const(9)
_UNSUBSCRIBE = const(10)
_UNSUBACK = const(11)
_PINGREQ = const(12)
_AUTH = const(15)
_MQTT311 = const(4)
_MQTT5 = const(5)
_MALFORMED_PACKET = const(0x81)
_PROTOCOL_ERROR = const(0x82)
_UNSUPPORTED_PROTOCOL_VERSION = const(0x84)
_TOPIC_NAME_INVALID = const(0x90)
_PACKET_TOO_LARGE = const(0x95)
_MAX_REMAINING_LENGTH = const(268435455)
_MAX_PACKET_SIZE = const(268435460)

# CPython's UTF-8 codec rejects encoded surrogates; MicroPython's does not.
_CHECK_SURROGATES = sys.implementation.name == "micropython"

# Reason codes each packet may carry (2.4), as bytes for a cheap `in`.
_PUBACK_CODES = b"\x00\x10\x80\x83\x87\x90\x91\x97\x99"
_PUBREL_CODES = b"\x00\x92"
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

_props = None


def _p():
    # The 5.0 property code loads on first use, so 3.1.1 devices never pay for it.
    global _props
    if _props is None:
        from . import _props as module

        _props = module
    return _props


def _malformed(msg):
    return RemoteProtocolError(_MALFORMED_PACKET, msg)


# -- primitives (2.2.1, 1.5) ---------------------------------------------------


def read_varint(data, pos):
    """Decode a Variable Byte Integer at ``pos``; returns ``(value, next_pos)``."""
    value = 0
    shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 127) << shift
        if b < 128:
            if shift and not b:
                raise _malformed("variable byte integer not minimally encoded")  # MQTT-1.5.5-1
            return value, pos
        shift += 7
        if shift > 21:
            raise _malformed("variable byte integer longer than 4 bytes")


def encode_varint(n):
    """Encode ``n`` (0..268,435,455) as a Variable Byte Integer."""
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while n > 127:
        out.append((n & 127) | 128)
        n >>= 7
    out.append(n)
    return bytes(out)


def _surrogate_at(raw):
    # An encoded surrogate (U+D800..U+DFFF) is 0xED followed by 0xA0..0xBF.
    i = raw.find(b"\xed")
    while i >= 0:
        if i + 1 < len(raw) and raw[i + 1] >= 0xA0:
            return True
        i = raw.find(b"\xed", i + 1)
    return False


def read_string(data, pos, end):
    """Decode a UTF-8 Encoded String at ``pos`` of ``data`` (bytes), not
    reading past ``end``; returns ``(str, next_pos)``. Invalid UTF-8,
    surrogates and U+0000 are malformed (MQTT-1.5.4-1, -2)."""
    e = pos + 2 + ((data[pos] << 8) | data[pos + 1])
    if e > end:
        raise _malformed("string runs past the end of the packet")
    raw = data[pos + 2 : e]
    try:
        if _CHECK_SURROGATES and _surrogate_at(raw):
            raise UnicodeError
        s = raw.decode()
    except UnicodeError:
        raise _malformed("invalid UTF-8 string") from None
    if "\x00" in s:
        raise _malformed("U+0000 in a UTF-8 string")
    return s, e


def _read_binary(data, pos, end):
    e = pos + 2 + ((data[pos] << 8) | data[pos + 1])
    if e > end:
        raise _malformed("binary data runs past the end of the packet")
    return data[pos + 2 : e], e


def _read_props(data, pos, ptype):
    if data[pos] == 0:
        return None, pos + 1
    return _p().decode_properties(data, pos, ptype)


def encode_string(s):
    """Encode a str as a UTF-8 Encoded String with its 2-byte length."""
    try:
        b = s.encode()
    except (AttributeError, UnicodeError):
        raise LocalProtocolError(_MALFORMED_PACKET, "%r is not a valid string" % (s,)) from None
    n = len(b)
    if n > 0xFFFF or "\x00" in s or (_CHECK_SURROGATES and _surrogate_at(b)):
        raise LocalProtocolError(
            _MALFORMED_PACKET, "string too long or holds U+0000 or a surrogate"
        )
    return bytes((n >> 8, n & 255)) + b


def _encode_binary(b):
    if isinstance(b, str):
        b = b.encode()
    n = len(b)
    if n > 0xFFFF:
        raise LocalProtocolError(_MALFORMED_PACKET, "binary data longer than 65535 bytes")
    return bytes((n >> 8, n & 255)) + bytes(b)


def _encode_topic(topic, alias_ok):
    if not isinstance(topic, str) or "+" in topic or "#" in topic or not (topic or alias_ok):
        raise LocalProtocolError(_TOPIC_NAME_INVALID, "invalid topic name %r" % (topic,))
    return encode_string(topic)


def _encode_props(props, ptype, v):
    if v != _MQTT5:
        if props:
            raise LocalProtocolError(_PROTOCOL_ERROR, "properties need MQTT 5.0")
        return b""
    if not props:
        return b"\x00"
    return _p().encode_properties(props, ptype)


def _packet_id(pid):
    if not isinstance(pid, int) or pid < 1 or pid > 0xFFFF:
        raise LocalProtocolError(_PROTOCOL_ERROR, "packet id must be 1..65535")  # MQTT-2.2.1-3
    return bytes((pid >> 8, pid & 255))


def _frame_header(first, n):
    if n > _MAX_REMAINING_LENGTH:
        raise LocalProtocolError(_PACKET_TOO_LARGE, "packet larger than 256 MB")
    return bytes((first,)) + encode_varint(n)


def _frame(first, body):
    n = len(body)
    if n < 128:
        return bytes((first, n)) + body
    return _frame_header(first, n) + body


def _check_qos(qos):
    if qos not in (0, 1, 2):
        raise LocalProtocolError(_PROTOCOL_ERROR, "QoS must be 0, 1 or 2")


# -- encoders ------------------------------------------------------------------


def _e_connect(p, v):
    v = p.protocol_level
    if v not in (_MQTT311, _MQTT5):
        raise LocalProtocolError(_UNSUPPORTED_PROTOCOL_VERSION, "protocol level must be 4 or 5")
    flags = 2 if p.clean_start else 0
    w = p.will
    if w is not None:
        _check_qos(w.qos)
        flags |= 4 | (w.qos << 3) | (32 if w.retain else 0)
    if p.username is not None:
        flags |= 128
    if p.password is not None:
        if v == _MQTT311 and p.username is None:
            raise LocalProtocolError(_PROTOCOL_ERROR, "3.1.1 needs a user name with a password")
        flags |= 64
    ka = p.keep_alive
    if not isinstance(ka, int) or ka < 0 or ka > 0xFFFF:
        raise LocalProtocolError(_PROTOCOL_ERROR, "keep_alive must be 0..65535")
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


def _e_connack(p, v):
    rc = p.reason_code
    # 3.1.1 return codes are 0-5 (3.2.2.3); 5.0 reason codes as listed in 3.2.2.2.
    if (
        not isinstance(rc, int)
        or rc < 0
        or rc > 255
        or (rc not in _CONNACK_CODES if v == _MQTT5 else rc > 5)
    ):
        raise LocalProtocolError(_PROTOCOL_ERROR, "invalid reason code %r" % (rc,))
    return _frame(
        0x20, bytes((1 if p.session_present else 0, rc)) + _encode_props(p.properties, _CONNACK, v)
    )


# Encoded topic names, validated once: devices publish to a few topics over
# and over. Cleared when full, so it never holds more than _TOPIC_CACHE_SIZE.
_topics = {}  # type: dict[str, bytes]
_TOPIC_CACHE_SIZE = 16


def _e_publish(p, v):
    qos = p.qos
    props = p.properties
    topic = p.topic
    tb = _topics.get(topic)
    if tb is None:
        tb = _encode_topic(topic, v == _MQTT5 and props and "topic_alias" in props)
        if topic:
            if len(_topics) >= _TOPIC_CACHE_SIZE:
                _topics.clear()
            _topics[topic] = tb
    payload = p.payload
    if type(payload) is not bytes:
        if isinstance(payload, str):
            payload = payload.encode()
        elif not isinstance(payload, (bytearray, memoryview)):
            raise LocalProtocolError(_PROTOCOL_ERROR, "payload must be bytes or str")
    if v == _MQTT5:
        pb = _p().encode_properties(props, _PUBLISH) if props else b"\x00"
    elif props:
        raise LocalProtocolError(_PROTOCOL_ERROR, "properties need MQTT 5.0")
    else:
        pb = b""
    first = 0x30 | (1 if p.retain else 0)
    if qos:
        if qos != 1 and qos != 2:
            _check_qos(qos)
        pid = p.packet_id
        if type(pid) is not int or not 0 < pid < 65536:
            _packet_id(pid)
        n = len(tb) + len(pb) + len(payload) + 2
        first |= (qos << 1) | (8 if p.dup else 0)
        if n < 128:
            return b"".join((bytes((first, n)), tb, bytes((pid >> 8, pid & 255)), pb, payload))
        return b"".join((_frame_header(first, n), tb, bytes((pid >> 8, pid & 255)), pb, payload))
    if type(qos) is not int:
        _check_qos(qos)
    if p.dup:
        raise LocalProtocolError(_PROTOCOL_ERROR, "DUP must be 0 for QoS 0")  # MQTT-3.3.1-2
    n = len(tb) + len(pb) + len(payload)
    if n < 128:
        return b"".join((bytes((first, n)), tb, pb, payload))
    return b"".join((_frame_header(first, n), tb, pb, payload))


def _e_ack(p, v):
    t = p.type
    body = _packet_id(p.packet_id)
    rc = p.reason_code
    codes = _PUBREL_CODES if t > _PUBREC else _PUBACK_CODES
    if rc not in codes:
        raise LocalProtocolError(_PROTOCOL_ERROR, "reason code 0x%02X not valid here" % rc)
    if v == _MQTT5:
        if p.properties:
            body += bytes((rc,)) + _encode_props(p.properties, t, v)
        elif rc:
            body += bytes((rc,))  # 3.4.2.1: the property length may be left out
    elif rc or p.properties:
        raise LocalProtocolError(_PROTOCOL_ERROR, "MQTT 3.1.1 acks carry no reason code")
    return _frame((t << 4) | (2 if t == _PUBREL else 0), body)


def _e_subscribe(p, v):
    subs = p.subscriptions
    if not subs:
        raise LocalProtocolError(_PROTOCOL_ERROR, "SUBSCRIBE needs a topic filter")  # MQTT-3.8.3-3
    body = bytearray(_packet_id(p.packet_id))
    body += _encode_props(p.properties, _SUBSCRIBE, v)
    for s in subs:
        _check_qos(s.qos)
        opts = s.qos
        if s.no_local:
            opts |= 4
        if s.retain_as_published:
            opts |= 8
        rh = s.retain_handling
        if rh not in (0, 1, 2):
            raise LocalProtocolError(_PROTOCOL_ERROR, "retain_handling must be 0, 1 or 2")
        opts |= rh << 4
        if v != _MQTT5 and opts > 3:
            raise LocalProtocolError(_PROTOCOL_ERROR, "subscription options need MQTT 5.0")
        body += encode_string(s.topic_filter)
        body.append(opts)
    return _frame(0x82, body)


def _e_suback(p, v):
    codes = bytes(p.reason_codes)
    allowed = _SUBACK_CODES if v == _MQTT5 else _SUBACK_CODES_V3
    for c in codes:
        if c not in allowed:
            raise LocalProtocolError(_PROTOCOL_ERROR, "reason code 0x%02X not valid here" % c)
    if not codes:
        raise LocalProtocolError(_PROTOCOL_ERROR, "SUBACK needs a reason code")
    return _frame(0x90, _packet_id(p.packet_id) + _encode_props(p.properties, _SUBACK, v) + codes)


def _e_unsubscribe(p, v):
    if not p.topic_filters:
        raise LocalProtocolError(_PROTOCOL_ERROR, "UNSUBSCRIBE needs a topic filter")
    body = bytearray(_packet_id(p.packet_id))
    body += _encode_props(p.properties, _UNSUBSCRIBE, v)
    for f in p.topic_filters:
        body += encode_string(f)
    return _frame(0xA2, body)


def _e_unsuback(p, v):
    body = _packet_id(p.packet_id)
    if v == _MQTT5:
        codes = bytes(p.reason_codes)
        for c in codes:
            if c not in _UNSUBACK_CODES:
                raise LocalProtocolError(_PROTOCOL_ERROR, "reason code 0x%02X not valid here" % c)
        if not codes:
            raise LocalProtocolError(_PROTOCOL_ERROR, "UNSUBACK needs a reason code")
        body += _encode_props(p.properties, _UNSUBACK, v) + codes
    elif p.reason_codes or p.properties:
        raise LocalProtocolError(_PROTOCOL_ERROR, "MQTT 3.1.1 UNSUBACK carries no reason codes")
    return _frame(0xB0, body)


def _e_empty(p, v):
    return bytes((p.type << 4, 0))


def _e_reason(p, v):
    # DISCONNECT and AUTH: reason code and properties, both optional on the wire.
    t = p.type
    rc = p.reason_code
    if rc not in (_AUTH_CODES if t == _AUTH else _DISCONNECT_CODES):
        raise LocalProtocolError(_PROTOCOL_ERROR, "reason code 0x%02X not valid here" % rc)
    if v != _MQTT5:
        if t == _AUTH:
            raise LocalProtocolError(_PROTOCOL_ERROR, "AUTH needs MQTT 5.0")
        if rc or p.properties:
            raise LocalProtocolError(_PROTOCOL_ERROR, "MQTT 3.1.1 DISCONNECT is empty")
        return b"\xe0\x00"
    if p.properties:
        return _frame(t << 4, bytes((rc,)) + _encode_props(p.properties, t, v))
    if rc:
        return bytes((t << 4, 1, rc))
    return bytes((t << 4, 0))


_ENCODERS = (
    None,
    _e_connect,
    _e_connack,
    _e_publish,
    _e_ack,
    _e_ack,
    _e_ack,
    _e_ack,
    _e_subscribe,
    _e_suback,
    _e_unsubscribe,
    _e_unsuback,
    _e_empty,
    _e_empty,
    _e_reason,
    _e_reason,
)


def encode(packet, version=_MQTT5):
    """Return the bytes of ``packet`` for protocol ``version`` (4 = 3.1.1, 5 = 5.0).
    Raises LocalProtocolError if the packet breaks the spec."""
    try:
        return _ENCODERS[packet.type](packet, version)  # type: ignore[misc]
    except (TypeError, ValueError, OverflowError) as e:
        raise LocalProtocolError(_PROTOCOL_ERROR, "cannot encode %r: %s" % (packet, e)) from None


# -- decoders ------------------------------------------------------------------
# Each takes (type, flags, data, pos, version): ``data`` is a bytes object that
# ends where the packet ends and the body starts at ``pos``. Reading past the
# end raises IndexError, which the parser reports as a Malformed Packet.


def _pid(data, pos):
    pid = (data[pos] << 8) | data[pos + 1]
    if not pid:
        raise RemoteProtocolError(_PROTOCOL_ERROR, "packet id 0")  # MQTT-2.2.1-3
    return pid


def _d_connect(t, flags, data, pos, v):
    end = len(data)
    name, pos = read_string(data, pos, end)
    level = data[pos]
    if name != "MQTT" or level not in (_MQTT311, _MQTT5):
        # MQTT-3.1.2-2: answer CONNACK 0x84 (3.1.1: return code 1) and close.
        raise RemoteProtocolError(
            _UNSUPPORTED_PROTOCOL_VERSION, "protocol %r level %d" % (name, level)
        )
    cf = data[pos + 1]
    if cf & 1:
        raise _malformed("CONNECT reserved flag set")  # MQTT-3.1.2-3
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
            raise _malformed("will QoS 3")  # MQTT-3.1.2-14
        wprops = None
        if level == _MQTT5:
            wprops, pos = _read_props(data, pos, 0)
        wtopic, pos = read_string(data, pos, end)
        if not wtopic or "+" in wtopic or "#" in wtopic:
            raise RemoteProtocolError(_TOPIC_NAME_INVALID, "invalid will topic")
        wpayload, pos = _read_binary(data, pos, end)
        will = Will(wtopic, wpayload, wqos, bool(cf & 32), wprops)
    elif cf & 0x38:
        raise _malformed("will QoS or retain set without a will")  # MQTT-3.1.2-11, -13, -15
    username = password = None
    if cf & 128:
        username, pos = read_string(data, pos, end)
    elif level == _MQTT311 and cf & 64:
        raise _malformed("password without user name")  # MQTT-3.1.2-22
    if cf & 64:
        password, pos = _read_binary(data, pos, end)
    if pos != end:
        raise _malformed("bytes after the CONNECT payload")
    return Connect(client_id, bool(cf & 2), ka, username, password, will, level, props)


def _d_connack(t, flags, data, pos, v):
    f = data[pos]
    if f & 0xFE:
        raise _malformed("CONNACK reserved flags set")  # MQTT-3.2.2-1
    rc = data[pos + 1]
    pos += 2
    props = None
    if v == _MQTT5:
        if rc not in _CONNACK_CODES:
            raise RemoteProtocolError(_PROTOCOL_ERROR, "CONNACK reason code 0x%02X" % rc)
        props, pos = _read_props(data, pos, _CONNACK)
    elif rc > 5:
        raise RemoteProtocolError(_PROTOCOL_ERROR, "CONNACK return code %d" % rc)
    if pos != len(data):
        raise _malformed("bytes after the CONNACK")
    return ConnAck(f == 1, rc, props)


def _d_publish(t, flags, data, pos, v):
    # The hot path: read_string and _pid are inlined here.
    qos = (flags >> 1) & 3
    if qos == 3:
        raise _malformed("PUBLISH with QoS 3")  # MQTT-3.3.1-4
    e = pos + 2 + ((data[pos] << 8) | data[pos + 1])
    raw = data[pos + 2 : e]
    try:
        if _CHECK_SURROGATES and _surrogate_at(raw):
            raise UnicodeError
        topic = raw.decode()
    except UnicodeError:
        raise _malformed("invalid UTF-8 string") from None
    if "+" in topic or "#" in topic or "\x00" in topic:
        if "\x00" in topic:
            raise _malformed("U+0000 in a UTF-8 string")  # MQTT-1.5.4-2
        raise RemoteProtocolError(_TOPIC_NAME_INVALID, "wildcard in PUBLISH topic")  # MQTT-3.3.2-2
    pid = None
    if qos:
        pid = (data[e] << 8) | data[e + 1]
        e += 2
        if not pid:
            raise RemoteProtocolError(_PROTOCOL_ERROR, "packet id 0")  # MQTT-2.2.1-3
    elif flags & 8:
        raise RemoteProtocolError(_PROTOCOL_ERROR, "DUP set on QoS 0")  # MQTT-3.3.1-2
    props = None
    if v == _MQTT5:
        if data[e]:
            props, e = _p().decode_properties(data, e, _PUBLISH)
        else:
            e += 1
    if e > len(data):
        raise _malformed("PUBLISH shorter than its fields")
    if not topic and (not props or "topic_alias" not in props):
        raise RemoteProtocolError(_PROTOCOL_ERROR, "empty topic without topic alias")
    return Publish(topic, data[e:], qos, flags & 1 != 0, flags & 8 != 0, pid, props)


_ACKS = (PubAck, PubRec, PubRel, PubComp)


def _d_ack(t, flags, data, pos, v):
    n = len(data) - pos
    pid = _pid(data, pos)
    rc = 0
    props = None
    if v == _MQTT5 and n > 2:
        rc = data[pos + 2]
        if rc not in (_PUBREL_CODES if t > _PUBREC else _PUBACK_CODES):
            raise RemoteProtocolError(_PROTOCOL_ERROR, "reason code 0x%02X" % rc)
        if n > 3:
            props, pos = _read_props(data, pos + 3, t)
            if pos != len(data):
                raise _malformed("bytes after the properties")
    elif n != 2:
        raise _malformed("wrong remaining length")
    return _ACKS[t - _PUBACK](pid, rc, props)


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
            raise _malformed("reserved subscription option bits set")  # MQTT-3.8.3-5
        if o & 3 == 3:
            # 3.1.1: malformed (MQTT-3-8.3-4); 5.0: protocol error (3.8.3.1).
            raise RemoteProtocolError(
                _PROTOCOL_ERROR if v == _MQTT5 else _MALFORMED_PACKET, "subscription QoS 3"
            )
        if o >> 4 == 3:
            raise RemoteProtocolError(_PROTOCOL_ERROR, "retain handling 3")
        if o & 4 and f.startswith("$share/"):
            raise RemoteProtocolError(_PROTOCOL_ERROR, "no local on a shared subscription")
        subs.append(Subscription(f, o & 3, bool(o & 4), bool(o & 8), o >> 4))
    if not subs:
        raise RemoteProtocolError(_PROTOCOL_ERROR, "SUBSCRIBE without topic filter")  # MQTT-3.8.3-3
    return Subscribe(pid, subs, props)


def _d_codes(data, pos, allowed):
    codes = list(data[pos:])
    if not codes:
        raise RemoteProtocolError(_PROTOCOL_ERROR, "no reason codes")
    for c in codes:
        if c not in allowed:
            raise RemoteProtocolError(_PROTOCOL_ERROR, "reason code 0x%02X" % c)
    return codes


def _d_suback(t, flags, data, pos, v):
    pid = _pid(data, pos)
    pos += 2
    props = None
    if v == _MQTT5:
        props, pos = _read_props(data, pos, _SUBACK)
    codes = _d_codes(data, pos, _SUBACK_CODES if v == _MQTT5 else _SUBACK_CODES_V3)
    return SubAck(pid, codes, props)


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
        raise RemoteProtocolError(_PROTOCOL_ERROR, "UNSUBSCRIBE without topic filter")
    return Unsubscribe(pid, filters, props)


def _d_unsuback(t, flags, data, pos, v):
    pid = _pid(data, pos)
    if v != _MQTT5:
        if len(data) - pos != 2:
            raise _malformed("wrong remaining length")
        return UnsubAck(pid)
    props, pos = _read_props(data, pos + 2, _UNSUBACK)
    return UnsubAck(pid, _d_codes(data, pos, _UNSUBACK_CODES), props)


def _d_ping(t, flags, data, pos, v):
    if len(data) != pos:
        raise _malformed("PINGREQ/PINGRESP with a body")
    return PingReq() if t == _PINGREQ else PingResp()


def _d_reason(t, flags, data, pos, v):
    n = len(data) - pos
    if t == _AUTH and v != _MQTT5:
        raise RemoteProtocolError(_PROTOCOL_ERROR, "AUTH in MQTT 3.1.1")
    rc = 0
    props = None
    if n:
        if v != _MQTT5:
            raise _malformed("DISCONNECT with a body")
        rc = data[pos]
        if rc not in (_AUTH_CODES if t == _AUTH else _DISCONNECT_CODES):
            raise RemoteProtocolError(_PROTOCOL_ERROR, "reason code 0x%02X" % rc)
        if n > 1:
            props, pos = _read_props(data, pos + 1, t)
            if pos != len(data):
                raise _malformed("bytes after the properties")
    return (Auth if t == _AUTH else Disconnect)(rc, props)


_DECODERS = (
    None,
    _d_connect,
    _d_connack,
    _d_publish,
    _d_ack,
    _d_ack,
    _d_ack,
    _d_ack,
    _d_subscribe,
    _d_suback,
    _d_unsubscribe,
    _d_unsuback,
    _d_ping,
    _d_ping,
    _d_reason,
    _d_reason,
)

# Required fixed-header flags per packet type; PUBLISH (-1) has its own (2.1.3).
_FLAGS = (-2, 0, 0, -1, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0)


class Parser:
    """Incremental packet reader: ``feed(data)`` then ``next_packet()`` until it
    returns None. Bytes may arrive in any chunking. Memory stays bounded by
    ``max_packet_size``: a packet announcing a larger size raises
    RemoteProtocolError(0x95) as soon as its header is read (3.1.2.11.4).

    ``version`` is 4 or 5; None (server side) takes it from the CONNECT.
    """

    def __init__(self, version=_MQTT5, max_packet_size=_MAX_PACKET_SIZE):
        self.version = version
        self.max_packet_size = max_packet_size
        # Whole chunks are kept as the bytes they came in (packets are sliced
        # from them with one copy); a packet split across chunks is gathered
        # in a bytearray.
        self._buf = b""  # type: bytes | bytearray
        self._pos = 0

    def feed(self, data):
        """Add received bytes."""
        buf = self._buf
        pos = self._pos
        if pos >= len(buf):
            self._buf = data if type(data) is bytes else bytes(data)
        elif type(buf) is bytearray:
            if pos:
                buf[:pos] = b""
            buf += data
        else:
            buf = bytearray(buf[pos:])
            buf += data
            self._buf = buf
        self._pos = 0

    def buffered(self):
        """Number of bytes received but not yet returned as packets."""
        return len(self._buf) - self._pos

    def next_packet(self):
        """Return the next whole packet, or None if more bytes are needed."""
        buf = self._buf
        start = self._pos
        n = len(buf)
        if n - start < 2:
            return None
        b = buf[start + 1]
        if b < 128:
            i = start + 2
            end = i + b
        else:
            i = start + 1
            length = 0
            shift = 0
            while True:
                if i >= n:
                    return None
                b = buf[i]
                i += 1
                length |= (b & 127) << shift
                if b < 128:
                    if not b:
                        raise _malformed("remaining length not minimally encoded")
                    break
                shift += 7
                if shift > 21:
                    raise _malformed("remaining length longer than 4 bytes")
            end = i + length
        # Checked before waiting for the body, so a peer cannot make us buffer it.
        if end - start > self.max_packet_size:
            raise RemoteProtocolError(_PACKET_TOO_LARGE, "packet of %d bytes" % (end - start))
        if end > n:
            return None
        self._pos = end
        if start or end != n or type(buf) is not bytes:
            buf = bytes(buf[start:end])
        first = buf[0]
        t = first >> 4
        flags = first & 15
        f = _FLAGS[t]
        if f != flags and f != -1:
            if not t:
                raise _malformed("reserved packet type 0")
            raise _malformed("invalid fixed header flags")  # MQTT-2.2.2-1, -2
        v = self.version
        if v is None:
            if t != _CONNECT:
                raise RemoteProtocolError(_PROTOCOL_ERROR, "first packet is not CONNECT")
            v = _MQTT5
        try:
            p = _DECODERS[t](t, flags, buf, i - start, v)  # type: ignore[misc]
        except (IndexError, ValueError):
            raise _malformed("packet shorter than its fields") from None
        if t == _CONNECT and self.version is None:
            self.version = p.protocol_level
        return p


def decode(data, version=_MQTT5):
    """Decode exactly one whole packet from ``data``; raises RemoteProtocolError
    if it is malformed, incomplete or followed by more bytes."""
    parser = Parser(version)
    parser.feed(data)
    p = parser.next_packet()
    if p is None or parser.buffered():
        raise _malformed("not exactly one packet")
    return p
