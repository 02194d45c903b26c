"""The session's conformance fixes, against a real Mosquitto: the sans-IO core
on a raw socket (``Wire`` from test_interop_mosquitto), with the test choosing
which of our packets reach the broker, to make the orders and losses that a
flaky network makes."""

from __future__ import annotations

from typing import Any

import pytest
from test_interop_mosquitto import VERSIONS, Wire, completions, messages

from fieldline.mqtt import (
    CLIENT,
    MQTT5,
    Parser,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Session,
    SubAck,
    Subscription,
    UnsubAck,
    encode,
)


@pytest.fixture
def wire(mosquitto: Any) -> Any:
    made: list[Wire] = []

    def make(version: int, **session: Any) -> Wire:
        w = Wire((mosquitto.host, mosquitto.port), version)
        w.session = Session(CLIENT, version, **session)
        made.append(w)
        return w

    yield make
    for w in made:
        if w.sock is not None:
            w.sock.close()


def send_only(w: Wire, keep: Any) -> list[Any]:
    """Take the bytes queued by ``w``'s session and send only the packets for
    which ``keep(packet)`` is true: the others are lost. Returns all of them."""
    parser = Parser(w.version)
    parser.feed(w.session.data_to_send())
    packets = []
    while (p := parser.next_packet()) is not None:
        packets.append(p)
        if keep(p):
            assert w.sock is not None
            w.sock.sendall(encode(p, w.version))
    return packets


@pytest.mark.parametrize("version", VERSIONS)
def test_pubrels_resent_in_the_order_of_their_pubrecs(wire: Any, version: int) -> None:
    """Mosquitto gets our QoS 2 message b on one connection and a (published
    first) on the next, so its PUBRECs come b, a; both PUBRELs are lost. On
    the third connection we resend PUBREL b, then PUBREL a (MQTT-4.6.0-4):
    Mosquitto completes them in that order and, as it delivers a QoS 2
    message on its PUBREL, the subscriber gets b, then a."""
    sub = wire(version)
    sub.open("order-sub", clean=True)
    sub.session.subscribe([Subscription("order/#", qos=2)])
    sub.wait(SubAck)

    pub = wire(version, released_events=True)
    pub.open("order-pub", clean=True)
    pub.close()
    pub.open("order-pub", clean=False)
    a = pub.session.publish("order/t", b"a", 2)
    b = pub.session.publish("order/t", b"b", 2)
    send_only(pub, lambda p: p.packet_id == b)  # PUBLISH a is lost
    assert pub.wait(PubRec).packet_id == b
    assert send_only(pub, lambda p: False) == [PubRel(b)]  # lost
    pub.drop()

    assert pub.open("order-pub", clean=False).session_present
    resent = send_only(pub, lambda p: isinstance(p, Publish))  # PUBREL b lost again
    assert [(type(p), p.packet_id) for p in resent] == [(Publish, a), (PubRel, b)]
    assert pub.wait(PubRec).packet_id == a
    assert send_only(pub, lambda p: False) == [PubRel(a)]  # lost
    pub.drop()

    assert pub.open("order-pub", clean=False).session_present
    assert [e.packet_id for e in completions(pub, 2)] == [b, a]
    assert pub.session.inflight == 0
    assert [m.payload for m in messages(sub, 2)] == [b"b", b"a"]
    pub.close()
    sub.close()


def test_no_problem_information_from_mosquitto(wire: Any) -> None:
    """A client that sends Request Problem Information 0 refuses a Reason
    String or User Property on acks (MQTT-3.1.2-29; test_session_conformance
    has the refusals): Mosquitto sends none, so every exchange completes,
    QoS 2 both ways included (PUBREC, PUBREL, PUBCOMP), with the guard on."""
    c = wire(MQTT5)
    c.open("quiet", clean=True, request_problem_information=0)
    c.session.subscribe([Subscription("quiet/#", qos=2)])
    assert c.wait(SubAck).reason_codes == [2]
    for qos in (1, 2):
        pid = c.session.publish("quiet/t", b"%d" % qos, qos)
        got = {type(e): e for e in (c.wait(object), c.wait(object))}  # in either order
        assert got[PubAck if qos == 1 else PubComp].packet_id == pid
        assert got[Publish].payload == b"%d" % qos
    c.session.unsubscribe("quiet/#")
    c.wait(UnsubAck)
    c.close()
