"""Sans-IO MQTT 3.1.1 and 5.0: codec, topic rules and session state machine.

Runs on MicroPython and CPython. Nothing here opens a socket or reads a clock:
callers feed bytes and ``now``.

Names load on first use (as MicroPython's own ``asyncio`` package does), so a
board pays RAM only for the parts it touches: a device that never matches
topics does not load the topic tree, and the MQTT 5.0 property code loads
only when a 5.0 packet carries properties.
"""

from ._const import *  # noqa: F401,F403

_PACKETS = (
    "Auth ConnAck Connect Disconnect Packet PingReq PingResp PubAck PubComp Publish PubRec "
    "PubRel SubAck Subscribe Subscription UnsubAck Unsubscribe Will"
)
_LAZY = {
    "_errors": "LocalProtocolError MQTTError RemoteProtocolError",
    "_packets": _PACKETS,
    "_codec": "Parser decode encode",
    "_topic": "SubscriptionTree parse_shared topic_matches validate_topic_filter "
    "validate_topic_name",
    "_session": "Session CLIENT SERVER",
}


__all__ = [n for n in globals() if n[0] != "_"] + " ".join(_LAZY.values()).split()


def __getattr__(name):
    if name[:1] == "_" and name[:2] != "__":
        # A private submodule: MicroPython asks here for `from . import _props`.
        try:
            return __import__(__name__ + "." + name, None, None, [name])
        except ImportError:
            raise AttributeError(name) from None
    for module in _LAZY:
        if name in _LAZY[module].split():
            value = getattr(__import__(__name__ + "." + module, None, None, [name]), name)
            globals()[name] = value
            return value
    raise AttributeError(name)


def __dir__():
    return sorted(set(list(globals()) + __all__))
