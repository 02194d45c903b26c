"""One exception family, split by who is at fault (as h11 does).

Every error carries ``reason_code``: the MQTT 5.0 reason code to answer with
(in a DISCONNECT or an ack), e.g. 0x81 Malformed Packet, 0x82 Protocol Error,
0x95 Packet too large.
"""


class MQTTError(Exception):
    """Base of every error raised by ``fieldline.mqtt``. ``reason_code``: the
    MQTT 5.0 reason code to answer with. ``message``: a text, or (raised by
    this package) a detail number, alone or in a tuple with the values it
    shows; ``str()`` of the error turns it into text from ``_names``, which
    loads only then, so the board keeps no error texts in RAM."""

    def __init__(self, reason_code, message=""):
        super().__init__(reason_code, message)
        self.reason_code = reason_code
        self.message = message

    def __str__(self):
        from ._names import describe

        return describe(self.reason_code, self.message)


class RemoteProtocolError(MQTTError):
    """The peer broke the protocol: its bytes or its packet sequence are invalid."""


class LocalProtocolError(MQTTError):
    """This side misused the API: the packet or call would break the protocol."""
