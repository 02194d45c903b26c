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
    ConnAck,
    Connect,
    PubAck,
    PubComp,
    Publish,
    Session,
    SubAck,
    Subscription,
    Will,
)

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
