"""``Client.loop_start()`` across connections: connect(), loop_stop() and loop() while its
thread reconnects or waits out a delay, and calls made from its callbacks and from other
threads. Over real sockets, to a fake broker or Mosquitto."""

from __future__ import annotations

import importlib
import inspect
import socket
import sys
import threading
import time
from typing import Any

import pytest
from conftest import FakeBrokerFactory, Mosquitto
from fakebroker import CONNECT, PUBLISH, FakeConnection, accept_then_close, connack_ok, recv

from fieldline.mqtt import Client, ConnectionLost, LocalProtocolError, MQTTTimeout

WAIT = 10.0


def test_connect_after_a_final_loss_under_loop_start(
    fake_broker: FakeBrokerFactory, version: int
) -> None:
    # reconnect=False under loop_start(): the connection is lost, calls fail
    # with ConnectionLost, and the application connects again itself (as
    # paho users do). The loop thread had ended with the loss, and
    # loop_start() does nothing while it is set: connect() succeeded, but
    # nothing drove the new connection, and every later call raised the
    # old ConnectionLost at once. Now the thread waits for the next
    # connect(), as it does for the first.
    ok = connack_ok(version)

    def ack_publishes(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.send(ok)
        while True:
            p = conn.recv_packet(timeout=None)
            if p[0] >> 4 == PUBLISH:
                pid = p[4 + int.from_bytes(p[2:4], "big") : 6 + int.from_bytes(p[2:4], "big")]
                conn.send(b"\x40\x02" + pid)

    broker = fake_broker(accept_then_close(version), ack_publishes)
    c = Client(
        broker.host, broker.port, version=version, reconnect=False, keepalive=0, timeout=WAIT
    )
    lost = threading.Event()
    c.on_disconnect = lambda error: lost.set()
    c.connect()
    c.loop_start()
    try:
        assert lost.wait(WAIT)
        with pytest.raises(ConnectionLost):
            c.publish("review/t", b"x", timeout=WAIT)  # once the loss is final
        c.connect()
        assert c.publish("review/t", b"y", qos=1) is not None
    finally:
        c.disconnect()


def test_connect_during_a_reconnect_delay_under_loop_start(
    fake_broker: FakeBrokerFactory, version: int
) -> None:
    # The loop_start() thread waits out a reconnect delay; the application
    # calls connect() itself. While connect() waited for its CONNACK (the
    # lock let go), the loop thread woke, found the new socket and polled
    # it too: the shared poll object raised "concurrent poll() invocation"
    # (RuntimeError) and the loop thread died, leaving the new connection
    # undriven. Now the loop thread stands aside while connect() runs.
    ok = connack_ok(version)

    def ack_publishes(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.pause(1.5)  # connect() waits for the CONNACK meanwhile
        conn.send(ok)
        while True:
            p = conn.recv_packet(timeout=None)
            if p[0] >> 4 == PUBLISH:
                at = 4 + int.from_bytes(p[2:4], "big")
                conn.send(b"\x40\x02" + p[at : at + 2])

    broker = fake_broker(accept_then_close(version), ack_publishes)
    c = Client(broker.host, broker.port, version=version, keepalive=0, backoff_min=60, timeout=WAIT)
    lost = threading.Event()
    c.on_disconnect = lambda error: lost.set()
    c.connect()
    c.loop_start()
    try:
        assert lost.wait(WAIT)  # the loop thread now waits 30-60 s to reconnect
        c.connect()
        assert c.publish("review/t", b"y", qos=1) is not None
        assert c._io_thread is not None and c._io_thread.is_alive()
    finally:
        c.disconnect()


def test_request_from_a_callback_under_loop_start(mosquitto: Mosquitto) -> None:
    # A callback that makes a request() (a command handler asking another
    # service) runs on the loop_start() callback thread. The response was
    # routed to that same thread, behind the callback waiting for it: every
    # such request() timed out. The I/O thread now hands a response that a
    # request() waits for to its waiter at once.
    server = Client(mosquitto.host, mosquitto.port, timeout=WAIT)
    caller = Client(mosquitto.host, mosquitto.port, timeout=WAIT)
    outcome: list[object] = []
    done = threading.Event()

    def on_command(msg: Any) -> None:
        try:
            outcome.append(caller.request("review/rpc", b"?", timeout=WAIT).payload)
        except BaseException as e:
            outcome.append(e)
        done.set()

    with server, caller:
        server.subscribe("review/rpc", qos=1, callback=lambda req: server.respond(req, b"pong"))
        server.loop_start()
        caller.loop_start()
        caller.subscribe("review/cmd", qos=1, callback=on_command)
        caller.publish("review/cmd", b"go", qos=1)
        assert done.wait(2 * WAIT)
        assert outcome == [b"pong"]


def test_loop_stop_during_a_reconnect_delay_keeps_reconnecting(
    fake_broker: FakeBrokerFactory, version: int
) -> None:
    # loop_stop() while the loop thread waits out a reconnect delay: the
    # thread ends, and the application drives the connection with loop()
    # from then on, which must go on reconnecting. When loop_stop() set
    # _closing just as the thread entered _redial(), that raised to end the
    # thread, and the thread took it for a final loss: it cleared the
    # reconnect plan, so loop() raised "not connected" for good. The race
    # is made certain here by setting _closing at that very point.
    ok = connack_ok(version)

    def accept(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.send(ok)

    broker = fake_broker(accept_then_close(version), accept)
    c = Client(
        broker.host, broker.port, version=version, keepalive=0, backoff_min=0.6, timeout=WAIT
    )
    lost = threading.Event()
    c.on_disconnect = lambda error: lost.set()
    connacks: list[object] = []
    c.on_connect = connacks.append
    c.connect()
    c.loop_start()
    assert lost.wait(WAIT)
    redial = c._redial

    def raced(timeout: float) -> None:
        del c._redial  # once
        c._closing = True  # loop_stop() begins now
        redial(timeout)

    c._redial = raced  # type: ignore[method-assign]
    thread = c._io_thread
    assert thread is not None
    thread.join(WAIT)
    assert not thread.is_alive()
    c._closing = False
    c.loop_stop()
    deadline = time.monotonic() + WAIT
    while len(connacks) < 2 and time.monotonic() < deadline:
        c.loop(0.1)
    assert c.is_connected
    c.disconnect()


def test_loop_under_loop_start_waits_rather_than_drives(mosquitto: Mosquitto, version: int) -> None:
    # loop() (and loop_forever()) while loop_start() runs: the caller's
    # thread polled the socket that the loop thread polls too, and the
    # shared poll object raised "concurrent poll() invocation" in one of
    # them (a RuntimeError: in the loop thread, it died). Now loop() leaves
    # the connection to the loop thread and waits.
    c = Client(mosquitto.host, mosquitto.port, version=version, timeout=WAIT)
    c.connect()
    c.loop_start()
    try:
        for _ in range(10):
            c.loop(0.05)
        assert c._io_thread is not None and c._io_thread.is_alive()
        c.subscribe("review/l", qos=1)
        assert c.publish("review/l", b"1", qos=1) is not None
        assert c.recv(WAIT).payload == b"1"
    finally:
        c.disconnect()


def test_recv_from_a_callback_under_loop_start(mosquitto: Mosquitto, version: int) -> None:
    # A callback (on the loop_start() callback thread) waits with recv()
    # for a message that no callback takes. Such messages went to the
    # inbox through that same callback thread, queued behind the callback
    # waiting for them: recv() always timed out. The I/O thread now puts
    # them in the inbox itself (no user code runs there).
    c = Client(mosquitto.host, mosquitto.port, version=version, timeout=WAIT)
    outcome: list[object] = []
    done = threading.Event()

    def on_command(msg: Any) -> None:
        try:
            c.publish("review/follow", b"up", qos=1)
            outcome.append(c.recv(WAIT).payload)
        except BaseException as e:
            outcome.append(e)
        done.set()

    with c:
        c.loop_start()
        c.subscribe("review/follow", qos=1)
        c.subscribe("review/cmd", qos=1, callback=on_command)
        c.publish("review/cmd", b"go", qos=1)
        assert done.wait(2 * WAIT)
        assert outcome == [b"up"]


# -- the blocking client's calls from several threads --------------------------------


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


# -- reconnecting does not hold the lock while it dials ---------------------------------


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
