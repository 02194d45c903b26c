"""Sans-IO MQTT 3.1.1 and 5.0: codec, topic rules and session state machine.

Runs on MicroPython and CPython. Nothing here opens a socket or reads a clock:
callers feed bytes and ``now``.

Names load on first use (as MicroPython's own ``asyncio`` package does), so a
board pays RAM only for the parts it touches: a device that never matches
topics does not load the topic tree, the MQTT 5.0 property code loads only
when a 5.0 packet carries properties, and the named numbers (packet types,
reason codes: ``PUBLISH``, ``PACKET_TOO_LARGE``, ...) load from ``_const``
only when one is asked for. The modules themselves use private ``const()``
copies, which the board folds into the bytecode.
"""

# Protocol levels: nearly every caller needs one, so they cost no import.
MQTT311 = 4
MQTT5 = 5

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
    "_client_base": "BLOCK RAISE ConnectionLost ConnectionRefused MQTTTimeout NotAuthorized "
    "PacketTooLarge PublishRefused QueueFull",
    "_client": "Client",
    "_async_client": "AsyncClient",
}


def __getattr__(name):
    if name[:1] == "_":
        if name == "__all__":
            return _all()
        if name[:2] != "__":
            # A private submodule: MicroPython asks here for `from . import _props`.
            try:
                return __import__(__name__ + "." + name, None, None, [name])
            except ImportError:
                raise AttributeError(name) from None
        raise AttributeError(name)
    for module in _LAZY:
        if name in _LAZY[module].split():
            break
    else:
        if not name.isupper():
            raise AttributeError(name)
        module = "_const"  # a named number
    try:
        value = getattr(__import__(__name__ + "." + module, None, None, [name]), name)
    except AttributeError:
        raise AttributeError(name) from None
    globals()[name] = value
    return value


def _all():
    # __all__, built when asked for (`from fieldline.mqtt import *`).
    numbers = __import__(__name__ + "._const", None, None, ["_"]).__dict__
    return [n for n in numbers if n.isupper()] + " ".join(_LAZY.values()).split()


def __dir__():
    return sorted(set(list(globals()) + _all()))
