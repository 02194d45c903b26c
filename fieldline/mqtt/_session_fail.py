"""What a session does when the peer breaks the protocol.

Imported by ``Session._fail`` on first use: a rare path, so a device keeps
it out of RAM until a peer misbehaves.
"""

from ._codec import Parser, encode
from ._errors import MQTTError, RemoteProtocolError
from ._packets import ConnAck, Disconnect

try:
    from micropython import const
except ImportError:  # CPython
    const = int

_SERVER = const(1)
_IDLE = const(0)
_CONNECTING = const(1)
_CLOSED = const(3)
_ERROR = const(4)
_MQTT311 = const(4)
_MQTT5 = const(5)
_UNSUPPORTED_PROTOCOL_VERSION = const(0x84)
_KEEP_ALIVE_TIMEOUT = const(0x8D)
_PACKET_TOO_LARGE = const(0x95)

# Error details: numbers of the texts in _names.DETAILS, which loads only
# when an error is printed (tests check each number against its name).
_E_KEEP_ALIVE_EXPIRED = const(62)
_E_HELD_OVER_MAX = const(118)

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
    fail(s, e)
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
