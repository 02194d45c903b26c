"""The sans-IO core, driven over a raw socket, against a real Mosquitto.

A few lines of socket code feed the Session (no client library in between):
this is what the blocking and asyncio clients build on, checked byte for byte
against a broker we did not write, in MQTT 3.1.1 and 5.0.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from fieldline.mqtt import (
    CLIENT,
    MQTT5,
    MQTT311,
    PACKET_TOO_LARGE,
    TOPIC_ALIAS_INVALID,
    ConnAck,
    Connect,
    LocalProtocolError,
    Parser,
    PubAck,
    PubComp,
    Publish,
    Session,
    SubAck,
    Subscription,
    Will,
)
from fieldline.mqtt._session import CLOSED

VERSIONS = [pytest.param(MQTT311, id="3.1.1"), pytest.param(MQTT5, id="5.0")]


class Wire:
    """A Session on a TCP socket: the thinnest possible adapter."""

    def __init__(self, address: tuple[str, int], version: int) -> None:
        self.address = address
        self.version = version
        self.session = Session(CLIENT, version)
        self.sock: socket.socket | None = None
        self.events: list[Any] = []  # events read while waiting for another kind

    def open(self, client_id: str, clean: bool, will: Will | None = None, **props: Any) -> ConnAck:
        self.sock = socket.create_connection(self.address, timeout=5)
        properties = props or None
        if self.version == MQTT5 and not clean:
            properties = {"session_expiry_interval": 300, **(properties or {})}
        self.session.connect(
            Connect(
                client_id, clean, 30, will=will, protocol_level=self.version, properties=properties
            ),
            time.monotonic(),
        )
        event = self.wait(ConnAck)
        assert event.reason_code == 0, event
        return event

    def flush(self) -> None:
        data = self.session.data_to_send()
        if data:
            assert self.sock is not None
            self.sock.sendall(data)

    def wait(self, kind: type, timeout: float = 5.0) -> Any:
        """Flush, then read until an event of ``kind`` arrives; other events are kept."""
        assert self.sock is not None
        deadline = time.monotonic() + timeout
        while True:
            self.flush()
            event = self.session.next_event()
            if event is not None:
                self.events.append(event)
                if isinstance(event, kind):
                    self.events.remove(event)
                    return event
                continue
            self.flush()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kind.__name__} within {timeout}s; got {self.events}")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            self.session.receive_data(data, time.monotonic())
            if not data:
                raise ConnectionError("broker closed the connection")

    def drop(self) -> None:
        """Lose the connection abruptly (no DISCONNECT): bytes still queued are lost."""
        assert self.sock is not None
        self.sock.close()
        self.sock = None
        self.session.connection_lost(time.monotonic())

    def close(self) -> None:
        if self.sock is not None:
            self.session.disconnect()
            self.flush()
            self.sock.close()
            self.sock = None
            self.session.connection_lost(time.monotonic())


@pytest.fixture
def wires(mosquitto: Any) -> Any:
    made: list[Wire] = []

    def make(version: int) -> Wire:
        w = Wire((mosquitto.host, mosquitto.port), version)
        made.append(w)
        return w

    yield make
    for w in made:
        if w.sock is not None:
            w.sock.close()


def messages(wire: Wire, n: int) -> list[Publish]:
    return [wire.wait(Publish) for _ in range(n)]


@pytest.mark.parametrize("version", VERSIONS)
def test_publish_subscribe_qos_0_1_2(wires: Any, version: int) -> None:
    sub = wires(version)
    sub.open("interop-sub", clean=True)
    sub.session.subscribe([Subscription("interop/#", qos=2)])
    assert sub.wait(SubAck).reason_codes == [2]

    pub = wires(version)
    pub.open("interop-pub", clean=True)
    props = {"content_type": "text/plain", "user_property": [("k", "v")]}
    for qos in (0, 1, 2):
        pid = pub.session.publish(
            f"interop/q{qos}",
            b"payload %d" % qos,
            qos,
            properties=props if version == MQTT5 else None,
        )
        if qos == 1:
            assert pub.wait(PubAck).packet_id == pid
        elif qos == 2:
            assert pub.wait(PubComp).packet_id == pid
        else:
            pub.flush()
    got = messages(sub, 3)
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        ("interop/q0", b"payload 0", 0),
        ("interop/q1", b"payload 1", 1),
        ("interop/q2", b"payload 2", 2),
    ]
    if version == MQTT5:
        for m in got:
            assert m.properties is not None
            assert m.properties["content_type"] == "text/plain"
            assert m.properties["user_property"] == [("k", "v")]
    pub.close()
    sub.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_resume_resends_lost_publishes(wires: Any, version: int) -> None:
    """QoS 1/2 messages whose bytes never reached the broker are resent with
    DUP on the resumed session; the subscriber sees QoS 2 exactly once."""
    sub = wires(version)
    sub.open("resume-sub", clean=True)
    sub.session.subscribe([Subscription("resume/#", qos=2)])
    sub.wait(SubAck)

    pub = wires(version)
    pub.open("resume-pub", clean=True)
    pub.close()
    assert not pub.open("resume-pub", clean=False).session_present
    ids = [pub.session.publish("resume/q1", b"one", 1), pub.session.publish("resume/q2", b"two", 2)]
    pub.session.data_to_send()  # the network loses these bytes
    pub.drop()

    ack = pub.open("resume-pub", clean=False)
    assert ack.session_present
    done = {pub.wait(PubAck).packet_id, pub.wait(PubComp).packet_id}
    assert done == set(ids)
    got = messages(sub, 2)
    assert sorted((m.topic, m.payload) for m in got) == [
        ("resume/q1", b"one"),
        ("resume/q2", b"two"),
    ]
    pub.close()
    sub.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_resume_after_pubrec_lost_delivers_qos2_once(wires: Any, version: int) -> None:
    """The broker got our QoS 2 PUBLISH but its PUBREC never reached us: the
    resent PUBLISH (DUP) completes the flow and the message arrives once.
    (Mosquitto forwards a QoS 2 message when it gets our PUBREL.)"""
    sub = wires(version)
    sub.open("once-sub", clean=True)
    sub.session.subscribe([Subscription("once/#", qos=2)])
    sub.wait(SubAck)

    pub = wires(version)
    pub.open("once-pub", clean=False)
    pid = pub.session.publish("once/q2", b"exactly once", 2)
    pub.flush()
    pub.drop()  # any PUBREC is lost with the connection

    assert pub.open("once-pub", clean=False).session_present
    assert pub.wait(PubComp).packet_id == pid
    first = sub.wait(Publish)
    assert (first.topic, first.payload, first.qos) == ("once/q2", b"exactly once", 2)
    # A marker published after the resend arrives next: nothing was duplicated before it.
    pub.session.publish("once/marker", b"end", 1)
    pub.wait(PubAck)
    assert sub.wait(Publish).topic == "once/marker"
    pub.close()
    sub.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_disconnect_is_clean(wires: Any, version: int) -> None:
    """A DISCONNECT ends the connection without the will being sent."""
    watcher = wires(version)
    watcher.open("will-watcher", clean=True)
    watcher.session.subscribe([Subscription("will/#", qos=1)])
    watcher.wait(SubAck)
    c = wires(version)
    c.open("will-owner", clean=True, will=Will("will/gone", b"bye", 1))
    c.close()
    # The broker must not publish the will: a marker sent afterwards is the next message.
    m = wires(version)
    m.open("will-marker", clean=True)
    m.session.publish("will/marker", b"m", 1)
    m.wait(PubAck)
    assert watcher.wait(Publish).topic == "will/marker"
    # Dropping without DISCONNECT does publish the will.
    c.open("will-owner", clean=True, will=Will("will/gone", b"bye", 1))
    c.drop()
    will = watcher.wait(Publish)
    assert (will.topic, will.payload) == ("will/gone", b"bye")


# -- MQTT 5.0 limits, announced by each end and kept by the other -------------


def limited(mosquitto_factory: Any, *config: str) -> Any:
    """A Wire factory on a Mosquitto started with ``config`` lines."""
    broker = mosquitto_factory(list(config))

    def make(**session: Any) -> Wire:
        w = Wire((broker.host, broker.port), MQTT5)
        w.session = Session(CLIENT, MQTT5, **session)
        return w

    return make


def completions(wire: Wire, n: int) -> list[Any]:
    """The next ``n`` PubAck/PubComp events, in the order they came."""
    done: list[Any] = []
    while len(done) < n:
        done.append(wire.wait(object))
    assert all(isinstance(e, (PubAck, PubComp)) for e in done), done
    return done


def test_receive_maximum_of_mosquitto(mosquitto_factory: Any) -> None:
    """Mosquitto's Receive Maximum (max_inflight_messages) holds our QoS 1/2
    messages back; they go in order as the window moves (MQTT-4.9.0-2)."""
    make = limited(mosquitto_factory, "max_inflight_messages 2")
    sub = make()
    sub.open("rm-sub", clean=True)
    sub.session.subscribe([Subscription("rm/#", qos=2)])
    sub.wait(SubAck)
    pub = make()
    pub.open("rm-pub", clean=True)
    assert pub.session.peer_receive_maximum == 2
    ids = [pub.session.publish("rm/t", b"%d" % i, qos=2) for i in range(6)]
    data = pub.session.data_to_send()
    sent = Parser(MQTT5)
    sent.feed(data)
    assert [sent.next_packet().packet_id, sent.next_packet().packet_id] == ids[:2]
    assert sent.next_packet() is None  # the other four wait for the window
    assert pub.sock is not None
    pub.sock.sendall(data)
    assert [e.packet_id for e in completions(pub, 6)] == ids
    assert [m.payload for m in messages(sub, 6)] == [b"%d" % i for i in range(6)]
    pub.close()
    sub.close()


def test_topic_aliases_towards_mosquitto(mosquitto_factory: Any) -> None:
    """auto_alias gives topics aliases within Mosquitto's Topic Alias Maximum
    (max_topic_alias): later messages go with the alias alone and arrive
    under their topic; an alias passed by hand beyond that maximum is refused
    before it goes out (MQTT-3.3.2-9: Mosquitto would disconnect with 0x94)."""
    make = limited(mosquitto_factory, "max_topic_alias 2")
    sub = make()
    sub.open("alias-sub", clean=True)
    sub.session.subscribe([Subscription("alias/#", qos=1)])
    sub.wait(SubAck)
    pub = make(auto_alias=True)
    pub.open("alias-pub", clean=True)
    assert pub.session.peer_topic_alias_maximum == 2
    topics = ["alias/a", "alias/b", "alias/c", "alias/a", "alias/b", "alias/c"]
    for t in topics:
        pub.session.publish(t, t.encode(), qos=1)
    short = Parser(MQTT5)
    data = pub.session.data_to_send()
    short.feed(data)
    wire_topics = [short.next_packet().topic for _ in topics]
    # a and b take aliases 1 and 2, c never does; resends of a and b carry no topic.
    assert wire_topics == ["alias/a", "alias/b", "alias/c", "", "", "alias/c"]
    assert pub.sock is not None
    pub.sock.sendall(data)
    completions(pub, 6)
    assert [(m.topic, m.payload) for m in messages(sub, 6)] == [(t, t.encode()) for t in topics]
    with pytest.raises(LocalProtocolError) as e:
        pub.session.publish("alias/d", b"", properties={"topic_alias": 3})
    assert e.value.reason_code == TOPIC_ALIAS_INVALID
    pub.close()
    sub.close()


def test_maximum_packet_size_both_ways(mosquitto_factory: Any) -> None:
    """Mosquitto drops a message too large for our Maximum Packet Size and
    delivers the next (MQTT-3.1.2-25); we refuse to send one larger than its
    (max_packet_size), before anything goes out (MQTT-3.2.2-15)."""
    make = limited(mosquitto_factory, "max_packet_size 400")
    sub = make(max_packet_size=200)
    sub.open("size-sub", clean=True)
    sub.session.subscribe([Subscription("size/#", qos=1)])
    sub.wait(SubAck)
    pub = make()
    pub.open("size-pub", clean=True)
    assert pub.session.peer_max_packet_size == 400
    with pytest.raises(LocalProtocolError) as e:
        pub.session.publish("size/big", b"x" * 400, qos=1)
    assert e.value.reason_code == PACKET_TOO_LARGE
    assert pub.session.inflight == 0
    pub.session.publish("size/mid", b"m" * 300, qos=1)  # fits Mosquitto's, not the subscriber's
    pub.session.publish("size/small", b"s", qos=1)
    completions(pub, 2)
    (m,) = messages(sub, 1)
    assert (m.topic, m.payload) == ("size/small", b"s")
    pub.close()
    sub.close()


def test_server_keep_alive_from_mosquitto(mosquitto_factory: Any) -> None:
    """Mosquitto's max_keepalive comes back as Server Keep Alive, which
    replaces ours (MQTT-3.2.2-21): the next PINGREQ is due by it."""
    make = limited(mosquitto_factory, "max_keepalive 10")
    c = make()
    c.open("ka", clean=True)  # asks for 30 s
    assert c.session.keep_alive == 10
    assert c.session.next_deadline() <= time.monotonic() + 10
    c.close()


def test_assigned_client_identifier_from_mosquitto(wires: Any) -> None:
    """A 5.0 CONNECT with an empty client id gets one from Mosquitto in the
    CONNACK (MQTT-3.2.2-16), which the session takes as its client_id."""
    c = wires(MQTT5)
    ack = c.open("", clean=True)
    assigned = (ack.properties or {}).get("assigned_client_identifier")
    assert assigned and c.session.client_id == assigned
    c.close()


def test_auth_method_mosquitto_does_not_know(wires: Any) -> None:
    """Enhanced authentication with a method the broker does not support:
    CONNACK 0x8C Bad authentication method, the session CLOSED (MQTT-3.2.2-7:
    the broker closes)."""
    c = wires(MQTT5)
    c.sock = socket.create_connection(c.address, timeout=5)
    props = {"authentication_method": "SCRAM-SHA-1", "authentication_data": b"n,,n=u,r=x"}
    c.session.connect(Connect("auth", protocol_level=MQTT5, properties=props), time.monotonic())
    ack = c.wait(ConnAck)
    assert ack.reason_code == 0x8C
    assert c.session.state == CLOSED
