"""``Client.loop_start()`` writing on its I/O thread (``_client_thread``), over real
sockets to a fake broker that stops reading: publish() queues its bytes and returns
while the I/O thread waits for room, the bytes waiting are bounded by ``max_unsent``
(beyond it ``queue_policy`` applies), and the stall ends the connection with
ConnectionLost, found by the I/O thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import FakeBrokerFactory, Mosquitto
from fakebroker import CONNECT, DISCONNECT, PUBLISH, FakeConnection, connack, pause, recv, send

from fieldline.mqtt import BLOCK, RAISE, Client, ConnectionLost, MQTTTimeout, QueueFull

WAIT = 10.0
BIG = 256 * 1024  # one message's payload
PROMPT = 1.0  # a call that must not wait for the network returns within this (generous)


class Lost:
    """on_disconnect, as an event to wait on."""

    def __init__(self) -> None:
        self.errors: list[BaseException | None] = []
        self.event = threading.Event()

    def __call__(self, e: BaseException | None) -> None:
        self.errors.append(e)
        self.event.set()


def _ok(version: int) -> bytes:
    return connack(0, properties=b"" if version == 5 else None)


def _timed(fn: Callable[..., object], *args: object, **kwargs: object) -> float:
    start = time.monotonic()
    fn(*args, **kwargs)
    return time.monotonic() - start


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.disconnect(timeout=1)


def test_publish_returns_while_the_broker_reads_nothing(
    fake_broker: FakeBrokerFactory, version: int, clients: list[Client]
) -> None:
    # keepalive 3 s: the stall is found after about 4.5 s. Until then every
    # call returns at once or at its own timeout, far sooner (it used to wait
    # for the lock that the I/O thread held, blocked in sendall()).
    broker = fake_broker([recv(CONNECT), send(_ok(version)), pause(3 * WAIT)])  # reads nothing
    c = Client(
        broker.host, broker.port, version=version, keepalive=3, timeout=WAIT, reconnect=False
    )
    clients.append(c)
    lost = c.on_disconnect = Lost()
    c.connect()
    c.loop_start()
    # QoS 0 calls return at once while fewer than max_unsent bytes wait;
    # once the socket buffers are full and max_unsent bytes wait, BLOCK (the
    # default) waits for room, bounded by the call's timeout.
    slowest = 0.0
    with pytest.raises(MQTTTimeout):
        for _ in range(1000):  # 250 MiB: far more than socket buffers and max_unsent hold
            slowest = max(slowest, _timed(c.publish, "big", b"x" * BIG, timeout=0.2))
    assert slowest < PROMPT
    # RAISE raises QueueFull instead.
    c.queue_policy = RAISE
    start = time.monotonic()
    with pytest.raises(QueueFull):
        for _ in range(1000):
            c.publish("big", b"x" * BIG)
    with pytest.raises(QueueFull):
        c.publish("big", b"x", qos=1)
    # With room, a QoS 1 message is queued and its call waits for the PUBACK,
    # bounded by its timeout; timeout=0 does not wait at all.
    c.max_unsent = 1 << 40
    with pytest.raises(MQTTTimeout):
        c.publish("big", b"x", qos=1, timeout=0.2)
    assert c.publish("big", b"x", qos=1, timeout=0) is None
    assert time.monotonic() - start < 2 * PROMPT
    assert not lost.event.is_set()
    # The I/O thread finds the stall (Keep Alive, or no room for 1.5 x
    # keepalive) and reports ConnectionLost; a caller waiting for room gets it.
    c.max_unsent = 1
    c.queue_policy = BLOCK
    with pytest.raises(ConnectionLost):
        c.publish("big", b"x", timeout=WAIT)
    assert lost.event.wait(WAIT)
    assert isinstance(lost.errors[0], ConnectionLost)


def test_a_stalled_connection_is_replaced(
    fake_broker: FakeBrokerFactory, version: int, clients: list[Client]
) -> None:
    # With reconnect on, the I/O thread drops the stalled connection and its
    # unwritten bytes (QoS 0: lost, as on any lost connection) and dials
    # again; the new connection writes at once.
    stalled = [recv(CONNECT), send(_ok(version)), pause(3 * WAIT)]
    broker = fake_broker(stalled, [recv(CONNECT), send(_ok(version))])  # then reads all
    c = Client(
        broker.host, broker.port, version=version, keepalive=1, timeout=WAIT, backoff_min=0.05
    )
    clients.append(c)
    lost = c.on_disconnect = Lost()
    up = threading.Event()
    c.connect()
    c.on_connect = lambda ack: up.set()
    c.loop_start()
    with pytest.raises(MQTTTimeout):
        for _ in range(1000):
            c.publish("big", b"x" * BIG, timeout=0.2)
    assert lost.event.wait(WAIT) and up.wait(WAIT)
    assert isinstance(lost.errors[0], ConnectionLost)
    c.publish("after", b"1")
    conn = broker.connection(1)
    for n in range(2, 5):  # after the CONNECT, maybe a PINGREQ first
        conn.packets_received.wait(n, WAIT)
        if any(p[0] >> 4 == PUBLISH for p in conn.packets):
            break
    first = _publishes(conn)[0]
    assert b"after" in first and first.endswith(b"1")


def _publishes(conn: FakeConnection) -> list[bytes]:
    return [p for p in conn.packets if p[0] >> 4 == PUBLISH]


def test_a_backlog_is_written_in_order_once_the_broker_reads(
    fake_broker: FakeBrokerFactory, version: int, clients: list[Client]
) -> None:
    # The broker reads nothing until the client has queued far more than the
    # socket buffers hold, then everything: it must arrive whole and in order.
    reading = threading.Event()
    n = 64  # 16 MiB
    script = [recv(CONNECT), send(_ok(version)), lambda conn: reading.wait(WAIT)]
    script += [recv(PUBLISH) for _ in range(n)]
    broker = fake_broker(script)
    c = Client(broker.host, broker.port, version=version, keepalive=10, timeout=WAIT)
    clients.append(c)
    c.max_unsent = 1 << 30
    c.connect()
    c.loop_start()
    for i in range(n):
        assert _timed(c.publish, f"big/{i}", bytes([i]) * BIG) < PROMPT
    assert c._unsent  # the backlog this test is about: the socket took no more
    reading.set()
    conn = broker.connection(0)
    conn.packets_received.wait(n + 1, WAIT)
    got = _publishes(conn)
    assert len(got) == n
    for i, packet in enumerate(got):
        assert packet.endswith(bytes([i]) * BIG) and b"big/%d" % i in packet[:16]
    assert conn.error is None


def test_loop_stop_leaves_the_backlog_for_the_caller(
    fake_broker: FakeBrokerFactory, version: int
) -> None:
    # After loop_stop() the caller drives the connection again: loop() waits
    # for bytes as before (it used to find the closed wake-up socket ready,
    # block in recv() and lose the connection), and disconnect() writes the
    # bytes the I/O thread had not written, then the DISCONNECT.
    reading = threading.Event()
    n = 48  # 12 MiB
    script = [recv(CONNECT), send(_ok(version)), lambda conn: reading.wait(WAIT)]
    script += [recv() for _ in range(n + 1)]
    broker = fake_broker(script)
    c = Client(broker.host, broker.port, version=version, keepalive=10, timeout=WAIT)
    lost = c.on_disconnect = Lost()
    c.max_unsent = 1 << 30
    c.connect()
    c.loop_start()
    for i in range(n):
        c.publish(f"big/{i}", bytes([i]) * BIG)
    c.loop_stop()
    assert c._unsent
    reading.set()
    c.loop(0.2)  # writes the backlog, as any round of the caller's does
    assert c.is_connected and not lost.event.is_set()
    c.disconnect()
    conn = broker.connection(0)
    conn.packets_received.wait(n + 2, WAIT)
    assert [p[0] >> 4 for p in conn.packets[1:]] == [PUBLISH] * n + [DISCONNECT]
    for i, packet in enumerate(conn.packets[1:-1]):
        assert packet.endswith(bytes([i]) * BIG)


@pytest.mark.parametrize("scheme", ["tcp", "tls", "ws", "wss"])
def test_bulk_writes_over_every_transport(
    request: pytest.FixtureRequest, scheme: str, clients: list[Client]
) -> None:
    # The I/O thread writes in pieces the socket takes: send() on TCP and
    # TLS, one sendall() frame at a time on a WebSocket. Mosquitto drops a
    # connection whose stream breaks, so the message after the bulk coming
    # back shows every byte arrived in order.
    broker: Mosquitto = request.getfixturevalue(
        "mosquitto_ws" if "ws" in scheme else "mosquitto_tls"
    )
    tls = broker.tls
    assert tls is not None
    opts: dict[str, object] = {"version": 4, "timeout": WAIT, "reconnect": False}
    port = broker.port
    if scheme != "tcp":
        port = broker.ports[scheme]
    if scheme in ("tls", "wss"):
        opts["ca_file"] = str(tls.ca_cert)
    if "ws" in scheme:
        opts["transport"] = "websockets"
    c = Client("localhost", port, **opts)
    clients.append(c)
    c.connect()
    c.loop_start()
    c.subscribe("bulk/end", qos=1)
    for i in range(32):  # 8 MiB
        c.publish("bulk/data", bytes([i]) * BIG)
    c.publish("bulk/end", b"done", qos=1)
    assert c.recv(WAIT).payload == b"done"
