"""The session's conformance fixes, against a real Mosquitto: the sans-IO core
on a raw socket (``Wire`` from test_interop_mosquitto), with the test choosing
which of our packets reach the broker, to make the orders and losses that a
flaky network makes."""

from __future__ import annotations

import queue
import socket
import threading
import time
from typing import Any

import paho.mqtt.client as paho
import pytest
from test_interop_mosquitto import VERSIONS, Wire, completions, messages

from fieldline.mqtt import (
    CLIENT,
    MQTT5,
    SERVER,
    Connect,
    Parser,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    RemoteProtocolError,
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


class SessionServer:
    """One connection served by a Session(SERVER) on a loopback socket,
    accepting with ``properties``: the server core facing a client we did
    not write. ``errors`` gets the RemoteProtocolError that ended it."""

    def __init__(self, properties: dict[str, Any]) -> None:
        self.properties = properties
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.errors: list[RemoteProtocolError] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(5)
        conn, _ = self.listener.accept()
        session = Session(SERVER)
        with conn, self.listener:
            conn.settimeout(5)
            while True:
                data = conn.recv(65536)
                session.receive_data(data, time.monotonic())
                try:
                    while (event := session.next_event()) is not None:
                        if isinstance(event, Connect):
                            session.accept(self.properties)
                except RemoteProtocolError as e:
                    self.errors.append(e)
                conn.sendall(session.data_to_send())
                if not data or self.errors:
                    return


@pytest.mark.parametrize(
    ("announced", "qos", "retain", "code"),
    [
        ({"maximum_qos": 0}, 1, False, 0x9B),
        ({"maximum_qos": 1}, 2, False, 0x9B),
        ({"retain_available": 0}, 1, True, 0x9A),
    ],
)
def test_paho_publishing_beyond_what_accept_announced(
    announced: dict[str, Any], qos: int, retain: bool, code: int
) -> None:
    """paho-mqtt does not check the server's Maximum QoS or Retain Available:
    it publishes beyond what accept() announced, and gets DISCONNECT 0x9B
    (QoS not supported) or 0x9A (Retain not supported), not an ack."""
    server = SessionServer(announced)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, "paho-limits", protocol=paho.MQTTv5)
    outcome: queue.Queue[Any] = queue.Queue()
    client.on_connect = lambda c, u, f, rc, props: outcome.put(props.json())
    client.on_disconnect = lambda c, u, f, rc, props: outcome.put(("disconnect", rc.value))
    client.on_publish = lambda c, u, mid, rc, props: outcome.put(("acked", rc.value))
    client.reconnect_delay_set(0, 0)  # else loop_stop() waits out a 1 s delay
    client.connect("127.0.0.1", server.port, keepalive=30)
    client.loop_start()
    try:
        connack = outcome.get(timeout=5)
        announced_as = {"maximum_qos": "MaximumQoS", "retain_available": "RetainAvailable"}
        for name, value in announced.items():
            assert connack[announced_as[name]] == value
        client.publish("limits/t", b"x", qos=qos, retain=retain)
        assert outcome.get(timeout=5) == ("disconnect", code)
    finally:
        client.disconnect()
        client.loop_stop()
    server.thread.join(5)
    assert [e.reason_code for e in server.errors] == [code]
