"""Receive-side backpressure of both clients against a real Mosquitto: a bounded
inbox (``max_inbox``), acknowledgement by hand (``manual_ack``, ``ack()``) and
the 5.0 Receive Maximum, in MQTT 3.1.1 and 5.0.

Each scenario is written once against ``Consumer``, a blocking facade over the
client under test: the blocking ``Client`` with ``loop_start()`` (so that the
connection is served while the test, the "application", does not read), or an
``AsyncClient`` on an event loop in a thread of its own.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import Endpoint, Mosquitto, ProxyFactory

from fieldline.mqtt import AsyncClient, Client, MQTTTimeout, Publish

WAIT = 10.0


class Consumer:
    """The client under test, driven from the test's thread. ``lost`` is set
    by on_disconnect; ``connects`` counts the CONNACKs."""

    def __init__(self, kind: str, broker: Endpoint, version: int, **opts: Any) -> None:
        opts.setdefault("timeout", WAIT)
        self.kind = kind
        self.lost = threading.Event()
        self.connects = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stream: Any = None
        if kind == "blocking":
            self.client: Any = Client(broker.host, broker.port, version=version, **opts)
        else:
            loop = self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=loop.run_forever, daemon=True)
            self._thread.start()

            async def make() -> AsyncClient:
                return AsyncClient(broker.host, broker.port, version=version, **opts)

            self.client = self._run(make())
        self.client.on_connect = self._connected
        self.client.on_disconnect = lambda e: self.lost.set()

    def _connected(self, connack: Any) -> None:
        self.connects += 1

    def _run(self, coro: Any, timeout: float = WAIT) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout + 5)

    def connect(self) -> Any:
        if self._loop is None:
            ack = self.client.connect()
            self.client.loop_start()
            return ack

        async def go() -> Any:
            ack = await self.client.connect()
            self._stream = self.client.messages()
            return ack

        return self._run(go())

    def subscribe(self, topic: str, qos: int) -> None:
        if self._loop is None:
            assert self.client.subscribe(topic, qos=qos) == [qos]
        else:
            assert self._run(self.client.subscribe(topic, qos=qos)) == [qos]

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        if self._loop is None:
            self.client.publish(topic, payload, qos=qos)
        else:
            self._run(self.client.publish(topic, payload, qos=qos))

    def recv(self, timeout: float = WAIT) -> Publish:
        if self._loop is None:
            msg: Publish = self.client.recv(timeout)
            return msg

        async def take() -> Publish:
            try:
                return await asyncio.wait_for(self._stream.__anext__(), timeout)
            except TimeoutError:
                raise MQTTTimeout(0x80, "no message") from None

        result: Publish = self._run(take(), timeout)
        return result

    def ack(self, msg: Publish) -> bool:
        if self._loop is None:
            done: bool = self.client.ack(msg)
            return done

        async def ack() -> bool:
            done: bool = self.client.ack(msg)
            return done

        result: bool = self._run(ack())
        return result

    def close(self) -> None:
        if self._loop is None:
            self.client.disconnect()
            return
        try:
            self._run(self.client.disconnect())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(WAIT)
            self._loop.close()


@pytest.fixture
def consumers() -> Iterator[Callable[..., Consumer]]:
    """``(kind, broker, version, **opts) -> Consumer``, connected; closed at teardown."""
    made: list[Consumer] = []

    def make(kind: str, broker: Endpoint, version: int, **opts: Any) -> Consumer:
        c = Consumer(kind, broker, version, **opts)
        made.append(c)
        c.connect()
        return c

    yield make
    for c in made:
        c.close()


def until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait for ``condition()`` (a counter the client updates on its own thread)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.005)


def publish_all(
    broker: Mosquitto, version: int, topic: str, payloads: list[bytes], qos: int
) -> None:
    """Publish ``payloads`` in order; returns once the broker has them all."""
    with Client(broker.host, broker.port, version=version, timeout=WAIT) as pub:
        for p in payloads:
            pub.publish(topic, p, qos=qos, timeout=0)
        while pub.session.inflight:
            pub.loop(0.1)
        pub.publish("sync", b"", qos=1)  # a round trip: QoS 0 ones are in too


@pytest.mark.parametrize(
    "qos,policy", [(0, "drop"), (0, "block"), (1, "drop")], ids=["qos0", "qos0-block", "qos1"]
)
def test_slow_consumer_keeps_the_inbox_bounded_and_the_connection_alive(
    mosquitto: Mosquitto,
    consumers: Callable[..., Consumer],
    version: int,
    kind: str,
    qos: int,
    policy: str,
) -> None:
    # A flood the application does not read. Places: 10. QoS 0 beyond them is
    # dropped and counted, or with inbox_policy "block" held back by TCP; QoS 1
    # is held back (5.0: Receive Maximum 10; 3.1.1: Mosquitto's inflight window
    # of 20 is larger, so the client stops reading) and none is lost.
    # Keepalive 1 s: PINGREQ must go on while nothing is read, or Mosquitto
    # drops the connection after 1.5 s.
    n = 1000 if qos == 0 else 200
    c = consumers(kind, mosquitto, version, keepalive=1, max_inbox=10, inbox_policy=policy)
    assert c.client.receive_maximum == 10  # announced in 5.0
    c.subscribe("flood/x", qos)
    payloads = [b"%d" % i for i in range(n)]
    publish_all(mosquitto, version, "flood/x", payloads, qos)
    if qos == 0 and policy == "drop":
        until(lambda: c.client.inbox_size + c.client.dropped == n, "every message")
    until(lambda: c.client.inbox_size == 10, "a full inbox")
    assert not c.lost.wait(3.5), "the connection dropped while the application did not read"
    assert c.connects == 1
    assert c.client.inbox_size == c.client.inbox_peak == 10
    if qos == 0 and policy == "drop":
        assert c.client.dropped == n - 10
        assert [c.recv().payload for _ in range(10)] == payloads[:10]
        c.publish("flood/x", b"after", qos=1)  # reading goes on
        assert c.recv().payload == b"after"
    else:
        assert c.client.dropped == 0
        assert [c.recv().payload for _ in range(n)] == payloads
    assert c.client.inbox_peak == 10
    assert not c.lost.is_set()


def test_manual_ack_unacknowledged_messages_come_again_after_a_crash(
    mosquitto: Mosquitto,
    tcp_proxy: ProxyFactory,
    consumers: Callable[..., Consumer],
    version: int,
    kind: str,
) -> None:
    # At-least-once processing: a worker takes six jobs and acknowledges
    # every other one; its connection dies (the "crash"; it does not come
    # back). The next worker with the same session gets exactly the three
    # unacknowledged jobs again, marked DUP.
    proxy = tcp_proxy(mosquitto)
    opts: dict[str, Any] = {
        "client_id": "worker",
        "clean_start": version == 5,  # 3.1.1: a persistent session; 5.0: session_expiry
        "session_expiry": 3600,
        "manual_ack": True,
    }
    first = consumers(kind, proxy, version, reconnect=False, **opts)
    first.subscribe("jobs/#", 1)
    jobs = [b"job %d" % i for i in range(6)]
    publish_all(mosquitto, version, "jobs/x", jobs, 1)
    got = [first.recv() for _ in jobs]
    assert [m.payload for m in got] == jobs
    for m in got[::2]:
        assert first.ack(m)
    assert not first.ack(got[0])  # answered already
    # A QoS 1 round trip on the same connection: the broker has our PUBACKs.
    first.publish("sync", b"", qos=1)
    proxy.drop()
    assert first.lost.wait(WAIT)

    opts["clean_start"] = False
    second = consumers(kind, mosquitto, version, **opts)
    assert second.client.connack.session_present
    again = [second.recv() for _ in range(3)]
    assert sorted(m.payload for m in again) == jobs[1::2]
    assert all(m.dup for m in again)
    for m in again:
        assert second.ack(m)
    publish_all(mosquitto, version, "jobs/x", [b"end"], 1)
    end = second.recv()
    assert end.payload == b"end"  # nothing else came again
    assert second.ack(end)


@pytest.mark.parametrize("qos", [1, 2])
def test_manual_ack_survives_a_reconnection_without_duplicates(
    mosquitto: Mosquitto,
    tcp_proxy: ProxyFactory,
    consumers: Callable[..., Consumer],
    version: int,
    kind: str,
    qos: int,
) -> None:
    # The same client reconnects: the broker sends the unacknowledged messages
    # again, the client does not deliver them twice, and the application's
    # later ack() completes them (QoS 2: PUBREC, then PUBREL and PUBCOMP).
    proxy = tcp_proxy(mosquitto)
    opts: dict[str, Any] = {
        "client_id": "steady",
        "clean_start": version == 5,
        "session_expiry": 3600,
        "manual_ack": True,
        "backoff_min": 0.05,
        "backoff_max": 0.1,
    }
    c = consumers(kind, proxy, version, **opts)
    c.subscribe("steady/#", qos)
    publish_all(mosquitto, version, "steady/x", [b"a", b"b"], qos)
    a, b = c.recv(), c.recv()
    assert (a.qos, b.qos) == (qos, qos)
    assert c.ack(a)
    c.publish("sync", b"", qos=1)
    proxy.drop()
    until(lambda: c.connects == 2, "the reconnection")
    assert c.client.connack.session_present
    assert c.ack(b)  # answers the resent message
    publish_all(mosquitto, version, "steady/x", [b"end"], qos)
    end = c.recv()
    assert end.payload == b"end"  # neither a nor b came twice
    assert c.ack(end)


def test_v5_receive_maximum_bounds_unacknowledged_messages(
    mosquitto: Mosquitto, consumers: Callable[..., Consumer], kind: str
) -> None:
    # receive_maximum=3 with manual ack: Mosquitto sends three QoS 1 messages
    # and holds the rest until we acknowledge. A QoS 0 marker published after
    # all ten gets through meanwhile: the broker was free to send and did not.
    c = consumers(kind, mosquitto, 5, receive_maximum=3, manual_ack=True)
    c.subscribe("rm/#", 1)
    payloads = [b"%d" % i for i in range(10)]
    with Client(mosquitto.host, mosquitto.port, timeout=WAIT) as pub:
        for p in payloads:
            pub.publish("rm/q", p, qos=1)
        pub.publish("rm/marker", b"marker", qos=0)
    window = [c.recv() for _ in range(3)]
    assert [m.payload for m in window] == payloads[:3]
    assert c.recv().payload == b"marker"
    # Each ack lets more come. (Mosquitto before 2.0.13 then sends up to three
    # more per ack, beyond our window -- eclipse-mosquitto/mosquitto#2301 --
    # which the client tolerates, so only the order is checked from here.)
    got = [m.payload for m in window]
    while len(got) < 10:
        assert c.ack(window.pop(0))
        while True:
            window.append(c.recv())
            got.append(window[-1].payload)
            if len(window) >= 3 or len(got) == 10:
                break
    assert got == payloads
    for m in window:
        assert c.ack(m)
    assert not c.lost.is_set()


def test_blocking_client_paused_on_its_own_thread(mosquitto: Mosquitto, version: int) -> None:
    # No loop_start(): the application drives the connection with loop() and
    # does not recv(). 3.1.1 QoS 1 beyond max_inbox makes the client stop
    # reading; loop() keeps the connection alive (keepalive 1 s) meanwhile.
    lost: list[BaseException] = []
    c = Client(mosquitto.host, mosquitto.port, version=version, keepalive=1, max_inbox=5)
    c.on_disconnect = lost.append
    c.connect()
    try:
        c.subscribe("solo/x", qos=1)
        payloads = [b"%d" % i for i in range(50)]
        publish_all(mosquitto, version, "solo/x", payloads, 1)
        end = time.monotonic() + 3.5
        while time.monotonic() < end:
            c.loop(0.1)
            assert c.inbox_size <= 5
        assert lost == [] and c.inbox_peak == 5
        assert [c.recv(WAIT).payload for _ in payloads] == payloads
        assert lost == []
    finally:
        c.disconnect()


def test_async_callbacks_hold_their_places(mosquitto: Mosquitto, version: int) -> None:
    # An async def callback keeps its message's place (and its ack) until it
    # finishes: a slow one never has more than max_inbox tasks at once.
    async def main() -> None:
        c = AsyncClient(mosquitto.host, mosquitto.port, version=version, max_inbox=3, timeout=WAIT)
        running = 0
        most = 0
        done: list[bytes] = []
        go = asyncio.Event()

        async def slow(msg: Publish) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await go.wait()
            running -= 1
            done.append(msg.payload)

        async with c:
            await c.subscribe("cb/x", qos=1, callback=slow)
            payloads = [b"%d" % i for i in range(20)]
            await asyncio.to_thread(publish_all, mosquitto, version, "cb/x", payloads, 1)
            while running < 3:
                await asyncio.sleep(0.005)
            assert c.inbox_size == 3
            go.set()
            while len(done) < 20:
                await asyncio.sleep(0.005)
            assert sorted(done) == sorted(payloads)
            assert most == 3 and c.inbox_peak == 3 and c.dropped == 0

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_consumer_that_keeps_up_loses_no_qos0(mosquitto: Mosquitto, version: int) -> None:
    # Two places, far fewer than one read of the socket brings: a QoS 0
    # message is dropped only when the reader must read on while every place
    # is still taken, never because one read brought more than max_inbox.
    payloads = [b"%d" % i for i in range(300)]
    with Client(mosquitto.host, mosquitto.port, version=version, max_inbox=2) as c:
        c.subscribe("burst/x", qos=0)
        publish_all(mosquitto, version, "burst/x", payloads, 0)
        assert [c.recv(WAIT).payload for _ in payloads] == payloads  # one thread
        assert c.dropped == 0 and c.inbox_peak == 2

    async def main() -> None:
        async with AsyncClient(mosquitto.host, mosquitto.port, version=version, max_inbox=2) as c:
            await c.subscribe("burst/y", qos=0)
            stream = c.messages()

            async def consume() -> list[bytes]:
                return [(await stream.__anext__()).payload for _ in payloads]

            consumer = asyncio.create_task(consume())
            await asyncio.to_thread(publish_all, mosquitto, version, "burst/y", payloads, 0)
            assert await asyncio.wait_for(consumer, WAIT) == payloads
            assert c.dropped == 0 and c.inbox_peak == 2

    asyncio.run(asyncio.wait_for(main(), 60))
