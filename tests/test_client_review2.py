"""Both clients, second review: the application's own disconnect() as an event and as
the end of an iteration, an unsubscribe() cut off before its UNSUBACK, an on_auth
that raises, and the blocking client's calls from several threads. Each test names
the fault it guards."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import queue
import socket
import sys
import threading
import time
from typing import Any

import pytest
from conftest import FakeBrokerFactory, Mosquitto, arun
from fakebroker import (
    CONNECT,
    SUBSCRIBE,
    UNSUBSCRIBE,
    FakeConnection,
    accept_then_close,
    close,
    connack,
    connack_ok,
    expect_close,
    prop,
    recv,
    send,
)

from fieldline.mqtt import (
    AsyncClient,
    Client,
    ConnectionLost,
    LocalProtocolError,
    MQTTError,
    MQTTTimeout,
)

WAIT = 10.0


def _suback(conn: FakeConnection, version: int) -> None:
    # Read a SUBSCRIBE (remaining length < 128) and grant QoS 1 to its one filter.
    packet = conn.recv_packet()
    assert packet[0] >> 4 == SUBSCRIBE, packet
    body = packet[2:4] + (b"\x00" if version == 5 else b"") + b"\x01"
    conn.send(bytes([0x90, len(body)]) + body)


# -- 1. on_disconnect for the application's own disconnect() --------------------------


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
        _suback(conn, 5)
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


# -- 3. the blocking messages() ends on the application's own disconnect() ------------


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


# -- 4. an on_auth that raises ---------------------------------------------------------


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


# -- 2. an unsubscribe() cut off before its UNSUBACK ------------------------------------


def test_an_unsubscribe_cut_off_is_sent_again_on_the_resumed_session(
    fake_broker: FakeBrokerFactory, version: int, kind: str
) -> None:
    # The connection broke after the UNSUBSCRIBE went out, before its UNSUBACK:
    # unsubscribe() raised, and the client had forgotten the filter, but the
    # broker may not have: the session it resumes next keeps the subscription,
    # and its messages kept coming. The client unsubscribes again on it.
    def first(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.send(connack_ok(version))
        _suback(conn, version)
        conn.recv_packet()  # the UNSUBSCRIBE, never answered
        conn.close()

    def resumed(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.send(connack(0, True, properties=b"" if version == 5 else None))
        packet = conn.recv_packet()
        assert packet[0] >> 4 == UNSUBSCRIBE and b"review2/u" in packet, packet
        body = packet[2:4] + (b"\x00\x00" if version == 5 else b"")
        conn.send(bytes([0xB0, len(body)]) + body)

    broker = fake_broker(first, resumed)
    opts: dict[str, Any] = {
        "version": version,
        "client_id": "review2-u",
        "clean_start": version == 5,
        "session_expiry": 3600,
        "reconnect": False,
        "timeout": WAIT,
    }
    if kind == "blocking":
        c = Client(broker.host, broker.port, **opts)
        c.connect()
        c.subscribe("review2/u", qos=1)
        with pytest.raises(ConnectionLost):
            c.unsubscribe("review2/u")
        assert c.connect().session_present
        try:
            broker.connection(1).packets_received.wait(2, WAIT)
            deadline = time.monotonic() + WAIT
            while c._unsubs and time.monotonic() < deadline:  # until the UNSUBACK came
                c.loop(0.1)
            assert c._unsubs == {}
        finally:
            c.disconnect()
    else:

        async def main() -> None:
            c = AsyncClient(broker.host, broker.port, **opts)
            await c.connect()
            await c.subscribe("review2/u", qos=1)
            with pytest.raises(ConnectionLost):
                await c.unsubscribe("review2/u")
            assert (await c.connect()).session_present
            try:
                await broker.connection(1).packets_received.wait_async(2, WAIT)
                deadline = time.monotonic() + WAIT
                while c._unsubs and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                assert c._unsubs == {}
            finally:
                await c.disconnect()

        arun(main())
    broker.check()
    assert broker.connection(1).packets[1][0] >> 4 == UNSUBSCRIBE


# -- 5. the blocking client's calls from several threads --------------------------------


def test_requests_from_two_threads_never_share_correlation_data(mosquitto: Mosquitto) -> None:
    # request() ran prepare() outside the lock: a thread between counting its
    # request and reading the count for its Correlation Data let another thread
    # take the same, and the two requests took one response. A trace function
    # holds thread B there until thread A has prepared its request, at most 1 s
    # (with prepare() under the lock, A waits for B instead: no collision).
    prepare = importlib.import_module("fieldline.mqtt._client_request").prepare
    code = prepare.__code__
    lines, first = inspect.getsourcelines(prepare)
    at = first + next(i for i, line in enumerate(lines) if line.strip().startswith("corr ="))
    b_held = threading.Event()
    a_prepared = threading.Event()

    def hold_b(frame: Any, event: str, arg: Any) -> Any:
        def local(frame: Any, event: str, arg: Any) -> Any:
            if event == "line" and frame.f_lineno == at:
                b_held.set()
                a_prepared.wait(1.0)
            return local

        return local if frame.f_code is code else None

    def mark_a(frame: Any, event: str, arg: Any) -> Any:
        def local(frame: Any, event: str, arg: Any) -> Any:
            if event == "return":
                a_prepared.set()
            return local

        return local if frame.f_code is code else None

    server = Client(mosquitto.host, mosquitto.port, timeout=WAIT)
    server.connect()
    server.subscribe("review2/rpc", qos=1, callback=lambda m: server.respond(m, m.payload))
    server.loop_start()
    c = Client(mosquitto.host, mosquitto.port, timeout=WAIT)
    c.connect()
    c.loop_start()
    replies: dict[str, Any] = {}

    def ask(name: str, tracer: Any) -> None:
        sys.settrace(tracer)
        try:
            replies[name] = c.request("review2/rpc", name.encode(), timeout=3).payload
        except Exception as e:
            replies[name] = e
        finally:
            sys.settrace(None)

    b = threading.Thread(target=ask, args=("b", hold_b))
    a = threading.Thread(target=ask, args=("a", mark_a))
    try:
        b.start()
        assert b_held.wait(WAIT)
        a.start()
        a.join(WAIT)
        b.join(WAIT)
        assert replies == {"a": b"a", "b": b"b"}
    finally:
        c.disconnect()
        server.disconnect()


def test_a_failing_connect_does_not_undo_a_loop_stop_on_another_thread(
    fake_broker: FakeBrokerFactory,
) -> None:
    # connect() cleared _closing before it took the lock, even when it then
    # raised "already connected". loop_stop() sets _closing for the loop thread
    # to end and waits for it: cleared meanwhile, the thread went on
    # reconnecting and loop_stop() waited for ever. Here loop_stop() waits while
    # the loop thread's reconnect attempt waits for a CONNACK that never comes.
    broker = fake_broker(accept_then_close(4), [recv(CONNECT)])
    c = Client(broker.host, broker.port, version=4, timeout=2.0, backoff_min=0.05, backoff_max=0.1)
    c.connect()
    c.loop_start()
    broker.connection(1).packets_received.wait(1, WAIT)  # the attempt waits for its CONNACK
    stopper = threading.Thread(target=c.loop_stop)
    stopper.start()
    deadline = time.monotonic() + WAIT
    while not c._closing and time.monotonic() < deadline:  # loop_stop() is under way
        time.sleep(0.001)
    try:
        # The attempt's connection is open; or, loop_stop() having cut it
        # short by now, this attempt gets no CONNACK either.
        with pytest.raises((LocalProtocolError, MQTTTimeout)):
            c.connect(timeout=0.5)
        stopper.join(WAIT)  # the attempt is cut short, then the thread ends
        assert not stopper.is_alive(), "loop_stop() still waits for the loop thread"
    finally:
        c._closing = True  # lets a loop thread that went on end
        stopper.join(WAIT)
        c.disconnect()


# -- 6. reconnecting does not hold the lock while it dials ---------------------------------


def test_publish_is_not_held_while_the_loop_thread_dials(fake_broker: FakeBrokerFactory) -> None:
    # The loop thread dialled with the client's lock held: while a reconnect's
    # TCP connect waited (up to ``timeout``), publish(qos=1, timeout=0), which
    # only queues, waited too. Here the broker's address no longer answers
    # SYNs (a listener whose accept queue is full).
    go = threading.Event()

    def first(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.send(connack_ok(4))
        go.wait(WAIT)
        conn.close()

    broker = fake_broker(first)
    stalled = socket.socket()
    stalled.bind(("127.0.0.1", 0))
    stalled.listen(0)
    queued = socket.create_connection(stalled.getsockname())  # fills the accept queue
    lost = threading.Event()
    c = Client(
        broker.host, broker.port, version=4, timeout=3.0, backoff_min=0.001, backoff_max=0.002
    )
    c.on_disconnect = lambda e: lost.set()
    c.connect()
    c.loop_start()
    try:
        c.port = stalled.getsockname()[1]
        go.set()
        assert lost.wait(WAIT)
        end = time.monotonic() + 1.0  # the thread dials for 3 s from about now
        slowest = 0.0
        while time.monotonic() < end:
            t = time.monotonic()
            c.publish("review2/q", b"x", qos=1, timeout=0)
            with pytest.raises(MQTTTimeout):
                c.recv(timeout=0.05)  # also waits for the lock first
            slowest = max(slowest, time.monotonic() - t)
        assert slowest < 0.5, f"publish() and recv() waited {slowest:.1f} s for the dialling"
    finally:
        c.disconnect()
        queued.close()
        stalled.close()
