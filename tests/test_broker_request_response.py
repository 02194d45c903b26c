"""Request/response (MQTT 5.0 4.10): a Response Topic with a wildcard is refused wherever it
comes from (MQTT-3.3.2-14), and the Response Topic and Correlation Data reach the
subscriber unchanged. Over real sockets, against our broker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from test_broker import Raw, read_packet, running, send_connect
from test_broker_sessions import wait_for

from fieldline.broker import BrokerThread
from fieldline.mqtt import (
    ConnAck,
    Connect,
    Disconnect,
    LocalProtocolError,
    Publish,
    Subscription,
    Will,
    encode,
)

# On uvloop (the default when installed) and on asyncio's own loop.
pytestmark = pytest.mark.usefixtures("both_event_loops")


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    yield from running()


# -- Response Topic with wildcards (MQTT-3.3.2-14) ---------------------------------------


@pytest.mark.parametrize("qos", [0, 1])
@pytest.mark.parametrize("response_topic", ["reply/+", "reply/#"])
def test_publish_with_a_wildcard_response_topic_is_a_protocol_error(
    broker: BrokerThread, qos: int, response_topic: str
) -> None:
    # MQTT-3.3.2-14: the Response Topic MUST NOT contain wildcards. Our codec does
    # not check it (raw bytes here: our client would not send it); the broker
    # answers DISCONNECT 0x82 Protocol Error, as Mosquitto does
    # (mosquitto_property_check_all), and routes nothing.
    sub = Raw(broker.port, "sub")
    sub.subscribe(Subscription("req/#", 1))
    sock = send_connect(broker.port, Connect("pub", protocol_level=5))
    with sock:
        assert read_packet(sock).reason_code == 0
        props = {"response_topic": response_topic, "correlation_data": b"1"}
        bad = Publish("req/x", b"q", qos, packet_id=qos or None, properties=props)
        sock.sendall(encode(bad, 5))
        answer = read_packet(sock)
        assert isinstance(answer, Disconnect) and answer.reason_code == 0x82
        assert read_packet(sock) is None  # then closed
    assert sub.quiet()
    sub.close()


def test_will_with_a_wildcard_response_topic_is_refused(broker: BrokerThread) -> None:
    # The Will Properties hold a Response Topic as a PUBLISH does (3.1.3.2.5,
    # MQTT-3.3.2-14): CONNACK 0x82 Protocol Error, the connection closed, and no
    # Will is ever published.
    sub = Raw(broker.port, "sub")
    sub.subscribe(Subscription("will/#", 1))
    will = Will("will/x", b"gone", 1, properties={"response_topic": "reply/#"})
    with send_connect(broker.port, Connect("w", will=will, protocol_level=5)) as sock:
        connack = read_packet(sock)
        assert isinstance(connack, ConnAck) and connack.reason_code == 0x82
        assert read_packet(sock) is None
    assert sub.quiet()
    assert broker.call(broker.broker.stats)["sessions"] == 1  # sub's only
    sub.close()


def test_broker_publish_refuses_a_wildcard_response_topic(broker: BrokerThread) -> None:
    with pytest.raises(LocalProtocolError):
        broker.call(broker.broker.publish, "req/x", b"q", 1, False, {"response_topic": "reply/+"})


# Request/Response (4.10): Response Topic and Correlation Data reach the subscriber
# unchanged (MQTT-3.3.2-15, -16), whichever way the message went.

REQUEST = {
    "response_topic": "reply/to/me",
    "correlation_data": bytes(range(256)),  # binary, not UTF-8
    "payload_format_indicator": 0,
    "user_property": [("k", "v"), ("k", "v2")],
}


def test_response_topic_and_correlation_data_are_forwarded_unchanged(
    broker: BrokerThread,
) -> None:
    def same(m: Any) -> None:
        assert {k: m.properties.get(k) for k in REQUEST} == REQUEST, m

    keep = {"session_expiry_interval": 60}
    away = Raw(broker.port, "away", clean_start=False, properties=keep)
    away.subscribe(Subscription("req/#", 1))
    away.close()
    wait_for(broker, "connected", 0)
    live = Raw(broker.port, "live")
    live.subscribe(Subscription("req/#", 1))
    pub = Raw(broker.port, "pub", will=Will("req/will", b"w", 1, properties=REQUEST))
    assert pub.publish("req/live", b"q", 1, properties=REQUEST).reason_code == 0
    assert pub.publish("req/kept", b"r", 1, retain=True, properties=REQUEST).reason_code == 0
    pub.close()  # its Will
    for m in live.messages(3):  # live, retained (as it is routed), the Will
        same(m)
    late = Raw(broker.port, "late")
    late.subscribe(Subscription("req/kept", 1))
    same(late.messages(1)[0])  # the retained message, on subscribe
    back = Raw(broker.port, "away", clean_start=False, properties=keep)
    for m in back.messages(3):  # queued while it was away
        same(m)
    for c in (live, late, back):
        c.close()
