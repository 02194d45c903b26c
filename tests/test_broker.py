"""The broker over real sockets: publish/subscribe at every QoS with paho-mqtt (3.1.1 and
5.0), our clients and mosquitto_pub/mosquitto_sub as peers; retained messages; the
Python API and the ``fieldline broker`` command.

Also home of the helpers the other ``test_broker_*`` files import: ``running`` (a broker
in a thread on a free port) and ``Raw`` (a sans-IO client session over a plain socket,
for tests that must see or withhold single packets).
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from conftest import find_tool
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fieldline.broker import Broker, BrokerThread
from fieldline.mqtt import (
    CLIENT,
    AsyncClient,
    Client,
    Connect,
    Publish,
    Session,
    Subscription,
    decode,
    encode,
)

# On uvloop (the default when installed) and on asyncio's own loop.
pytestmark = pytest.mark.usefixtures("both_event_loops")

WAIT = 10.0


# -- helpers (imported by the other test_broker_* files) ---------------------------------


def running(**options: Any) -> Iterator[BrokerThread]:
    """A BrokerThread on a free loopback port with ``options``, stopped afterwards."""
    b = BrokerThread("127.0.0.1", 0, **options).start()
    try:
        yield b
    finally:
        b.stop()


class Closed(Exception):
    """The broker closed the connection."""


class Raw:
    """A ``Session(CLIENT)`` over a blocking socket. ``next()`` returns the next event;
    with ``auto_flush=False`` the acks the session queues are not sent until ``flush()``."""

    def __init__(
        self,
        port: int,
        client_id: str = "",
        version: int = 5,
        clean_start: bool = True,
        keep_alive: int = 60,
        will: Any = None,
        properties: dict[str, Any] | None = None,
        auto_flush: bool = True,
        username: str | None = None,
        password: bytes | None = None,
        **session: Any,
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.session = Session(CLIENT, **session)
        self.auto_flush = auto_flush
        self.early: list[Publish] = []  # deliveries read while waiting for an ack
        connect = Connect(
            client_id, clean_start, keep_alive, username, password, will=will,
            protocol_level=version, properties=properties,
        )  # fmt: skip
        self.session.connect(connect, time.monotonic())
        self.flush()
        self.connack = self.next()

    def flush(self) -> None:
        data = self.session.data_to_send()
        if data:
            self.sock.sendall(data)

    def next(self, timeout: float = WAIT) -> Any:
        """The next event; raises Closed on EOF, TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            ev = self.session.next_event()
            if ev is not None:
                if self.auto_flush:
                    self.flush()
                return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no event")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise TimeoutError("no event") from None
            except ConnectionResetError:
                data = b""
            if not data:
                raise Closed()
            self.session.receive_data(data, time.monotonic())

    def messages(self, n: int) -> list[Publish]:
        out, self.early = self.early[:n], self.early[n:]
        while len(out) < n:
            ev = self.next()
            if isinstance(ev, Publish):
                out.append(ev)
        return out

    def quiet(self, seconds: float = 0.3) -> bool:
        """True if no event comes within ``seconds`` (for "nothing more is sent")."""
        if self.early:
            return False
        try:
            self.next(seconds)
        except TimeoutError:
            return True
        return False

    def subscribe(self, *subs: Any, properties: dict[str, Any] | None = None) -> Any:
        self.session.subscribe(list(subs), properties)
        self.flush()
        return self.next()

    def publish(self, topic: str, payload: bytes, qos: int = 0, **kw: Any) -> Any:
        """Publish; returns the PubAck, PubComp or failed PubRec for QoS 1/2. A delivery
        of the message to ourselves may come before the ack: messages() returns it."""
        self.session.publish(topic, payload, qos, **kw)
        self.flush()
        if not qos:
            return None
        while isinstance(ev := self.next(), Publish):
            self.early.append(ev)
        return ev

    def close(self) -> None:
        self.sock.close()


def paho_client(port: int, version: int, client_id: str = "", **kw: Any) -> tuple[Any, Any]:
    """A connected paho client with its loop running; messages land in the queue."""
    protocol = paho.MQTTv5 if version == 5 else paho.MQTTv311
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kw)
    got: queue.Queue[Any] = queue.Queue()
    c.on_message = lambda c_, u, m: got.put(m)
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    return c, got


def wait_subscriptions(broker: BrokerThread, n: int) -> None:
    """Wait until the broker holds ``n`` subscriptions (a peer we cannot ask, such as
    mosquitto_sub, has then had its SUBACK)."""
    deadline = time.monotonic() + WAIT
    while broker.call(broker.broker.stats)["subscriptions"] < n:
        assert time.monotonic() < deadline, "the subscription did not arrive"
        time.sleep(0.01)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def read_packet(sock: socket.socket, version: int = 5) -> Any:
    """The next whole packet from ``sock``, decoded; None at EOF."""
    head = recv_exact(sock, 2)
    if not head:
        return None
    data, n, shift, i = head, head[1] & 0x7F, 7, 1
    while data[i] & 0x80:  # a longer Remaining Length
        data += recv_exact(sock, 1)
        i += 1
        n |= (data[i] & 0x7F) << shift
        shift += 7
    data += recv_exact(sock, n)
    return decode(data, version)


def send_connect(port: int, connect: Connect, version: int = 5) -> socket.socket:
    """A socket to the broker that has sent ``connect`` (its CONNACK not read)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.sendall(encode(connect, version))
    return sock


def publish_each(broker: BrokerThread, topic: str, payloads: list[bytes], qos: int) -> None:
    """``broker.publish()`` each payload to ``topic``, in order."""
    for payload in payloads:
        broker.call(broker.broker.publish, topic, payload, qos)


def paho_wait_connected(c: Any) -> None:
    deadline = time.monotonic() + WAIT
    while not c.is_connected():
        assert time.monotonic() < deadline, "paho did not connect"
        time.sleep(0.01)


# -- tests -------------------------------------------------------------------------------


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    yield from running()


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_paho_publish_subscribe_every_qos(broker: BrokerThread, version: int, qos: int) -> None:
    sub, got = paho_client(broker.port, version, "sub")
    pub, _ = paho_client(broker.port, version, "pub")
    try:
        paho_wait_connected(sub)
        sub.subscribe("t/#", qos)
        paho_wait_connected(pub)
        wait_subscriptions(broker, 1)
        pub.publish("t/a", b"hello", qos).wait_for_publish(WAIT)
        m = got.get(timeout=WAIT)
        assert (m.topic, m.payload, m.qos, m.retain) == ("t/a", b"hello", qos, False)
    finally:
        for c in (sub, pub):
            c.disconnect()
            c.loop_stop()


@pytest.mark.parametrize("version", [4, 5])
def test_our_clients_qos2_both_directions_and_downgrade(broker: BrokerThread, version: int) -> None:
    with (
        Client(broker.host, broker.port, client_id="s", version=version) as s,
        Client(broker.host, broker.port, client_id="p", version=version) as p,
    ):
        s.subscribe("q2/#", qos=2)
        s.subscribe("q1/#", qos=1)
        p.publish("q2/x", b"exactly once", qos=2)
        p.publish("q1/x", b"downgraded", qos=2)
        a, b = s.recv(timeout=WAIT), s.recv(timeout=WAIT)
        assert (a.topic, a.payload, a.qos) == ("q2/x", b"exactly once", 2)
        assert (b.topic, b.qos) == ("q1/x", 1)  # min(message QoS, subscription QoS)


def test_qos2_duplicate_publish_is_routed_once(broker: BrokerThread) -> None:
    # MQTT-4.3.3-9: a resent QoS 2 PUBLISH (same id, not yet released) is not a new message.
    sub = Raw(broker.port, "sub")
    sub.subscribe(Subscription("d", 2))
    raw = socket.create_connection(("127.0.0.1", broker.port), timeout=WAIT)
    raw.sendall(b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01p")
    assert recv_exact(raw, 4) == b"\x20\x02\x00\x00"
    publish = b"\x34\x06\x00\x01d\x00\x07x"  # QoS 2, id 7
    raw.sendall(publish)
    assert recv_exact(raw, 4) == b"\x50\x02\x00\x07"  # PUBREC
    raw.sendall(b"\x3c\x06\x00\x01d\x00\x07x")  # the same again, DUP set
    assert recv_exact(raw, 4) == b"\x50\x02\x00\x07"
    raw.sendall(b"\x62\x02\x00\x07")  # PUBREL
    assert recv_exact(raw, 4) == b"\x70\x02\x00\x07"  # PUBCOMP
    assert [m.payload for m in sub.messages(1)] == [b"x"]
    assert sub.quiet()
    raw.close()
    sub.close()


def test_retained_message_is_sent_to_new_subscribers(broker: BrokerThread) -> None:
    with Client(broker.host, broker.port, client_id="p") as p:
        p.publish("r/a", b"kept", qos=1, retain=True)
        p.publish("r/b", b"gone", qos=1, retain=True)
        p.publish("r/b", b"", qos=1, retain=True)  # an empty payload clears it (MQTT-3.3.1-6)
    sub = Raw(broker.port, "s")
    sub.subscribe(Subscription("r/#", 1))
    (m,) = sub.messages(1)
    assert (m.topic, m.payload, m.retain, m.qos) == ("r/a", b"kept", True, 1)
    assert sub.quiet()
    # A live message with RETAIN 1 reaches existing subscribers with RETAIN 0 (no RAP).
    sub.publish("r/c", b"live", qos=1, retain=True)
    (m,) = sub.messages(1)
    assert (m.topic, m.retain) == ("r/c", False)
    sub.close()


def test_retain_handling_and_retain_as_published(broker: BrokerThread) -> None:
    with Client(broker.host, broker.port, client_id="p") as p:
        p.publish("h/a", b"r", qos=1, retain=True)
    c = Raw(broker.port, "c")
    c.subscribe(Subscription("h/#", 1, retain_handling=2))  # never send retained
    assert c.quiet()
    c.subscribe(Subscription("h/+", 1, retain_handling=1))  # new subscription: send
    assert [m.topic for m in c.messages(1)] == ["h/a"]
    c.subscribe(Subscription("h/+", 1, retain_handling=1))  # it exists now: do not
    assert c.quiet()
    c.subscribe(Subscription("rap/#", 1, retain_as_published=True))
    c.publish("rap/x", b"1", qos=1, retain=True)
    (m,) = c.messages(1)
    assert m.retain  # MQTT-3.3.1-12
    c.close()


def test_mosquitto_clients_as_peers(broker: BrokerThread) -> None:
    sub_tool = find_tool("mosquitto_sub", hint="install the Debian package mosquitto-clients")
    pub_tool = find_tool("mosquitto_pub", hint="install the Debian package mosquitto-clients")
    port = str(broker.port)
    with Client(broker.host, broker.port, client_id="p") as p:
        p.publish("mq/retained", b"from-us", qos=1, retain=True)
        # mosquitto_sub (5.0) takes the retained message and one live one, then exits.
        sub = subprocess.Popen(
            [sub_tool, "-h", "127.0.0.1", "-p", port, "-V", "5", "-t", "mq/#", "-q", "2",
             "-C", "2", "-v"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        # Publish the live one only once mosquitto_sub holds its subscription.
        wait_subscriptions(broker, 1)
        p.publish("mq/live", b"live", qos=2)
        out, _ = sub.communicate(timeout=WAIT)
        assert out.splitlines() == ["mq/retained from-us", "mq/live live"]
    # mosquitto_pub (3.1.1) to our client.
    with Client(broker.host, broker.port, client_id="s", version=4) as s:
        s.subscribe("mq/in", qos=1)
        subprocess.run(
            [pub_tool, "-h", "127.0.0.1", "-p", port, "-V", "311", "-t", "mq/in", "-m", "hi",
             "-q", "1"],
            check=True, timeout=WAIT,
        )  # fmt: skip
        m = s.recv(timeout=WAIT)
        assert (m.topic, m.payload) == ("mq/in", b"hi")


def test_async_api_port_zero_and_in_process_publish() -> None:
    async def main() -> None:
        async with Broker("127.0.0.1", 0) as broker:
            assert broker.port != 0
            async with AsyncClient("127.0.0.1", broker.port) as c:
                await c.subscribe("api/#", qos=1)
                stream = c.messages("api/#")
                broker.publish("api/x", b"from the broker", qos=1)
                async for msg in stream:
                    assert (msg.topic, msg.payload) == ("api/x", b"from the broker")
                    break
        assert broker.stats()["connections"] == 0

    asyncio.run(main())


def test_cli_runs_the_broker_and_stops_on_sigterm() -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fieldline", "broker", "--port", "0"],
        stdout=subprocess.PIPE, text=True, env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "MQTT 3.1.1 and 5.0 on mqtt://127.0.0.1:" in line
        port = int(line.split("mqtt://127.0.0.1:")[1].split()[0])
        with Client("127.0.0.1", port, client_id="cli") as c:
            c.subscribe("cli", qos=1)
            c.publish("cli", b"x", qos=1)
            assert c.recv(timeout=WAIT).payload == b"x"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bare_command_and_version_still_work() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fieldline"], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("usage: fieldline")  # since 7124638: the usage, exit status 0
    out = subprocess.run(
        [sys.executable, "-m", "fieldline", "--version"], capture_output=True, text=True
    ).stdout
    assert out.startswith("fieldline ")


def test_paho_v5_properties_pass_through(broker: BrokerThread) -> None:
    sub, got = paho_client(broker.port, 5, "psub")
    try:
        paho_wait_connected(sub)
        props = Properties(PacketTypes.SUBSCRIBE)
        props.SubscriptionIdentifier = 9
        sub.subscribe("pp/#", options=paho.SubscribeOptions(qos=1), properties=props)
        wait_subscriptions(broker, 1)
        with Client(broker.host, broker.port, client_id="ppub") as p:
            p.publish(
                "pp/x", b"{}", qos=1,
                properties={"content_type": "application/json",
                            "response_topic": "pp/reply", "correlation_data": b"42",
                            "user_property": [("a", "b")]},
            )  # fmt: skip
        m = got.get(timeout=WAIT)
        assert m.properties.ContentType == "application/json"
        assert m.properties.ResponseTopic == "pp/reply"
        assert m.properties.CorrelationData == b"42"
        assert m.properties.UserProperty == [("a", "b")]
        assert m.properties.SubscriptionIdentifier == [9]
    finally:
        sub.disconnect()
        sub.loop_stop()
