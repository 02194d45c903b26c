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

from .. import _use
from ._errors import LocalProtocolError, RemoteProtocolError
from ._packets import PingReq, PingResp, PubAck, PubComp, Publish, PubRec, PubRel

try:
    from micropython import const
except ImportError:  # CPython
    const = int

# Private copies of the numbers in _const: folded into the bytecode, no RAM.
_CONNECT = const(1)
_PUBLISH = const(3)
_PUBACK = const(4)
_PUBREC = const(5)
_PUBREL = const(6)
_PINGREQ = const(12)
_MQTT5 = const(5)
_MALFORMED_PACKET = const(0x81)
_PROTOCOL_ERROR = const(0x82)
_TOPIC_NAME_INVALID = const(0x90)
_PACKET_TOO_LARGE = const(0x95)
_MAX_REMAINING_LENGTH = const(268435455)
_MAX_PACKET_SIZE = const(268435460)

# Error details: numbers of the texts in _names.DETAILS, which loads only
# when an error is printed (tests check each number against its name).
_E_VARINT_NOT_MINIMAL = const(1)
_E_VARINT_TOO_LONG = const(2)
_E_STRING_PAST_END = const(3)
_E_BAD_UTF8 = const(4)
_E_NUL_IN_STRING = const(5)
_E_BINARY_PAST_END = const(6)
_E_BAD_STRING = const(7)
_E_BINARY_TOO_LONG = const(8)
_E_PROPS_NEED_V5 = const(9)
_E_BAD_PACKET_ID = const(10)
_E_OVER_256MB = const(11)
_E_BAD_QOS = const(12)
_E_BAD_PAYLOAD = const(16)
_E_DUP_ON_QOS0 = const(17)
_E_V3_ACK_NO_REASON = const(18)
_E_PACKET_ID_0 = const(28)
_E_PUBLISH_QOS_3 = const(37)
_E_WILDCARD_IN_PUBLISH = const(38)
_E_DUP_SET_ON_QOS0 = const(39)
_E_EMPTY_TOPIC_NO_ALIAS = const(41)
_E_BYTES_AFTER_PROPS = const(42)
_E_WRONG_LENGTH = const(43)
_E_PING_WITH_BODY = const(51)
_E_LENGTH_NOT_MINIMAL = const(54)
_E_LENGTH_TOO_LONG = const(55)
_E_PACKET_TYPE_0 = const(56)
_E_BAD_FLAGS = const(57)
_E_FIRST_NOT_CONNECT = const(58)
_E_PACKET_TOO_SHORT = const(59)
_E_NOT_ONE_PACKET = const(60)
_E_NOT_A_STRING = const(95)
_E_BAD_TOPIC_NAME = const(96)
_E_BAD_REASON_CODE = const(97)
_E_CANNOT_ENCODE = const(98)
_E_OVER_MAX_SIZE = const(101)

# CPython's UTF-8 codec rejects encoded surrogates; MicroPython's does not.
_CHECK_SURROGATES = sys.implementation.name == "micropython"

# Reason codes each packet may carry (2.4), as bytes for a cheap `in`; those
# of the control packets are in _codec_control.
_PUBACK_CODES = b"\x00\x10\x80\x83\x87\x90\x91\x97\x99"
_PUBREL_CODES = b"\x00\x92"

_props = None
_new = object.__new__
_CONTROL = __name__[: __name__.rfind(".")] + "._codec_control"


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
                raise _malformed(_E_VARINT_NOT_MINIMAL)  # MQTT-1.5.5-1
            return value, pos
        shift += 7
        if shift > 21:
            raise _malformed(_E_VARINT_TOO_LONG)


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
        raise _malformed(_E_STRING_PAST_END)
    raw = data[pos + 2 : e]
    try:
        if _CHECK_SURROGATES and _surrogate_at(raw):
            raise UnicodeError
        s = raw.decode()
    except UnicodeError:
        raise _malformed(_E_BAD_UTF8) from None
    if "\x00" in s:
        raise _malformed(_E_NUL_IN_STRING)
    return s, e


def _read_binary(data, pos, end):
    e = pos + 2 + ((data[pos] << 8) | data[pos + 1])
    if e > end:
        raise _malformed(_E_BINARY_PAST_END)
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
        raise LocalProtocolError(_MALFORMED_PACKET, (_E_NOT_A_STRING, s)) from None
    n = len(b)
    if n > 0xFFFF or "\x00" in s or (_CHECK_SURROGATES and _surrogate_at(b)):
        raise LocalProtocolError(_MALFORMED_PACKET, _E_BAD_STRING)
    return bytes((n >> 8, n & 255)) + b


def _encode_binary(b):
    if isinstance(b, str):
        b = b.encode()
    n = len(b)
    if n > 0xFFFF:
        raise LocalProtocolError(_MALFORMED_PACKET, _E_BINARY_TOO_LONG)
    return bytes((n >> 8, n & 255)) + bytes(b)


def _encode_topic(topic, alias_ok):
    if not isinstance(topic, str) or "+" in topic or "#" in topic or not (topic or alias_ok):
        raise LocalProtocolError(_TOPIC_NAME_INVALID, (_E_BAD_TOPIC_NAME, topic))
    return encode_string(topic)


def _encode_props(props, ptype, v):
    if v != _MQTT5:
        if props:
            raise LocalProtocolError(_PROTOCOL_ERROR, _E_PROPS_NEED_V5)
        return b""
    if not props:
        return b"\x00"
    return _p().encode_properties(props, ptype)


def _packet_id(pid):
    if not isinstance(pid, int) or pid < 1 or pid > 0xFFFF:
        raise LocalProtocolError(_PROTOCOL_ERROR, _E_BAD_PACKET_ID)  # MQTT-2.2.1-3
    return bytes((pid >> 8, pid & 255))


def _frame_header(first, n):
    if n < 16384:  # a 1- or 2-byte length: no loop
        if n < 128:
            return ((first << 8) | n).to_bytes(2, "big")
        return ((first << 16) | ((n & 127) << 8) | 0x8000 | (n >> 7)).to_bytes(3, "big")
    if n > _MAX_REMAINING_LENGTH:
        raise LocalProtocolError(_PACKET_TOO_LARGE, _E_OVER_256MB)
    return bytes((first,)) + encode_varint(n)


def _frame(first, body):
    n = len(body)
    if n < 128:
        return bytes((first, n)) + body
    return _frame_header(first, n) + body


def _check_qos(qos):
    if qos not in (0, 1, 2):
        raise LocalProtocolError(_PROTOCOL_ERROR, _E_BAD_QOS)


# -- encoders ------------------------------------------------------------------


# Encoded topic names, validated once: devices publish to a few topics over
# and over. Cleared when full, so it never holds more than _TOPIC_CACHE_SIZE.
_topics = {}  # type: dict[str, bytes]
_TOPIC_CACHE_SIZE = 16


def _e_ack(p, v):
    t = p.type
    body = _packet_id(p.packet_id)
    rc = p.reason_code
    codes = _PUBREL_CODES if t > _PUBREC else _PUBACK_CODES
    if rc not in codes:
        raise LocalProtocolError(_PROTOCOL_ERROR, (_E_BAD_REASON_CODE, rc))
    if v == _MQTT5:
        if p.properties:
            body += bytes((rc,)) + _encode_props(p.properties, t, v)
        elif rc:
            body += bytes((rc,))  # 3.4.2.1: the property length may be left out
    elif rc or p.properties:
        raise LocalProtocolError(_PROTOCOL_ERROR, _E_V3_ACK_NO_REASON)
    return _frame((t << 4) | (2 if t == _PUBREL else 0), body)


def _e_control(p, v):
    # CONNECT, SUBSCRIBE, UNSUBSCRIBE, DISCONNECT, AUTH: a connection's life,
    # not its messages. _codec_control loads for each use.
    return _use(_CONTROL).ENCODERS[p.type](p, v)


def _e_server(p, v):
    # CONNACK, SUBACK, UNSUBACK: only a server sends them, so their encoders
    # live in _codec_server and load on first use.
    from ._codec_server import ENCODERS

    return ENCODERS[p.type](p, v)


def _e_empty(p, v):
    return bytes((p.type << 4, 0))


_ENCODERS = (
    None,
    _e_control,
    _e_server,
    None,  # PUBLISH: encoded in encode(), the hot path
    _e_ack,
    _e_ack,
    _e_ack,
    _e_ack,
    _e_control,
    _e_server,
    _e_control,
    _e_server,
    _e_empty,
    _e_empty,
    _e_control,
    _e_control,
)


def encode(packet, version=_MQTT5):
    """Return the bytes of ``packet`` for protocol ``version`` (4 = 3.1.1, 5 = 5.0).
    Raises LocalProtocolError if the packet breaks the spec."""
    try:
        if type(packet) is not Publish and packet.type != _PUBLISH:
            return _ENCODERS[packet.type](packet, version)  # type: ignore[misc]
        # PUBLISH, the hot path: encoded here rather than through _ENCODERS to
        # save a call. The checks keep their order, so the first error wins.
        topic = packet.topic
        props = packet.properties
        tb = _topics.get(topic)
        if tb is None:
            tb = _encode_topic(topic, version == _MQTT5 and props and "topic_alias" in props)
            if topic:
                if len(_topics) >= _TOPIC_CACHE_SIZE:
                    _topics.clear()
                _topics[topic] = tb
        payload = packet.payload
        if type(payload) is not bytes:
            if isinstance(payload, str):
                payload = payload.encode()
            elif not isinstance(payload, (bytearray, memoryview)):
                raise LocalProtocolError(_PROTOCOL_ERROR, _E_BAD_PAYLOAD)
        n = len(tb) + len(payload)
        if props:
            if version != _MQTT5:
                raise LocalProtocolError(_PROTOCOL_ERROR, _E_PROPS_NEED_V5)
            pb = _p().encode_properties(props, _PUBLISH)
            n += len(pb)
        elif version == _MQTT5:
            pb = b"\x00"
            n += 1
        else:
            pb = b""
        qos = packet.qos
        first = 0x31 if packet.retain else 0x30
        if qos:
            if qos != 1 and qos != 2:
                _check_qos(qos)
            pid = packet.packet_id
            if type(pid) is not int or not 0 < pid < 65536:
                _packet_id(pid)
            n += 2
            first |= qos << 1
            if packet.dup:
                first |= 8
            # int.to_bytes makes the fixed header and the packet id without a
            # tuple each (cheaper than bytes((a, b)) on both ports).
            if n < 128:
                return b"".join(
                    ((first << 8 | n).to_bytes(2, "big"), tb, pid.to_bytes(2, "big"), pb, payload)
                )
            return b"".join((_frame_header(first, n), tb, pid.to_bytes(2, "big"), pb, payload))
        if type(qos) is not int:
            _check_qos(qos)
        if packet.dup:
            raise LocalProtocolError(_PROTOCOL_ERROR, _E_DUP_ON_QOS0)  # MQTT-3.3.1-2
        return b"".join((_frame_header(first, n), tb, pb, payload))
    except (TypeError, ValueError, OverflowError, AttributeError, LookupError) as e:
        # A field of the wrong type (say a Subscribe of strings, not Subscriptions).
        raise LocalProtocolError(_PROTOCOL_ERROR, (_E_CANNOT_ENCODE, packet, e)) from None


# -- decoders ------------------------------------------------------------------
# Each takes (type, flags, data, pos, version): ``data`` is a bytes object that
# ends where the packet ends and the body starts at ``pos``. Reading past the
# end raises IndexError, which the parser reports as a Malformed Packet.


def _pid(data, pos):
    pid = (data[pos] << 8) | data[pos + 1]
    if not pid:
        raise RemoteProtocolError(_PROTOCOL_ERROR, _E_PACKET_ID_0)  # MQTT-2.2.1-3
    return pid


_ACKS = (PubAck, PubRec, PubRel, PubComp)


def _d_ack(t, flags, data, pos, v):
    n = len(data) - pos
    pid = _pid(data, pos)
    rc = 0
    props = None
    if v == _MQTT5 and n > 2:
        rc = data[pos + 2]
        if rc not in (_PUBREL_CODES if t > _PUBREC else _PUBACK_CODES):
            raise RemoteProtocolError(_PROTOCOL_ERROR, (_E_BAD_REASON_CODE, rc))
        if n > 3:
            props, pos = _read_props(data, pos + 3, t)
            if pos != len(data):
                raise _malformed(_E_BYTES_AFTER_PROPS)
    elif n != 2:
        raise _malformed(_E_WRONG_LENGTH)
    return _ACKS[t - _PUBACK](pid, rc, props)


def _d_control(t, flags, data, pos, v):
    # CONNACK, SUBACK, UNSUBACK, DISCONNECT, AUTH (see _e_control).
    return _use(_CONTROL).DECODERS[t](t, flags, data, pos, v)


def _d_server(t, flags, data, pos, v):
    # CONNECT, SUBSCRIBE, UNSUBSCRIBE: only a server receives them.
    from ._codec_server import DECODERS

    return DECODERS[t](t, flags, data, pos, v)


def _d_ping(t, flags, data, pos, v):
    if len(data) != pos:
        raise _malformed(_E_PING_WITH_BODY)
    return PingReq() if t == _PINGREQ else PingResp()


_DECODERS = (
    None,
    _d_server,
    _d_control,
    None,  # PUBLISH: decoded in Parser.next_packet, the hot path
    _d_ack,
    _d_ack,
    _d_ack,
    _d_ack,
    _d_server,
    _d_control,
    _d_server,
    _d_control,
    _d_ping,
    _d_ping,
    _d_control,
    _d_control,
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
        # The last PUBLISH topic, as on the wire (2-byte length first) and
        # decoded: most connections hear the same few topics again and again.
        # Starts as a valid pair, so a match needs no other check.
        self._topic_raw = b"\x00\x01/"
        self._topic = "/"

    def feed(self, data):
        """Add received bytes."""
        buf = self._buf
        if not buf:
            # The common case: everything before was consumed (an empty
            # buffer always has _pos 0). Keep bytes as they are, no copy.
            self._buf = data if type(data) is bytes else bytes(data)
            return
        pos = self._pos
        if type(buf) is bytearray:
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
            # A longer Remaining Length: its first byte is b (2.1.4).
            i = start + 2
            length = b & 127
            shift = 7
            while True:
                if i >= n:
                    return None
                b = buf[i]
                i += 1
                length |= (b & 127) << shift
                if b < 128:
                    if not b:
                        raise _malformed(_E_LENGTH_NOT_MINIMAL)
                    break
                shift += 7
                if shift > 21:
                    raise _malformed(_E_LENGTH_TOO_LONG)
            end = i + length
        # Checked before waiting for the body, so a peer cannot make us buffer it.
        if end - start > self.max_packet_size:
            raise RemoteProtocolError(_PACKET_TOO_LARGE, (_E_OVER_MAX_SIZE, end - start))
        if end > n:
            if self.version is None and buf[start] >> 4 != _CONNECT:
                # A server's first packet: not a CONNECT, so not worth buffering.
                raise RemoteProtocolError(_PROTOCOL_ERROR, _E_FIRST_NOT_CONNECT)
            return None
        # Decoders read a bytes object that ends where the packet ends: the
        # buffer itself when it holds just this packet, else a copy of it.
        if end != n:
            if end > n:
                return None
            self._pos = end
            buf = bytes(buf[start:end])
            i -= start
        else:
            self._buf = b""
            if start or type(buf) is not bytes:
                self._pos = 0
                buf = bytes(buf[start:end])
                i -= start
        first = buf[0]
        t = first >> 4
        v = self.version
        if t == _PUBLISH:
            # The hot path, decoded here rather than through _DECODERS to save
            # a call. Its flags are its own (2.1.3), checked below.
            if v is None:
                raise RemoteProtocolError(_PROTOCOL_ERROR, _E_FIRST_NOT_CONNECT)
            try:
                qos = (first >> 1) & 3
                if qos == 3:
                    raise _malformed(_E_PUBLISH_QOS_3)  # MQTT-3.3.1-4
                raw = self._topic_raw
                if buf.startswith(raw, i):
                    # The same topic as the last PUBLISH: no slice, no decoding.
                    topic = self._topic
                    e = i + len(raw)
                else:
                    # read_string, inlined; raw keeps the length for the match above.
                    e = i + 2 + ((buf[i] << 8) | buf[i + 1])
                    if e > len(buf):
                        # Before the bytes there are judged: a wildcard in a
                        # topic cut short must not make it 0x90.
                        raise _malformed(_E_STRING_PAST_END)
                    raw = buf[i:e]
                    try:
                        if _CHECK_SURROGATES and _surrogate_at(raw[2:]):
                            raise UnicodeError
                        topic = raw[2:].decode()
                    except UnicodeError:
                        raise _malformed(_E_BAD_UTF8) from None
                    if "+" in topic or "#" in topic or "\x00" in topic:
                        if "\x00" in topic:
                            raise _malformed(_E_NUL_IN_STRING)  # MQTT-1.5.4-2
                        # MQTT-3.3.2-2
                        raise RemoteProtocolError(_TOPIC_NAME_INVALID, _E_WILDCARD_IN_PUBLISH)
                    if topic:
                        self._topic_raw = raw
                        self._topic = topic
                if qos:
                    pid = (buf[e] << 8) | buf[e + 1]
                    e += 2
                    if not pid:
                        raise RemoteProtocolError(_PROTOCOL_ERROR, _E_PACKET_ID_0)  # MQTT-2.2.1-3
                elif first & 8:
                    raise RemoteProtocolError(_PROTOCOL_ERROR, _E_DUP_SET_ON_QOS0)  # MQTT-3.3.1-2
                else:
                    # The topic ends within the packet (checked above);
                    # reading past its end raises IndexError (the packet id
                    # above, the property length below).
                    pid = None
                props = None
                if v == _MQTT5:
                    if buf[e]:
                        props, e = _p().decode_properties(buf, e, _PUBLISH)
                    else:
                        e += 1
                if not topic and (not props or "topic_alias" not in props):
                    raise RemoteProtocolError(_PROTOCOL_ERROR, _E_EMPTY_TOPIC_NO_ALIAS)
            except (IndexError, ValueError):
                raise _malformed(_E_PACKET_TOO_SHORT) from None
            # Built field by field: cheaper than calling the class, same object.
            p = _new(Publish)
            p.topic = topic
            p.payload = buf[e:]
            p.qos = qos
            p.retain = first & 1 != 0
            p.dup = first & 8 != 0
            p.packet_id = pid
            p.properties = props
            return p
        if _FLAGS[t] != first & 15:
            if not t:
                raise _malformed(_E_PACKET_TYPE_0)
            raise _malformed(_E_BAD_FLAGS)  # MQTT-2.2.2-1, -2
        if v is None and t != _CONNECT:
            raise RemoteProtocolError(_PROTOCOL_ERROR, _E_FIRST_NOT_CONNECT)
        try:
            p = _DECODERS[t](t, first & 15, buf, i, v or _MQTT5)  # type: ignore[misc]
        except (IndexError, ValueError):
            raise _malformed(_E_PACKET_TOO_SHORT) from None
        if v is None:
            self.version = p.protocol_level
        return p


def decode(data, version=_MQTT5):
    """Decode exactly one whole packet from ``data``; raises RemoteProtocolError
    if it is malformed, incomplete or followed by more bytes."""
    parser = Parser(version)
    parser.feed(data)
    p = parser.next_packet()
    if p is None or parser.buffered():
        raise _malformed(_E_NOT_ONE_PACKET)
    return p
