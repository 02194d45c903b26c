"""Numbers of the protocol: packet types, protocol levels, QoS and reason codes.

Plain ints laid out like Starlette's ``status.py``: the public names of
``fieldline.mqtt`` (``fieldline.mqtt.PUBLISH``, ``PACKET_TOO_LARGE``, ...).
This module loads only when an application asks for one of them; the modules
of the package never import it. Each keeps private ``_NAME = const(...)``
copies of the values it uses instead, which MicroPython folds into the
bytecode at no RAM cost, where an imported name costs RAM in every module
that imports it (tests check the copies against this table). Names for
``repr`` and error messages live in ``_names``.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


# Protocol levels (the CONNECT "Protocol Level" byte).
MQTT311 = const(4)
MQTT5 = const(5)

# Control packet types (high nibble of the fixed header).
CONNECT = const(1)
CONNACK = const(2)
PUBLISH = const(3)
PUBACK = const(4)
PUBREC = const(5)
PUBREL = const(6)
PUBCOMP = const(7)
SUBSCRIBE = const(8)
SUBACK = const(9)
UNSUBSCRIBE = const(10)
UNSUBACK = const(11)
PINGREQ = const(12)
PINGRESP = const(13)
DISCONNECT = const(14)
AUTH = const(15)

# Retain handling subscription option (MQTT 5.0, 3.8.3.1).
SEND_RETAINED = const(0)
SEND_RETAINED_IF_NEW = const(1)
DONT_SEND_RETAINED = const(2)

# Largest remaining length a variable byte integer can carry (1.5.5).
MAX_REMAINING_LENGTH = const(268435455)
# Largest whole packet: 1 type byte + 4 length bytes + MAX_REMAINING_LENGTH.
MAX_PACKET_SIZE = const(268435460)

# MQTT 5.0 reason codes (2.4). Several share a value; each keeps its spec name.
SUCCESS = const(0x00)
NORMAL_DISCONNECTION = const(0x00)
GRANTED_QOS_0 = const(0x00)
GRANTED_QOS_1 = const(0x01)
GRANTED_QOS_2 = const(0x02)
DISCONNECT_WITH_WILL_MESSAGE = const(0x04)
NO_MATCHING_SUBSCRIBERS = const(0x10)
NO_SUBSCRIPTION_EXISTED = const(0x11)
CONTINUE_AUTHENTICATION = const(0x18)
RE_AUTHENTICATE = const(0x19)
UNSPECIFIED_ERROR = const(0x80)
MALFORMED_PACKET = const(0x81)
PROTOCOL_ERROR = const(0x82)
IMPLEMENTATION_SPECIFIC_ERROR = const(0x83)
UNSUPPORTED_PROTOCOL_VERSION = const(0x84)
CLIENT_IDENTIFIER_NOT_VALID = const(0x85)
BAD_USER_NAME_OR_PASSWORD = const(0x86)
NOT_AUTHORIZED = const(0x87)
SERVER_UNAVAILABLE = const(0x88)
SERVER_BUSY = const(0x89)
BANNED = const(0x8A)
SERVER_SHUTTING_DOWN = const(0x8B)
BAD_AUTHENTICATION_METHOD = const(0x8C)
KEEP_ALIVE_TIMEOUT = const(0x8D)
SESSION_TAKEN_OVER = const(0x8E)
TOPIC_FILTER_INVALID = const(0x8F)
TOPIC_NAME_INVALID = const(0x90)
PACKET_IDENTIFIER_IN_USE = const(0x91)
PACKET_IDENTIFIER_NOT_FOUND = const(0x92)
RECEIVE_MAXIMUM_EXCEEDED = const(0x93)
TOPIC_ALIAS_INVALID = const(0x94)
PACKET_TOO_LARGE = const(0x95)
MESSAGE_RATE_TOO_HIGH = const(0x96)
QUOTA_EXCEEDED = const(0x97)
ADMINISTRATIVE_ACTION = const(0x98)
PAYLOAD_FORMAT_INVALID = const(0x99)
RETAIN_NOT_SUPPORTED = const(0x9A)
QOS_NOT_SUPPORTED = const(0x9B)
USE_ANOTHER_SERVER = const(0x9C)
SERVER_MOVED = const(0x9D)
SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = const(0x9E)
CONNECTION_RATE_EXCEEDED = const(0x9F)
MAXIMUM_CONNECT_TIME = const(0xA0)
SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = const(0xA1)
WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = const(0xA2)

# MQTT 3.1.1 CONNACK return codes (3.2.2.3) and the SUBACK failure code.
V3_ACCEPTED = const(0)
V3_UNACCEPTABLE_PROTOCOL_VERSION = const(1)
V3_IDENTIFIER_REJECTED = const(2)
V3_SERVER_UNAVAILABLE = const(3)
V3_BAD_USER_NAME_OR_PASSWORD = const(4)
V3_NOT_AUTHORIZED = const(5)
V3_SUBACK_FAILURE = const(0x80)
