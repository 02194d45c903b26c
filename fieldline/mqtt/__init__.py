"""Sans-IO MQTT 3.1.1 and 5.0: codec, topic rules and session state machine.

Runs on MicroPython and CPython. Nothing here opens a socket or reads a clock:
callers feed bytes and ``now``. The MQTT 5.0 property code loads only when a
5.0 packet with properties is encoded or decoded.
"""

from ._const import *  # noqa: F401,F403
from ._errors import LocalProtocolError, MQTTError, RemoteProtocolError  # noqa: F401
from ._packets import (  # noqa: F401
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
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
from ._codec import Parser, decode, encode  # noqa: F401
from ._topic import (  # noqa: F401
    SubscriptionTree,
    parse_shared,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)
