"""The broker holds 1,000 concurrent clients: each connects (all at once, so the burst
meets the listen backlog), subscribes to its own topic, gets one QoS 1 message there
and disconnects, and the broker's own ``stats()`` ends at 0 connections. And a backlog
for one client larger than its write buffer all arrives.

The clients are raw asyncio streams over our codec (no client library in the way),
in this process; the broker runs in a ``BrokerThread`` as in the other broker tests.
Every step awaits the packets it expects, each under a deadline, so a stall fails fast
with what was missing instead of hanging.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import time
from typing import Any

from test_broker_sessions import wait_for

from fieldline.broker import BrokerThread
from fieldline.mqtt import (
    ConnAck,
    Connect,
    Disconnect,
    Parser,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
    encode,
)

CLIENTS = 1000
V311 = 4
STEP_TIMEOUT = 30.0  # seconds for any one step over all clients (the test's budget: 60)
PAYLOAD = b"hello"
STALL = 1.0  # seconds without a byte that count as a stall


def raise_fd_limit(needed: int) -> None:
    """Both ends of every connection live in this process: two fds each."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        top = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))


class Peer:
    """One MQTT 3.1.1 connection: write packets, await the next packet read."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = Parser(V311)

    @classmethod
    async def connect(cls, port: int, client_id: str) -> tuple[Peer, Any]:
        """Open a connection and send CONNECT; returns the peer and its CONNACK."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        peer = cls(reader, writer)
        peer.send(Connect(client_id, keep_alive=0, protocol_level=V311))
        return peer, await peer.next()

    def send(self, packet: Any) -> None:
        self.writer.write(encode(packet, V311))

    async def next(self) -> Any:
        """The next packet; raises EOFError when the broker closes first."""
        while True:
            packet = self.parser.next_packet()
            if packet is not None:
                return packet
            data = await self.reader.read(65536)
            if not data:
                raise EOFError("the broker closed the connection")
            self.parser.feed(data)

    async def close(self) -> bytes:
        """Send DISCONNECT, close our half (MQTT-3.14.4-1) and wait until the broker
        closes its own; returns any bytes it sent first."""
        self.send(Disconnect())
        self.writer.write_eof()
        rest = await self.reader.read()
        self.writer.close()
        await self.writer.wait_closed()
        return rest


async def within(what: str, aws: list[Any]) -> list[Any]:
    """Gather ``aws`` under STEP_TIMEOUT, saying which step timed out."""
    try:
        return await asyncio.wait_for(asyncio.gather(*aws), STEP_TIMEOUT)
    except TimeoutError:
        raise AssertionError(f"{what}: not done within {STEP_TIMEOUT:g} s") from None


async def one_thousand_clients(broker: BrokerThread) -> dict[str, float]:
    port = broker.port
    times: dict[str, float] = {}
    t = time.monotonic()

    # 1. All connect at once; every CONNACK says success (3.1.1 return code 0).
    opened = await within("connect", [Peer.connect(port, f"scale-{i}") for i in range(CLIENTS)])
    peers = [p for p, _ in opened]
    for i, (_, connack) in enumerate(opened):
        assert isinstance(connack, ConnAck) and connack.reason_code == 0, (i, connack)
    assert broker.call(broker.broker.stats)["connections"] == CLIENTS
    times["connect"], t = time.monotonic() - t, time.monotonic()

    # 2. Each subscribes to its own topic at QoS 1.
    async def subscribe(i: int, peer: Peer) -> None:
        peer.send(Subscribe(1, [Subscription(f"scale/{i}", 1)]))
        suback = await peer.next()
        assert isinstance(suback, SubAck) and suback.reason_codes == [1], (i, suback)

    await within("subscribe", [subscribe(i, p) for i, p in enumerate(peers)])
    assert broker.call(broker.broker.stats)["subscriptions"] == CLIENTS
    times["subscribe"], t = time.monotonic() - t, time.monotonic()

    # 3. One publisher sends one QoS 1 message to each topic; it gets every PUBACK and
    # every client gets its message (and acks it, so the broker's window empties).
    publisher, connack = await Peer.connect(port, "scale-publisher")
    assert connack.reason_code == 0
    for i in range(CLIENTS):
        publisher.send(Publish(f"scale/{i}", PAYLOAD, 1, packet_id=i + 1))

    async def acks() -> None:
        got = set()
        for _ in range(CLIENTS):
            ack = await publisher.next()
            assert isinstance(ack, PubAck) and ack.reason_code == 0, ack
            got.add(ack.packet_id)
        assert got == set(range(1, CLIENTS + 1))

    async def receive(i: int, peer: Peer) -> None:
        m = await peer.next()
        assert isinstance(m, Publish), (i, m)
        assert (m.topic, m.payload, m.qos) == (f"scale/{i}", PAYLOAD, 1), (i, m)
        peer.send(PubAck(m.packet_id))

    await within("publish", [acks(), *(receive(i, p) for i, p in enumerate(peers))])
    times["publish"], t = time.monotonic() - t, time.monotonic()

    # 4. All disconnect; each waits for the broker to close its end, with nothing more
    # sent first (no stray delivery, no DISCONNECT from the broker).
    rests = await within("disconnect", [p.close() for p in [*peers, publisher]])
    assert rests == [b""] * (CLIENTS + 1)
    times["disconnect"] = time.monotonic() - t
    return times


def test_one_thousand_clients_connect_subscribe_receive_and_leave() -> None:
    raise_fd_limit(2 * (CLIENTS + 1) + 200)
    t0 = time.monotonic()
    with BrokerThread(port=0) as broker:
        times = asyncio.run(one_thousand_clients(broker))
        wait_for(broker, "connections", 0)
        stats = broker.call(broker.broker.stats)
        # Clean sessions end with their connections.
        assert (stats["connected"], stats["sessions"], stats["subscriptions"]) == (0, 0, 0)
    total = time.monotonic() - t0
    assert total < 60, (total, times)


RETAINED = 1000  # retained messages of 1 KiB: four times the default max_write_buffer


def test_a_retained_backlog_larger_than_the_write_buffer_is_all_delivered() -> None:
    """Subscribing to ``r/#`` queues every retained message for the client at once. The
    first ``pump`` writes 256 KiB (``max_write_buffer``) and stops; the socket takes it
    all, so the transport never pauses and never resumes: the broker must go on by
    itself (it once left the other ~750 queued until some later message came)."""
    with BrokerThread(port=0) as broker:
        for i in range(RETAINED):
            broker.call(broker.broker.publish, f"r/{i}", b"x" * 1024, 0, True)
        with socket.create_connection(("127.0.0.1", broker.port), timeout=STALL) as s:
            s.sendall(encode(Connect("backlog", keep_alive=0, protocol_level=V311), V311))
            s.sendall(encode(Subscribe(1, [Subscription("r/#", 0)]), V311))
            parser, got = Parser(V311), 0
            while got < RETAINED:
                try:
                    data = s.recv(1 << 16)
                except TimeoutError:
                    break  # nothing for STALL seconds: the rest is not coming
                if not data:
                    break
                parser.feed(data)
                while (packet := parser.next_packet()) is not None:
                    got += isinstance(packet, Publish)
        queued = broker.call(broker.broker.stats)["queued"]
    assert (got, queued) == (RETAINED, 0)
