"""Names for reason codes and packet types, and the texts of error details:
loaded only when something is printed, so the board keeps none of it in RAM
until then."""

PACKET_NAMES = (
    None,
    "CONNECT",
    "CONNACK",
    "PUBLISH",
    "PUBACK",
    "PUBREC",
    "PUBREL",
    "PUBCOMP",
    "SUBSCRIBE",
    "SUBACK",
    "UNSUBSCRIBE",
    "UNSUBACK",
    "PINGREQ",
    "PINGRESP",
    "DISCONNECT",
    "AUTH",
)

REASON_NAMES = {
    0x00: "Success",
    0x01: "Granted QoS 1",
    0x02: "Granted QoS 2",
    0x04: "Disconnect with Will Message",
    0x10: "No matching subscribers",
    0x11: "No subscription existed",
    0x18: "Continue authentication",
    0x19: "Re-authenticate",
    0x80: "Unspecified error",
    0x81: "Malformed Packet",
    0x82: "Protocol Error",
    0x83: "Implementation specific error",
    0x84: "Unsupported Protocol Version",
    0x85: "Client Identifier not valid",
    0x86: "Bad User Name or Password",
    0x87: "Not authorized",
    0x88: "Server unavailable",
    0x89: "Server busy",
    0x8A: "Banned",
    0x8B: "Server shutting down",
    0x8C: "Bad authentication method",
    0x8D: "Keep Alive timeout",
    0x8E: "Session taken over",
    0x8F: "Topic Filter invalid",
    0x90: "Topic Name invalid",
    0x91: "Packet Identifier in use",
    0x92: "Packet Identifier not found",
    0x93: "Receive Maximum exceeded",
    0x94: "Topic Alias invalid",
    0x95: "Packet too large",
    0x96: "Message rate too high",
    0x97: "Quota exceeded",
    0x98: "Administrative action",
    0x99: "Payload format invalid",
    0x9A: "Retain not supported",
    0x9B: "QoS not supported",
    0x9C: "Use another server",
    0x9D: "Server moved",
    0x9E: "Shared Subscriptions not supported",
    0x9F: "Connection rate exceeded",
    0xA0: "Maximum connect time",
    0xA1: "Subscription Identifiers not supported",
    0xA2: "Wildcard Subscriptions not supported",
}

V3_CONNACK_NAMES = (
    "Connection accepted",
    "Unacceptable protocol version",
    "Identifier rejected",
    "Server unavailable",
    "Bad user name or password",
    "Not authorized",
)


def reason_name(code):
    """Spec name of a 5.0 reason code, or its hex value if unknown."""
    return REASON_NAMES.get(code) or "0x%02X" % code


# Error details, one a line: the name, then the text. A module raises
# ``MQTTError(code, _E_<name>)`` or ``MQTTError(code, (_E_<name>, value, ...))``
# with a private const() copy of the line number (from 1), so no text stays in
# RAM; str() of the error builds the text here. One string rather than a
# tuple: a third of the RAM once loaded. Append only: the numbers are the lines.
DETAILS = """\
VARINT_NOT_MINIMAL variable byte integer not minimally encoded
VARINT_TOO_LONG variable byte integer longer than 4 bytes
STRING_PAST_END string runs past the end of the packet
BAD_UTF8 invalid UTF-8 string
NUL_IN_STRING U+0000 in a UTF-8 string
BINARY_PAST_END binary data runs past the end of the packet
BAD_STRING string too long or holds U+0000 or a surrogate
BINARY_TOO_LONG binary data longer than 65535 bytes
PROPS_NEED_V5 properties need MQTT 5.0
BAD_PACKET_ID packet id must be 1..65535
OVER_256MB packet larger than 256 MB
BAD_QOS QoS must be 0, 1 or 2
BAD_LEVEL protocol level must be 4 or 5
PASSWORD_NEEDS_USER 3.1.1 needs a user name with a password
BAD_KEEP_ALIVE keep_alive must be 0..65535
BAD_PAYLOAD payload must be bytes or str
DUP_ON_QOS0 DUP must be 0 for QoS 0
V3_ACK_NO_REASON MQTT 3.1.1 acks carry no reason code
SUBSCRIBE_EMPTY SUBSCRIBE needs a topic filter
BAD_RETAIN_HANDLING retain_handling must be 0, 1 or 2
OPTIONS_NEED_V5 subscription options need MQTT 5.0
SUBACK_EMPTY SUBACK needs a reason code
UNSUBSCRIBE_EMPTY UNSUBSCRIBE needs a topic filter
UNSUBACK_EMPTY UNSUBACK needs a reason code
V3_UNSUBACK_NO_REASON MQTT 3.1.1 UNSUBACK carries no reason codes
AUTH_NEEDS_V5 AUTH needs MQTT 5.0
V3_DISCONNECT_EMPTY MQTT 3.1.1 DISCONNECT is empty
PACKET_ID_0 packet id 0
CONNECT_RESERVED_FLAG CONNECT reserved flag set
WILL_QOS_3 will QoS 3
BAD_WILL_TOPIC invalid will topic
WILL_FLAGS_WITHOUT_WILL will QoS or retain set without a will
PASSWORD_WITHOUT_USER password without user name
BYTES_AFTER_CONNECT bytes after the CONNECT payload
CONNACK_RESERVED_FLAGS CONNACK reserved flags set
BYTES_AFTER_CONNACK bytes after the CONNACK
PUBLISH_QOS_3 PUBLISH with QoS 3
WILDCARD_IN_PUBLISH wildcard in PUBLISH topic
DUP_SET_ON_QOS0 DUP set on QoS 0
PUBLISH_TOO_SHORT PUBLISH shorter than its fields
EMPTY_TOPIC_NO_ALIAS empty topic without topic alias
BYTES_AFTER_PROPS bytes after the properties
WRONG_LENGTH wrong remaining length
RESERVED_OPTION_BITS reserved subscription option bits set
SUBSCRIPTION_QOS_3 subscription QoS 3
RETAIN_HANDLING_3 retain handling 3
NO_LOCAL_SHARED no local on a shared subscription
SUBSCRIBE_NO_FILTER SUBSCRIBE without topic filter
NO_REASON_CODES no reason codes
UNSUBSCRIBE_NO_FILTER UNSUBSCRIBE without topic filter
PING_WITH_BODY PINGREQ/PINGRESP with a body
AUTH_IN_V3 AUTH in MQTT 3.1.1
DISCONNECT_WITH_BODY DISCONNECT with a body
LENGTH_NOT_MINIMAL remaining length not minimally encoded
LENGTH_TOO_LONG remaining length longer than 4 bytes
PACKET_TYPE_0 reserved packet type 0
BAD_FLAGS invalid fixed header flags
FIRST_NOT_CONNECT first packet is not CONNECT
PACKET_TOO_SHORT packet shorter than its fields
NOT_ONE_PACKET not exactly one packet
RECEIVE_BEFORE_CONNECT receive_data() before connect()
KEEP_ALIVE_EXPIRED nothing received within the keepalive time
EMPTY_ID_NEEDS_CLEAN empty client id needs clean session
SERVER_MAX_QOS QoS above the server's Maximum QoS
NO_RETAIN the server has no retained messages
QOS0_NEEDS_CONNECTION QoS 0 publish needs a connection
OVER_PEER_MAX larger than the peer's Maximum Packet Size
EXPIRY_NOT_ALLOWED Session Expiry Interval not allowed here
PRESENT_WITH_CLEAN Session Present with Clean Start
CONNACK_AUTH_METHOD CONNACK authentication method differs
OVER_MAX_QOS QoS above Maximum QoS
OVER_RECEIVE_MAX Receive Maximum exceeded
PUBACK_FOR_QOS2 PUBACK for a QoS 2 message
ACK_QOS_MISMATCH acknowledgement does not match the QoS
ACK_NOT_SENT acknowledgement for a message not sent
SUBACK_UNKNOWN_ID SUBACK/UNSUBACK for an unknown packet id
REASON_CODE_COUNT wrong number of reason codes
EXPIRY_WAS_0 Session Expiry Interval was 0 in CONNECT
IDS_EXHAUSTED all 65535 packet identifiers are in use
AUTH_METHOD AUTH method missing or different
AUTH_NOT_NOW AUTH not allowed now
EMPTY_ID_PASS_ASSIGNED empty client id: pass assigned_client_id
NO_SUCH_REQUEST no such request, or wrong number of reason codes
PROPS_PAST_END property length exceeds packet
ONE_SUBSCRIPTION_ID one subscription_identifier allowed
TOPIC_EMPTY topic is empty
TOPIC_NUL topic contains U+0000
TOPIC_TOO_LONG topic longer than 65535 UTF-8 bytes
WILDCARD_IN_NAME wildcard in topic name
EMPTY_SHARE_NAME empty share name
WILDCARD_IN_SHARE wildcard in share name
SHARE_WITHOUT_FILTER no topic filter after share name
BAD_HASH '#' must be a whole last level
BAD_PLUS '+' must be a whole level
NOT_A_STRING %r is not a valid string
BAD_TOPIC_NAME invalid topic name %r
BAD_REASON_CODE reason code 0x%02X not valid here
CANNOT_ENCODE cannot encode %r: %s
BAD_PROTOCOL protocol %r level %d
CONNACK_CODE CONNACK reason or return code 0x%02X
OVER_MAX_SIZE packet of %d bytes
UNEXPECTED_TYPE unexpected packet type %d
NOT_IN_STATE not allowed in state %d
ALIAS_RANGE topic alias %d out of range
ALIAS_NOT_SET topic alias %d not set
AUTH_OUT_OF_TURN AUTH 0x%02X out of turn
PROP_NOT_ALLOWED property 0x%02X not allowed here
PROP_VALUE %s = %r is not allowed
PROP_ZERO %s must not be 0
PROP_TWICE %s included more than once
UNKNOWN_PROP unknown property %r
PROP_PLACE property %s not allowed here
PROP_TOO_LONG %s is longer than 65535 bytes
PROP_RANGE %s = %r out of range
TOPIC_NOT_STR topic must be str, not %s
WILL_QOS_OVER_MAX will QoS above the server's Maximum QoS
AUTH_DATA_NO_METHOD Authentication Data without Authentication Method
HELD_OVER_MAX %d bytes wait unread, over the Maximum Packet Size
REJECT_WITH_SUCCESS reject() needs a reason code of 0x80 or more, not 0x%02X
ID_IN_USE packet id %d is in use
NOT_RELEASABLE no QoS 2 message %d waits to be sent
ALIAS_ONLY a Topic Alias without its topic cannot be resent on another connection or auto-aliased
"""


def detail(n):
    """The text of error detail number ``n``."""
    start = 0
    for _ in range(n - 1):
        start = DETAILS.index("\n", start) + 1
    return DETAILS[DETAILS.index(" ", start) + 1 : DETAILS.index("\n", start)]


def describe(code, message):
    """The text of an error with reason ``code`` and ``message``: a str, a
    detail number, or a tuple of a detail number and the values it shows."""
    if type(message) is int:
        message = (message,)
    if type(message) is tuple:
        text = detail(message[0])
        args = message[1:]
        try:
            text = text % args
        except (TypeError, ValueError):
            text += ": " + ", ".join(repr(a) for a in args)
        message = text
    return "%s (0x%02X): %s" % (reason_name(code), code, message)
