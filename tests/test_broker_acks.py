"""The broker acknowledges a received QoS 1/2 PUBLISH itself, once the message is routed
(its sessions are ``manual_ack``): 5.0 publishers hear 0x10 No matching subscribers when
no subscription matched (3.4.2.1), 3.1.1 ones a plain ack; QoS 2 stays exactly once."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from test_broker import WAIT, Raw, recv_exact, running
from test_broker_sessions import wait_for

from fieldline.broker import BrokerThread
from fieldline.mqtt import (
    Client,
    ConnAck,
    Connect,
    Disconnect,
    Parser,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Subscription,
    encode,
)

NO_MATCHING_SUBSCRIBERS = 0x10


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    yield from running()


class Wire:
    """A 5.0 client written packet by packet, to see every ack the broker sends."""

    def __init__(self, port: int, client_id: str, clean_start: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.parser = Parser(5)
        props = {"session_expiry_interval": 60}
        self.send(Connect(client_id, clean_start, properties=props))
        self.connack = self.read()
        assert isinstance(self.connack, ConnAck) and self.connack.reason_code == 0

    def send(self, packet: Any) -> None:
        self.sock.sendall(encode(packet, 5))

    def read(self) -> Any:
        while (p := self.parser.next_packet()) is None:
            data = self.sock.recv(65536)
            assert data, "connection closed"
            self.parser.feed(data)
        return p

    def close(self) -> None:
        self.sock.close()


def test_v5_puback_no_matching_subscribers_then_success(broker: BrokerThread) -> None:
    with Client(broker.host, broker.port, client_id="pub", version=5) as pub:
        ack = pub.publish("acks/x", b"nobody", qos=1)
        assert isinstance(ack, PubAck) and ack.reason_code == NO_MATCHING_SUBSCRIBERS
        with Client(broker.host, broker.port, client_id="sub", version=5) as sub:
            sub.subscribe("acks/#", qos=1)
            ack = pub.publish("acks/x", b"someone", qos=1)
            assert isinstance(ack, PubAck) and ack.reason_code == 0
            assert sub.recv(timeout=WAIT).payload == b"someone"
        wait_for(broker, "subscriptions", 0)  # the subscriber's session ended with it
        # A retained message with no subscriber is kept, and still has none.
        ack = pub.publish("acks/r", b"kept", qos=1, retain=True)
        assert ack.reason_code == NO_MATCHING_SUBSCRIBERS
        assert broker.call(broker.broker.stats)["retained"] == 1


def test_v5_pubrec_no_matching_subscribers_then_success(broker: BrokerThread) -> None:
    pub = Wire(broker.port, "pub")
    pub.send(Publish("acks/x", b"nobody", 2, packet_id=1))
    assert pub.read() == PubRec(1, NO_MATCHING_SUBSCRIBERS)
    pub.send(PubRel(1))  # 0x10 is a success: the exchange goes on
    assert pub.read() == PubComp(1)
    sub = Raw(broker.port, "sub")
    sub.subscribe(Subscription("acks/#", 2))
    pub.send(Publish("acks/x", b"someone", 2, packet_id=2))
    assert pub.read() == PubRec(2)
    pub.send(PubRel(2))
    assert pub.read() == PubComp(2)
    assert [m.payload for m in sub.messages(1)] == [b"someone"]
    pub.close()
    sub.close()


def test_v5_qos2_duplicate_routed_once_with_its_first_answer(broker: BrokerThread) -> None:
    sub = Raw(broker.port, "sub")
    sub.subscribe(Subscription("d", 2))
    pub = Wire(broker.port, "pub")
    pub.send(Publish("d", b"x", 2, packet_id=7))
    assert pub.read() == PubRec(7)
    pub.send(Publish("d", b"x", 2, dup=True, packet_id=7))  # MQTT-4.3.3-9
    assert pub.read() == PubRec(7)
    pub.send(PubRel(7))
    assert pub.read() == PubComp(7)
    assert [m.payload for m in sub.messages(1)] == [b"x"]
    assert sub.quiet()
    pub.close()
    sub.close()


def test_qos2_exactly_once_across_a_takeover(broker: BrokerThread) -> None:
    # The PUBREC went out, then a new connection took the session over before PUBREL:
    # the resend there is answered again and not routed again.
    sub = Raw(broker.port, "sub")
    sub.subscribe(Subscription("d", 2))
    pub = Wire(broker.port, "pub")
    pub.send(Publish("d", b"x", 2, packet_id=3))
    assert pub.read() == PubRec(3)
    again = Wire(broker.port, "pub", clean_start=False)
    assert again.connack.session_present
    assert pub.read() == Disconnect(0x8E)  # MQTT-3.1.4-3
    again.send(Publish("d", b"x", 2, dup=True, packet_id=3))
    assert again.read() == PubRec(3)
    again.send(PubRel(3))
    assert again.read() == PubComp(3)
    assert [m.payload for m in sub.messages(1)] == [b"x"]
    assert sub.quiet()
    again.close()
    pub.close()
    sub.close()


@pytest.mark.parametrize("qos", [1, 2])
def test_v311_acks_carry_no_reason_code(broker: BrokerThread, qos: int) -> None:
    raw = socket.create_connection(("127.0.0.1", broker.port), timeout=WAIT)
    raw.sendall(b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01p")
    assert recv_exact(raw, 4) == b"\x20\x02\x00\x00"
    raw.sendall(bytes([0x30 | qos << 1]) + b"\x07\x00\x03n/a\x00\x05x")  # nobody listens
    ack = b"\x40" if qos == 1 else b"\x50"
    assert recv_exact(raw, 4) == ack + b"\x02\x00\x05"  # PUBACK / PUBREC, no reason code
    raw.close()
