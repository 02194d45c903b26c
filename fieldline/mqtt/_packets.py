"""The packets, named as in the spec; they are also the events of the session.

Plain keyword-argument classes (MicroPython has no dataclasses). Values are
checked on the send path by the encoder, not here, so decoding builds them at
no extra cost. ``properties`` is ``None`` or a dict keyed by property name
(see ``_props._TABLE``); ``None`` and ``{}`` mean the same.
"""

import sys

try:
    from micropython import const
except ImportError:  # CPython
    const = int

# Packet types (private copies: folded into the bytecode, no RAM on the board).
_CONNECT = const(1)
_CONNACK = const(2)
_PUBLISH = const(3)
_PUBACK = const(4)
_PUBREC = const(5)
_PUBREL = const(6)
_PUBCOMP = const(7)
_SUBSCRIBE = const(8)
_SUBACK = const(9)
_UNSUBSCRIBE = const(10)
_UNSUBACK = const(11)
_PINGREQ = const(12)
_PINGRESP = const(13)
_DISCONNECT = const(14)
_AUTH = const(15)
_MQTT5 = const(5)


if sys.implementation.name == "micropython":

    def _fields(record):
        """Names of the record's fields: its instance dict, free to read here."""
        return record.__dict__

else:

    def _fields(record):
        """Names of the record's fields: its constructor's parameters.

        CPython-only, chosen at import: once an instance's ``__dict__`` has
        been read, CPython 3.11 no longer specializes reads of its attributes,
        and every later ``encode()`` of a packet that was compared or printed
        took ~30% longer. MicroPython has no ``__code__`` and no such cost.
        """
        code = getattr(type(record).__init__, "__code__", None)  # None: object.__init__
        return code.co_varnames[1 : code.co_argcount] if code else ()


class _Record:
    """Equality and repr from the fields the constructor sets, for tests and logs."""

    def __eq__(self, other):
        if type(self) is not type(other):
            return False
        for k in _fields(self):
            x = getattr(self, k)
            y = getattr(other, k, None)
            if x != y and not (k == "properties" and not x and not y):
                return False
        return True

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "%s(%s)" % (
            type(self).__name__,
            ", ".join(
                "%s=%r" % (k, getattr(self, k))
                for k in sorted(_fields(self))
                if getattr(self, k) is not None
            ),
        )


class Packet(_Record):
    """Base of all control packets; ``type`` is the packet type number."""

    type = 0


class Will(_Record):
    """The Will Message carried in CONNECT."""

    def __init__(self, topic, payload=b"", qos=0, retain=False, properties=None):
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties


class Connect(Packet):
    type = _CONNECT

    def __init__(
        self,
        client_id="",
        clean_start=True,
        keep_alive=60,
        username=None,
        password=None,
        will=None,
        protocol_level=_MQTT5,
        properties=None,
    ):
        self.client_id = client_id
        self.clean_start = clean_start
        self.keep_alive = keep_alive
        self.username = username
        self.password = password
        self.will = will
        self.protocol_level = protocol_level
        self.properties = properties


class ConnAck(Packet):
    """``reason_code`` is the 5.0 reason code, or the 3.1.1 return code (0-5)."""

    type = _CONNACK

    def __init__(self, session_present=False, reason_code=0, properties=None):
        self.session_present = session_present
        self.reason_code = reason_code
        self.properties = properties


class Publish(Packet):
    type = _PUBLISH

    def __init__(
        self, topic, payload=b"", qos=0, retain=False, dup=False, packet_id=None, properties=None
    ):
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packet_id = packet_id
        self.properties = properties


class _Ack(Packet):
    """PUBACK, PUBREC, PUBREL and PUBCOMP share one shape."""

    def __init__(self, packet_id, reason_code=0, properties=None):
        self.packet_id = packet_id
        self.reason_code = reason_code
        self.properties = properties


class PubAck(_Ack):
    type = _PUBACK


class PubRec(_Ack):
    type = _PUBREC


class PubRel(_Ack):
    type = _PUBREL


class PubComp(_Ack):
    type = _PUBCOMP


class Subscription(_Record):
    """One topic filter of a SUBSCRIBE with its options (3.8.3.1)."""

    def __init__(
        self, topic_filter, qos=0, no_local=False, retain_as_published=False, retain_handling=0
    ):
        self.topic_filter = topic_filter
        self.qos = qos
        self.no_local = no_local
        self.retain_as_published = retain_as_published
        self.retain_handling = retain_handling


class Subscribe(Packet):
    type = _SUBSCRIBE

    def __init__(self, packet_id, subscriptions, properties=None):
        self.packet_id = packet_id
        self.subscriptions = subscriptions
        self.properties = properties


class SubAck(Packet):
    type = _SUBACK

    def __init__(self, packet_id, reason_codes, properties=None):
        self.packet_id = packet_id
        self.reason_codes = reason_codes
        self.properties = properties


class Unsubscribe(Packet):
    type = _UNSUBSCRIBE

    def __init__(self, packet_id, topic_filters, properties=None):
        self.packet_id = packet_id
        self.topic_filters = topic_filters
        self.properties = properties


class UnsubAck(Packet):
    """In 3.1.1 UNSUBACK carries no reason codes; ``reason_codes`` is then empty."""

    type = _UNSUBACK

    def __init__(self, packet_id, reason_codes=None, properties=None):
        self.packet_id = packet_id
        self.reason_codes = [] if reason_codes is None else reason_codes
        self.properties = properties


class PingReq(Packet):
    type = _PINGREQ


class PingResp(Packet):
    type = _PINGRESP


class Disconnect(Packet):
    type = _DISCONNECT

    def __init__(self, reason_code=0, properties=None):
        self.reason_code = reason_code
        self.properties = properties


class Auth(Packet):
    """Enhanced authentication exchange (MQTT 5.0 only)."""

    type = _AUTH

    def __init__(self, reason_code=0, properties=None):
        self.reason_code = reason_code
        self.properties = properties
