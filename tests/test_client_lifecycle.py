"""Both clients as connections end: what the application hears (on_disconnect, the error a
later call reports), what waits on the client (calls, streams, ``messages()``) when it is
closed, DISCONNECT sent even with refused properties, and a failing attempt (after its
CONNACK, an on_auth that raises, a connect() during a reconnect delay). Over real sockets,
to a fake broker or Mosquitto."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Any

import pytest
from conftest import FakeBrokerFactory, Mosquitto, arun
from fakebroker import (
    CONNECT,
    DISCONNECT,
    FakeConnection,
    accept_then_close,
    close,
    connack,
    connack_ok,
    expect_close,
    prop,
    recv,
    send,
    suback_for,
)

from fieldline.mqtt import AsyncClient, Client, ConnectionLost, LocalProtocolError, MQTTError, Will

WAIT = 10.0


def test_disconnect_wakes_a_call_waiting_for_a_connection(
    fake_broker: FakeBrokerFactory, version: int
) -> None:
    # AsyncClient: while the client waits out a reconnect delay, a QoS 0
    # publish() and a subscribe() wait for the connection to come back.
    # disconnect() woke the waiters for acks, room in the queue and
    # streams, but not these: they slept out their whole timeout and then
    # raised MQTTTimeout, not ConnectionLost.
    broker = fake_broker(accept_then_close(version))

    async def main() -> None:
        c = AsyncClient(
            broker.host, broker.port, version=version, keepalive=0, backoff_min=60, timeout=WAIT
        )
        down = asyncio.Event()
        c.on_disconnect = lambda error: down.set()
        await c.connect()
        await asyncio.wait_for(down.wait(), WAIT)  # now waiting 30-60 s to reconnect
        waiters = [
            asyncio.create_task(c.publish("review/q0", b"x", qos=0, timeout=60)),
            asyncio.create_task(c.subscribe("review/#", qos=1, timeout=60)),
        ]
        await asyncio.sleep(0)  # both wait for the connection now
        start = time.monotonic()
        await c.disconnect()
        done, _ = await asyncio.wait(waiters, timeout=WAIT)
        assert len(done) == 2, "a waiter slept on after disconnect()"
        for t in waiters:
            assert isinstance(t.exception(), ConnectionLost)
        assert time.monotonic() - start < WAIT

    arun(main())


def test_a_call_after_disconnect_reports_no_stale_failure(
    fake_broker: FakeBrokerFactory, version: int, kind: str
) -> None:
    # Connection 1 is lost; the first reconnect attempt is refused (not
    # authorized, say the credentials were being rotated); the second one
    # succeeds. After disconnect(), a publish() raised that old refusal,
    # NotAuthorized, as if the credentials were wrong now: ``_error`` (why
    # the last connection ended) outlived the connection that succeeded.
    refused = connack(5) if version == 4 else connack(0x87, properties=b"")
    ok = connack_ok(version)

    def refuse(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.send(refused)
        conn.close()

    def accept(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.send(ok)

    broker = fake_broker(accept_then_close(version), refuse, accept)
    opts: dict[str, Any] = dict(version=version, keepalive=0, backoff_min=0.05, timeout=WAIT)
    error: BaseException | None = None
    if kind == "blocking":
        c = Client(broker.host, broker.port, **opts)
        connacks: list[object] = []
        c.on_connect = connacks.append
        c.connect()
        deadline = time.monotonic() + WAIT
        while len(connacks) < 2 and time.monotonic() < deadline:
            c.loop(0.1)
        assert len(connacks) == 2
        broker.accepted.wait(3, WAIT)
        c.disconnect()
        try:
            c.publish("review/after", b"x")
        except MQTTError as e:
            error = e
    else:

        async def main() -> BaseException | None:
            a = AsyncClient(broker.host, broker.port, **opts)
            up = asyncio.Event()
            a.on_connect = lambda connack: up.set()
            await a.connect()
            up.clear()
            await asyncio.wait_for(up.wait(), WAIT)  # the third connection
            await broker.accepted.wait_async(3, WAIT)
            await a.disconnect()
            try:
                await a.publish("review/after", b"x")
            except MQTTError as e:
                return e
            return None

        error = arun(main())
    assert type(error) is ConnectionLost, repr(error)


def test_a_stream_outlives_the_unsubscribe_of_its_filter(
    mosquitto: Mosquitto, version: int
) -> None:
    # messages(filter) routes a filter to a stream; subscribe() and
    # unsubscribe() decide what the broker sends. unsubscribe() of the
    # same filter once dropped the stream's route with the callbacks': the
    # messages it still held kept their places for good (close() no longer
    # found the stream), and the stream was no longer woken when the client
    # disconnected, so ``async for`` over it hung for ever.
    async def main() -> None:
        c = AsyncClient(mosquitto.host, mosquitto.port, version=version, timeout=WAIT)
        await c.connect()
        await c.subscribe("review/s/#", qos=1)
        stream = c.messages("review/s/#")
        for n in range(2):
            await c.publish(f"review/s/{n}", b"%d" % n, qos=1)
        assert (await asyncio.wait_for(stream.__anext__(), WAIT)).payload == b"0"
        while c.inbox_size < 1:  # until message 1 waits in the stream
            await asyncio.sleep(0.01)
        await c.unsubscribe("review/s/#")
        stream.close()  # its unread message gives up its place
        assert c.inbox_size == 0

        stream = c.messages("review/t/#")
        await c.subscribe("review/t/#", qos=1)
        await c.unsubscribe("review/t/#")
        waiting = asyncio.create_task(stream.__anext__())
        await asyncio.sleep(0)  # it waits for a message now
        await c.disconnect()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, WAIT)

    arun(main())


def test_a_failed_connect_during_a_reconnect_delay_keeps_reconnecting(
    fake_broker: FakeBrokerFactory, version: int
) -> None:
    # AsyncClient, reconnect=True: connect() while the connection task
    # waits out a reconnect delay replaces that task and reconnects at
    # once. When that attempt failed (the broker still down), the task was
    # gone for good: the client never reconnected by itself again, and
    # everything waiting for the connection waited in vain.
    ok = connack_ok(version)

    def fail(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.close()

    def accept(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.send(ok)

    broker = fake_broker(accept_then_close(version), fail, accept)

    async def main() -> None:
        c = AsyncClient(
            broker.host, broker.port, version=version, keepalive=0, backoff_min=0.2, timeout=WAIT
        )
        up = asyncio.Event()
        manual: list[asyncio.Task[Any]] = []

        async def connect_now() -> None:
            with pytest.raises(ConnectionLost):
                await c.connect()  # connection 2: closed before its CONNACK

        def on_disconnect(error: BaseException | None) -> None:
            if not manual:  # the task is about to wait out its delay
                manual.append(asyncio.create_task(connect_now()))

        c.on_disconnect = on_disconnect
        c.on_connect = lambda connack: up.set()
        await c.connect()
        up.clear()
        await asyncio.wait_for(up.wait(), WAIT)  # connection 3, by the client itself
        await manual[0]
        await broker.accepted.wait_async(3, WAIT)
        await c.disconnect()

    arun(main())


def test_close_ends_a_stream_being_iterated(mosquitto: Mosquitto, version: int) -> None:
    # A task iterates a messages() stream; another closes it (shutting the
    # consumer down). close() took the stream off its route but did not
    # wake it: the iteration waited for ever, even after disconnect(),
    # which wakes only the streams still routed.
    async def main() -> None:
        c = AsyncClient(mosquitto.host, mosquitto.port, version=version, timeout=WAIT)
        await c.connect()
        for topic_filter in ("review/c/#", None):
            stream = c.messages(topic_filter)
            waiting = asyncio.create_task(stream.__anext__())
            await asyncio.sleep(0)  # it waits for a message now
            stream.close()
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(waiting, WAIT)
        await c.disconnect()

    arun(main())


def test_disconnect_with_refused_properties_still_sends_disconnect(
    fake_broker: FakeBrokerFactory, version: int, kind: str
) -> None:
    # disconnect(properties={"session_expiry_interval": 100}) on a
    # connection whose CONNECT set none is a protocol error (MQTT-3.14.2-2).
    # The client swallowed it and closed the socket without any DISCONNECT:
    # the broker took that for a lost client and published the will, the
    # opposite of what the application asked. Now a plain DISCONNECT still
    # goes out, and disconnect() raises the LocalProtocolError once closed.
    ok = connack_ok(version)
    broker = fake_broker(lambda conn: (conn.recv_packet(), conn.send(ok)))
    opts: dict[str, Any] = dict(
        version=version, keepalive=0, timeout=WAIT, will=Will("review/will", b"gone")
    )
    bad = {"session_expiry_interval": 100}
    if kind == "blocking":
        c = Client(broker.host, broker.port, **opts)
        c.connect()
        with pytest.raises(LocalProtocolError):
            c.disconnect(properties=bad)
        assert not c.is_connected
    else:

        async def main() -> None:
            a = AsyncClient(broker.host, broker.port, **opts)
            await a.connect()
            with pytest.raises(LocalProtocolError):
                await a.disconnect(properties=bad)
            assert not a.is_connected

        arun(main())
    conn = broker.connection(0)
    conn.finished.wait(1, WAIT)
    assert [p[0] >> 4 for p in conn.packets] == [CONNECT, DISCONNECT]


# -- on_disconnect for the application's own disconnect() --------------------------


def test_on_disconnect_hears_of_the_applications_own_disconnect(
    mosquitto: Mosquitto, version: int, kind: str
) -> None:
    # on_disconnect was called only for a connection that broke: the
    # application's disconnect() ended the connection without a word, though the
    # attribute's comment says "exception or None" (paho calls it too).
    events: list[Any] = []
    opts: dict[str, Any] = {"version": version, "timeout": WAIT}
    if kind == "blocking":
        c = Client(mosquitto.host, mosquitto.port, **opts)
        c.on_disconnect = events.append
        c.connect()
        c.disconnect()
        c.disconnect()  # nothing left to end: no second event
    else:

        async def main() -> None:
            c = AsyncClient(mosquitto.host, mosquitto.port, **opts)
            c.on_disconnect = events.append
            await c.connect()
            await c.disconnect()
            await c.disconnect()

        arun(main())
    assert events == [None]


def test_an_attempt_failing_after_its_connack_is_no_clean_close(
    fake_broker: FakeBrokerFactory, kind: str
) -> None:
    # The CONNACK accepted the connection, then restoring the subscriptions
    # failed (too large for the broker's new Maximum Packet Size): _open() closed
    # it with error None, which on_disconnect must not report as the
    # application's own disconnect(). It gets the error.
    long_filter = "a/filter/longer/than/thirty/bytes/#"
    small = connack(0, properties=b"\x27" + (30).to_bytes(4, "big"))

    def first(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.send(connack_ok(5))
        conn.send(suback_for(conn.recv_packet(), 5))
        conn.close()

    broker = fake_broker(first, [lambda conn: conn.recv_packet(), lambda conn: conn.send(small)])
    events: queue.Queue[Any] = queue.Queue()
    opts: dict[str, Any] = {"version": 5, "timeout": WAIT, "backoff_min": 0.05, "backoff_max": 0.1}
    if kind == "blocking":
        c = Client(broker.host, broker.port, **opts)
        c.on_disconnect = events.put
        c.connect()
        c.subscribe(long_filter, qos=1)
        c.loop_start()
        try:
            first_loss = events.get(timeout=WAIT)
            failed = events.get(timeout=WAIT)
        finally:
            c.disconnect()
    else:

        async def main() -> tuple[Any, Any]:
            c = AsyncClient(broker.host, broker.port, **opts)
            c.on_disconnect = events.put
            await c.connect()
            await c.subscribe(long_filter, qos=1)
            try:
                a = await asyncio.to_thread(events.get, timeout=WAIT)
                return a, await asyncio.to_thread(events.get, timeout=WAIT)
            finally:
                await c.disconnect()

        first_loss, failed = arun(main())
    assert isinstance(first_loss, MQTTError)
    assert isinstance(failed, MQTTError) and failed.reason_code == 0x95, failed
    broker.connection(1).finished.wait(1, WAIT)
    assert CONNECT == broker.connection(1).packets[0][0] >> 4


# -- the blocking messages() ends on the application's own disconnect() ------------


def test_blocking_messages_end_on_own_disconnect(mosquitto: Mosquitto, version: int) -> None:
    # The async streams end when the client disconnects; the blocking
    # messages() raised ConnectionLost instead, on the iterating thread too.
    c = Client(mosquitto.host, mosquitto.port, version=version, timeout=WAIT)
    c.connect()
    c.subscribe("review2/it", qos=1)
    c.loop_start()
    got: list[bytes] = []
    failed: list[BaseException] = []
    first = threading.Event()

    def iterate() -> None:
        try:
            for msg in c.messages():
                got.append(msg.payload)
                first.set()
        except BaseException as e:
            failed.append(e)

    t = threading.Thread(target=iterate)
    t.start()
    c.publish("review2/it", b"1", qos=1)
    assert first.wait(WAIT)
    c.disconnect()
    t.join(WAIT)
    assert not t.is_alive() and failed == [] and got == [b"1"]
    assert list(c.messages()) == []  # after disconnect() too, on one thread


def test_blocking_messages_still_raise_on_a_real_loss(fake_broker: FakeBrokerFactory) -> None:
    # A connection lost for good (reconnect off) is an error, as for the async
    # streams: only the application's own disconnect() ends the iteration.
    broker = fake_broker(accept_then_close(4))
    c = Client(broker.host, broker.port, version=4, reconnect=False, timeout=WAIT)
    c.connect()
    with pytest.raises(ConnectionLost):
        list(c.messages())
    c.disconnect()


# -- an on_auth that raises ---------------------------------------------------------


def test_an_on_auth_that_raises_fails_the_attempt_not_the_thread(
    fake_broker: FakeBrokerFactory, kind: str
) -> None:
    # on_auth runs on the loop_start() thread (the connection task) when it
    # reconnects; a ValueError from it escaped the handlers of MQTTError and
    # OSError and ended that thread: the client never connected again. It now
    # fails that attempt, with an MQTTError, and the next one goes ahead.
    method = prop(0x15, b"TOKEN-X")
    challenge = method + prop(0x16, b"nonce")
    auth = b"\xf0" + bytes([2 + len(challenge), 0x18, len(challenge)]) + challenge
    accepted = connack(0, properties=method)
    good = [recv(CONNECT), send(auth), recv(15), send(accepted), close()]
    bad = [recv(CONNECT), send(auth), expect_close()]
    broker = fake_broker(good, bad, good)
    answers: list[int] = []
    connected: queue.Queue[Any] = queue.Queue()

    def on_auth(packet: Any) -> bytes:
        answers.append(1)
        if len(answers) == 2:
            raise ValueError("a bug in the application's on_auth")
        return b"answer"

    opts: dict[str, Any] = {
        "version": 5,
        "auth_method": "TOKEN-X",
        "timeout": WAIT,
        "backoff_min": 0.05,
        "backoff_max": 0.1,
    }
    if kind == "blocking":
        c = Client(broker.host, broker.port, **opts)
        c.on_auth = on_auth
        c.on_connect = connected.put
        c.connect()
        c.loop_start()
        try:
            connected.get(timeout=WAIT)
            connected.get(timeout=WAIT)  # the third connection
        finally:
            c.disconnect()
    else:

        async def main() -> None:
            c = AsyncClient(broker.host, broker.port, **opts)
            c.on_auth = on_auth
            c.on_connect = connected.put
            await c.connect()
            try:
                await asyncio.to_thread(connected.get, timeout=WAIT)
                await asyncio.to_thread(connected.get, timeout=WAIT)
            finally:
                await c.disconnect()

        arun(main())
    assert len(answers) == 3
    broker.connection(1).finished.wait(1, WAIT)
    assert broker.connection(1).error is None  # the client closed the failed attempt


def test_an_on_auth_that_raises_in_connect_raises_an_mqtt_error(
    fake_broker: FakeBrokerFactory,
) -> None:
    method = prop(0x15, b"TOKEN-X")
    auth = b"\xf0" + bytes([2 + len(method), 0x18, len(method)]) + method
    broker = fake_broker([recv(CONNECT), send(auth), expect_close()])

    def on_auth(packet: Any) -> bytes:
        raise ValueError("a bug in the application's on_auth")

    c = Client(broker.host, broker.port, version=5, auth_method="TOKEN-X", timeout=WAIT)
    c.on_auth = on_auth
    with pytest.raises(MQTTError) as e:
        c.connect()
    assert isinstance(e.value.__cause__, ValueError) and "on_auth raised" in e.value.message
    broker.connection(0).finished.wait(1, WAIT)
    broker.check()
