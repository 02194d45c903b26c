"""Both clients across connections, as a demanding user drives them: what the
``persistence`` hook sends, what waiters see when the client is closed, and
which error a later call reports. Each test names the fault it guards."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import pytest
from conftest import FakeBrokerFactory, Mosquitto, ProxyFactory, arun
from fakebroker import (
    CONNECT,
    DISCONNECT,
    PUBLISH,
    SUBSCRIBE,
    FakeConnection,
    accept_then_close,
    connack,
    connack_ok,
    suback_for,
)

from fieldline.mqtt import (
    AsyncClient,
    Client,
    ConnectionLost,
    LocalProtocolError,
    MQTTError,
    MQTTTimeout,
    PublishRefused,
    Will,
)

WAIT = 10.0


class MemoryStore:
    """The ``persistence`` contract in memory: what put() stored and done() did not
    take back, in put order."""

    def __init__(self) -> None:
        self.live: dict[int, tuple[Any, ...]] = {}
        self.keys = 0
        self.done_keys: list[int] = []

    def put(
        self, topic: str, payload: bytes, qos: int, retain: bool, properties: Any, pid: int
    ) -> int:
        self.keys += 1
        self.live[self.keys] = (topic, payload, qos, retain, properties, pid)
        return self.keys

    def done(self, key: int) -> None:
        self.done_keys.append(key)
        self.live.pop(key, None)

    def pending(self) -> list[tuple[int, tuple[Any, ...]]]:
        return sorted(self.live.items())


def drain(c: Client, seconds: float) -> list[bytes]:
    # Everything c receives until ``seconds`` pass without a message.
    got = []
    try:
        while True:
            got.append(c.recv(seconds).payload)
    except MQTTTimeout:
        return got


def test_a_message_queued_before_the_first_connect_goes_out_once(
    mosquitto: Mosquitto, version: int, kind: str
) -> None:
    # publish(qos=1, timeout=0) before connect() queues the message in the
    # session and stores it with ``persistence``. The first connect() then
    # loaded "the messages pending from an earlier run" from the store,
    # which held this one too: it went out twice, under two packet ids, and
    # done() was called twice for one key. Now the store is read before the
    # first message of this run is put: earlier messages first, each once.
    store = MemoryStore()
    store.put("review/p", b"earlier run", 1, False, None, 1)
    opts: dict[str, Any] = dict(version=version, persistence=store, timeout=WAIT)
    with Client(mosquitto.host, mosquitto.port, version=version, timeout=WAIT) as sub:
        sub.subscribe("review/p", qos=1)
        if kind == "blocking":
            c = Client(mosquitto.host, mosquitto.port, **opts)
            c.publish("review/p", b"offline", qos=1, timeout=0)
            c.connect()
            assert c.publish("review/p", b"online", qos=1) is not None
            c.disconnect()
        else:

            async def main() -> None:
                a = AsyncClient(mosquitto.host, mosquitto.port, **opts)
                await a.publish("review/p", b"offline", qos=1, timeout=0)
                await a.connect()
                assert await a.publish("review/p", b"online", qos=1) is not None
                await a.disconnect()

            arun(main())
        # "online" was acknowledged after the others were sent on this connection.
        assert drain(sub, 0.5) == [b"earlier run", b"offline", b"online"]
    assert store.live == {}
    assert sorted(store.done_keys) == [1, 2, 3]


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


def test_a_restore_cut_off_is_sent_again_on_a_resumed_session(
    fake_broker: FakeBrokerFactory, version: int, kind: str
) -> None:
    # The broker lost the session (connection 2: session present 0), so the
    # client subscribes again; the connection ends before the SUBACK. On
    # connection 3 the broker resumes the session that connection 2 made
    # (session present 1), which may lack the subscription: the client
    # once took the flag's word for it and never subscribed again, so the
    # subscription was gone for good without a word.
    def subscribed(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.send(connack_ok(version))
        conn.send(suback_for(conn.recv_packet(), version))
        conn.pause(0.2)
        conn.close()

    def lost_then_cut_off(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.send(connack_ok(version))
        conn.recv_packet()  # the SUBSCRIBE that restores it: no SUBACK
        conn.close()

    def resumed(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.send(connack_ok(version, session_present=True))

    broker = fake_broker(subscribed, lost_then_cut_off, resumed)
    opts: dict[str, Any] = dict(
        client_id="restorer",
        version=version,
        clean_start=version == 5,
        session_expiry=3600,
        keepalive=0,
        backoff_min=0.05,
        timeout=WAIT,
    )
    if kind == "blocking":
        c = Client(broker.host, broker.port, **opts)
        c.connect()
        c.subscribe("review/r", qos=1)
        deadline = time.monotonic() + WAIT
        while len(broker.connections) < 3 and time.monotonic() < deadline:
            c.loop(0.1)
        third = broker.connection(2)
        while third.packets_received.value < 2 and time.monotonic() < deadline:
            c.loop(0.1)
        c.disconnect()
    else:

        async def main() -> None:
            a = AsyncClient(broker.host, broker.port, **opts)
            await a.connect()
            await a.subscribe("review/r", qos=1)
            await broker.accepted.wait_async(3, WAIT)
            with contextlib.suppress(TimeoutError):
                await broker.connection(2).packets_received.wait_async(2, 2.0)
            await a.disconnect()

        arun(main())
    third = broker.connection(2)
    types = [p[0] >> 4 for p in third.packets]
    assert SUBSCRIBE in types, types


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


def test_an_invalid_subscribe_does_not_poison_reconnects(
    mosquitto: Mosquitto, tcp_proxy: ProxyFactory, version: int, kind: str
) -> None:
    # subscribe() remembered its filters (to restore them when the broker
    # loses the session) before they were checked. An invalid one raised
    # LocalProtocolError, as it should, but stayed remembered: every later
    # reconnection (clean start here, so the broker has no session) sent
    # it again, failed, and the client never reconnected again.
    proxy = tcp_proxy(mosquitto)
    opts: dict[str, Any] = dict(version=version, backoff_min=0.05, timeout=WAIT)
    with Client(mosquitto.host, mosquitto.port, version=version, timeout=WAIT) as peer:
        if kind == "blocking":
            c = Client(proxy.host, proxy.port, **opts)
            c.connect()
            with pytest.raises(LocalProtocolError):
                c.subscribe("review/#/bad", qos=1)
            c.subscribe("review/ok", qos=1)
            proxy.drop()
            c.subscribe("review/ok2", qos=1)  # once reconnected (or it raises)
            peer.publish("review/ok", b"restored", qos=1)
            assert c.recv(WAIT).payload == b"restored"
            c.disconnect()
        else:

            async def main() -> None:
                a = AsyncClient(proxy.host, proxy.port, **opts)
                stream = a.messages()
                await a.connect()
                with pytest.raises(LocalProtocolError):
                    await a.subscribe("review/#/bad", qos=1)
                await a.subscribe("review/ok", qos=1)
                proxy.drop()
                await a.subscribe("review/ok2", qos=1)  # once reconnected
                peer.publish("review/ok", b"restored", qos=1)
                msg = await asyncio.wait_for(stream.__anext__(), WAIT)
                assert msg.payload == b"restored"
                await a.disconnect()

            arun(main())


def test_a_subscribe_that_timed_out_offline_is_sent_on_a_resumed_session(
    fake_broker: FakeBrokerFactory, version: int, kind: str
) -> None:
    # subscribe() while the client waits to reconnect times out: it raises
    # MQTTTimeout but remembers the subscription, to restore it. It was
    # restored only if the broker had lost the session; on a resumed one
    # (session present 1) it was never sent, though its callback and
    # route stayed: the subscription silently half-existed.
    def subscribed(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.send(connack_ok(version))
        conn.send(suback_for(conn.recv_packet(), version))
        conn.close()

    def resumed(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.send(connack_ok(version, session_present=True))

    broker = fake_broker(subscribed, resumed)
    opts: dict[str, Any] = dict(
        client_id="late",
        version=version,
        clean_start=version == 5,
        session_expiry=3600,
        keepalive=0,
        backoff_min=2.0,
        timeout=WAIT,
    )
    if kind == "blocking":
        c = Client(broker.host, broker.port, **opts)
        lost: list[BaseException | None] = []
        c.on_disconnect = lost.append
        c.connect()
        c.subscribe("review/a", qos=1)
        deadline = time.monotonic() + WAIT
        while not lost and time.monotonic() < deadline:
            c.loop(0.1)
        with pytest.raises(MQTTTimeout):
            c.subscribe("review/b", qos=1, timeout=0.1)  # the delay is 1-2 s
        while broker.accepted.value < 2 and time.monotonic() < deadline:
            c.loop(0.1)
        second = broker.connection(1)
        while second.packets_received.value < 2 and time.monotonic() < deadline:
            c.loop(0.1)
        c.disconnect()
    else:

        async def main() -> None:
            a = AsyncClient(broker.host, broker.port, **opts)
            down = asyncio.Event()
            a.on_disconnect = lambda error: down.set()
            await a.connect()
            await a.subscribe("review/a", qos=1)
            await asyncio.wait_for(down.wait(), WAIT)
            with pytest.raises(MQTTTimeout):
                await a.subscribe("review/b", qos=1, timeout=0.1)  # the delay is 1-2 s
            await broker.accepted.wait_async(2, WAIT)
            with contextlib.suppress(TimeoutError):
                await broker.connection(1).packets_received.wait_async(2, 2.0)
            await a.disconnect()

        arun(main())
    second = broker.connection(1)
    subscribes = [p for p in second.packets if p[0] >> 4 == SUBSCRIBE]
    assert len(subscribes) == 1 and b"review/b" in subscribes[0], second.packets


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


def test_a_resent_message_over_a_lowered_maximum_qos_fails(fake_broker: FakeBrokerFactory) -> None:
    # MQTT 5.0: a QoS 2 message went out on connection 1; on connection 2
    # the broker resumes the session but now announces Maximum QoS 1. The
    # client resent the message anyway (DUP), which MQTT-3.2.2-11 forbids:
    # a broker answers it with DISCONNECT 0x9B, and the client reconnected
    # and resent it for ever. It now fails with 0x9B, as a message queued
    # before such a CONNACK does.
    def first(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.send(connack(0, properties=b""))
        conn.recv_packet()  # the QoS 2 PUBLISH: no PUBREC
        conn.close()

    def lowered(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.send(connack(0, session_present=True, properties=b"\x24\x01"))

    broker = fake_broker(first, lowered)
    c = Client(
        broker.host,
        broker.port,
        client_id="q2",
        session_expiry=60,
        keepalive=0,
        backoff_min=0.05,
        timeout=WAIT,
    )
    c.connect()
    with pytest.raises(PublishRefused) as e:
        c.publish("review/q2", b"x", qos=2)
    assert e.value.reason_code == 0x9B
    c.disconnect()
    second = broker.connection(1)
    second.finished.wait(1, WAIT)
    assert [p[0] >> 4 for p in second.packets] == [CONNECT, DISCONNECT]


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


def test_restoring_many_subscriptions_fits_the_maximum_packet_size(
    fake_broker: FakeBrokerFactory, kind: str
) -> None:
    # MQTT 5.0, a broker with a small Maximum Packet Size: three SUBSCRIBEs
    # of one filter each fit. When the broker lost the session, the client
    # restored them in one SUBSCRIBE, too large for it: the attempt failed,
    # and so did every later one, for ever. A restore too large at once now
    # goes one subscription per SUBSCRIBE.
    limit = b"\x27" + (48).to_bytes(4, "big")
    filters = [f"review/restore/{n}/abcdefghij" for n in range(3)]

    def serve(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.send(connack(0, properties=limit))
        for _ in filters:
            conn.send(suback_for(conn.recv_packet(), 5))
        if conn.index == 0:
            conn.close()

    broker = fake_broker(serve)
    opts: dict[str, Any] = dict(keepalive=0, backoff_min=0.05, timeout=WAIT)
    if kind == "blocking":
        c = Client(broker.host, broker.port, **opts)
        c.connect()
        for f in filters:
            c.subscribe(f, qos=1)
        deadline = time.monotonic() + WAIT
        while len(broker.connections) < 2 and time.monotonic() < deadline:
            c.loop(0.1)
        second = broker.connection(1)
        while second.packets_received.value < 4 and time.monotonic() < deadline:
            c.loop(0.1)
        c.disconnect()
    else:

        async def main() -> None:
            a = AsyncClient(broker.host, broker.port, **opts)
            await a.connect()
            for f in filters:
                await a.subscribe(f, qos=1)
            await broker.accepted.wait_async(2, WAIT)
            with contextlib.suppress(TimeoutError):
                await broker.connection(1).packets_received.wait_async(4, WAIT)
            await a.disconnect()

        arun(main())
    assert broker.accepted.value == 2
    second = broker.connection(1)
    assert [p[0] >> 4 for p in second.packets[:4]] == [CONNECT] + [SUBSCRIBE] * 3
