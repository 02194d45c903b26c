"""The asyncio AsyncClient against a real Mosquitto, with paho-mqtt as the peer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import FakeBrokerFactory, Mosquitto, MosquittoFactory, ProxyFactory, arun
from fakebroker import CONNECT, close, connack, pause, recv, send
from paho_peer import PahoPeer

from fieldline.mqtt import (
    AsyncClient,
    ConnectionLost,
    LocalProtocolError,
    NotAuthorized,
    PacketTooLarge,
    Publish,
    QueueFull,
)

WAIT = 10.0


def aclient(broker: Mosquitto, version: int, **kwargs: Any) -> AsyncClient:
    kwargs.setdefault("timeout", WAIT)
    return AsyncClient(broker.host, broker.port, version=version, **kwargs)


def test_qos_0_1_2_both_ways_with_paho(mosquitto: Mosquitto, version: int) -> None:
    peer = PahoPeer(mosquitto.host, mosquitto.port, version)
    peer.subscribe("to-paho/#", 2)

    async def main() -> None:
        async with aclient(mosquitto, version) as c:
            assert await c.subscribe("to-us/#", qos=2) == [2]
            stream = c.messages()
            for qos in (0, 1, 2):
                ack = await c.publish(f"to-paho/{qos}", b"ours %d" % qos, qos=qos)
                assert (ack is None) == (qos == 0)
                await asyncio.to_thread(peer.publish, f"to-us/{qos}", b"paho %d" % qos, qos)
                m = await stream.__anext__()
                assert (m.topic, m.payload, m.qos) == (f"to-us/{qos}", b"paho %d" % qos, qos)

    try:
        arun(main())
        seen = sorted((m.topic, m.payload, m.qos) for m in peer.expect(3))
        assert seen == [(f"to-paho/{q}", b"ours %d" % q, q) for q in (0, 1, 2)]
    finally:
        peer.close()


def test_filtered_streams_and_callbacks(mosquitto: Mosquitto, version: int) -> None:
    async def main() -> None:
        async with aclient(mosquitto, version) as c:
            sync_got: list[Publish] = []
            async_got: list[Publish] = []
            done = asyncio.Event()

            async def slow_async_callback(m: Publish) -> None:
                await asyncio.sleep(0)
                async_got.append(m)
                done.set()

            await c.subscribe("cb/sync", qos=1, callback=sync_got.append)
            await c.subscribe("cb/async", qos=1, callback=slow_async_callback)
            await c.subscribe("stream/#", qos=1)
            stream = c.messages("stream/#")
            await c.publish("cb/sync", b"s", qos=1)
            await c.publish("cb/async", b"a", qos=1)
            await c.publish("stream/1", b"x", qos=1)
            m = await stream.__anext__()
            assert m.payload == b"x"
            await asyncio.wait_for(done.wait(), WAIT)
            assert [m.payload for m in sync_got] == [b"s"]
            assert [m.payload for m in async_got] == [b"a"]
            stream.close()

    arun(main())


def test_async_for_ends_on_disconnect(mosquitto: Mosquitto, version: int) -> None:
    async def main() -> None:
        c = aclient(mosquitto, version)
        await c.connect()
        await c.subscribe("end/#", qos=1)
        await c.publish("end/1", b"1", qos=1)
        got = []
        async for m in c.messages():
            got.append(m.payload)
            await c.disconnect()
        assert got == [b"1"]

    arun(main())


def test_wrong_credentials(mosquitto_factory: MosquittoFactory, version: int) -> None:
    broker = mosquitto_factory(extra_config=["allow_anonymous false"])

    async def main() -> None:
        with pytest.raises(NotAuthorized) as e:
            await aclient(broker, version, username="x", password=b"y").connect()
        assert e.value.reason_code in (0x86, 0x87)

    arun(main())


def test_queue_full_and_packet_too_large(mosquitto_factory: MosquittoFactory) -> None:
    broker = mosquitto_factory(extra_config=["max_packet_size 1000"])

    async def main() -> None:
        async with aclient(broker, 5, max_queued=2, queue_policy="raise") as c:
            with pytest.raises(PacketTooLarge):
                await c.publish("big", b"x" * 2000, qos=1)
            await c.publish("q", b"1", qos=1, timeout=0)
            await c.publish("q", b"2", qos=1, timeout=0)
            with pytest.raises(QueueFull):
                await c.publish("q", b"3", qos=1, timeout=0)

    arun(main())


def test_queue_policy_block(mosquitto: Mosquitto, version: int) -> None:
    async def main() -> None:
        async with aclient(mosquitto, version, max_queued=2) as c:
            for i in range(20):
                await c.publish("q", b"%d" % i, qos=1, timeout=0)
                assert c.session.inflight <= 2

    arun(main())


def test_connection_drop_mid_stream_loses_nothing(
    mosquitto_factory: MosquittoFactory, tcp_proxy: ProxyFactory, version: int
) -> None:
    # See the blocking client's test for the Mosquitto settings.
    broker = mosquitto_factory(extra_config=["max_inflight_messages 0"])
    proxy = tcp_proxy(broker)
    opts: dict[str, Any] = {
        "clean_start": version == 5,
        "session_expiry": 3600,
        "backoff_min": 0.05,
        "backoff_max": 0.2,
        "timeout": WAIT,
        "version": version,
    }

    async def main() -> None:
        states: list[str] = []
        sub = AsyncClient(proxy.host, proxy.port, client_id="asub", **opts)
        pub = AsyncClient(proxy.host, proxy.port, client_id="apub", **opts)
        pub.on_disconnect = lambda e: states.append("down")
        pub.on_connect = lambda ack: states.append("up")
        await sub.connect()
        await sub.subscribe("chaos/#", qos=2)
        await pub.connect()
        stream = sub.messages()
        acks = []
        for i in range(60):
            if i == 20:
                proxy.drop()
            acks.append(asyncio.create_task(pub.publish("chaos/x", b"%d" % i, qos=1 + i % 2)))
            await asyncio.sleep(0)
        for a in acks:
            assert (await a).reason_code < 0x80
        got: list[bytes] = []
        while len(set(got)) < 60:
            got.append((await asyncio.wait_for(stream.__anext__(), WAIT)).payload)
        await pub.publish("chaos/x", b"end", qos=1)
        while got[-1] != b"end":
            got.append((await asyncio.wait_for(stream.__anext__(), WAIT)).payload)
        await sub.disconnect()
        await pub.disconnect()
        assert states[:3] == ["up", "down", "up"]
        payloads = got[:-1]
        assert sorted(set(payloads), key=int) == [b"%d" % i for i in range(60)]
        qos2 = [p for p in payloads if int(p) % 2]
        assert len(qos2) == len(set(qos2)) == 30, "QoS 2 duplicates"

    arun(main())
    assert proxy.established.value >= 4


def test_reconnect_off_fails_waiters(mosquitto: Mosquitto, version: int) -> None:
    async def main() -> None:
        c = aclient(mosquitto, version, reconnect=False)
        await c.connect()
        await asyncio.to_thread(mosquitto.stop)
        with pytest.raises(ConnectionLost):
            for _ in range(100):
                await c.publish("x", b"1", qos=1)
        with pytest.raises(ConnectionLost):
            await c.publish("x", b"1", qos=0)

    arun(main())


def test_v5_request_and_respond(mosquitto: Mosquitto) -> None:
    async def main() -> None:
        async with aclient(mosquitto, 5) as server, aclient(mosquitto, 5) as caller:

            async def answer(m: Publish) -> None:
                await server.respond(m, b"pong:" + m.payload)

            await server.subscribe("rpc/ping", qos=1, callback=answer)
            replies = await asyncio.gather(
                *(caller.request("rpc/ping", b"%d" % i) for i in range(5))
            )
            assert [r.payload for r in replies] == [b"pong:%d" % i for i in range(5)]

    arun(main())


def test_drop_oldest_fails_the_dropped_publish(
    mosquitto: Mosquitto, tcp_proxy: ProxyFactory, version: int
) -> None:
    proxy = tcp_proxy(mosquitto)

    async def main() -> None:
        c = AsyncClient(
            proxy.host,
            proxy.port,
            version=version,
            max_queued=2,
            queue_policy="drop_oldest",
            backoff_min=0.05,
            backoff_max=0.1,
            timeout=WAIT,
        )
        gone = asyncio.Event()
        c.on_disconnect = lambda e: gone.set()
        await c.connect()
        await asyncio.to_thread(proxy.refuse)
        await asyncio.to_thread(proxy.drop)
        await asyncio.wait_for(gone.wait(), WAIT)
        first = asyncio.create_task(c.publish("d", b"0", qos=1))
        await asyncio.sleep(0)
        rest = [asyncio.create_task(c.publish("d", b"%d" % i, qos=1)) for i in (1, 2)]
        with pytest.raises(QueueFull):
            await first  # pushed out by message 2
        await asyncio.to_thread(proxy.accept)
        for r in rest:
            assert (await r).reason_code < 0x80
        await c.disconnect()

    arun(main())


def test_many_concurrent_publishers_share_a_small_queue(mosquitto: Mosquitto, version: int) -> None:
    # 300 publish() calls at once through a queue of 5: each waits its turn for
    # room (an ack frees one slot and wakes one waiter) and none times out.
    async def main() -> None:
        async with aclient(mosquitto, version, max_queued=5, timeout=WAIT) as c:
            await c.subscribe("many", qos=1)
            stream = c.messages()
            acks = await asyncio.gather(*(c.publish("many", b"%d" % i, qos=1) for i in range(300)))
            assert all(a.reason_code < 0x80 for a in acks)
            got = {(await stream.__anext__()).payload for _ in range(300)}
            assert got == {b"%d" % i for i in range(300)}

    arun(main())


def test_a_plain_callback_that_raises_keeps_the_connection(
    mosquitto: Mosquitto, version: int, capsys: pytest.CaptureFixture[str]
) -> None:
    # The exception once ended the connection task silently: nothing was
    # read any more, so the next publish() waited out its timeout.
    async def main() -> None:
        async with aclient(mosquitto, version, timeout=3) as c:

            def bad(m: Publish) -> None:
                raise ValueError("bug in a callback")

            await c.subscribe("bad", qos=1, callback=bad)
            await c.subscribe("good", qos=1)
            stream = c.messages("good")
            await c.publish("bad", b"x", qos=1)
            assert await c.publish("good", b"y", qos=1) is not None
            assert (await stream.__anext__()).payload == b"y"
            assert c._task is not None and not c._task.done()

    arun(main())
    assert "bug in a callback" in capsys.readouterr().err


def test_a_peer_that_stops_reading_is_detected(
    fake_broker: FakeBrokerFactory, version: int
) -> None:
    # Once the socket's buffer was full, the connection task waited in
    # drain() for ever: the keepalive timeout never fired, so a half-open
    # peer was never noticed. Now a write may wait 1.5 x keepalive.
    ok = connack(0, properties=b"" if version == 5 else None)
    broker = fake_broker([recv(CONNECT), send(ok), pause(3 * WAIT)])  # then reads nothing

    async def main() -> None:
        c = AsyncClient(
            broker.host, broker.port, version=version, keepalive=1, timeout=WAIT, reconnect=False
        )
        lost: list[BaseException | None] = []
        gone = asyncio.Event()

        def on_disconnect(e: BaseException | None) -> None:
            lost.append(e)
            gone.set()

        c.on_disconnect = on_disconnect
        await c.connect()
        for _ in range(20):  # far more than the socket buffers hold
            await c.publish("big", b"x" * 1_000_000)
        await asyncio.wait_for(gone.wait(), WAIT)
        assert not c.is_connected
        assert isinstance(lost[0], ConnectionLost)
        with pytest.raises(ConnectionLost):
            await c.publish("big", b"y", qos=1)
        await c.disconnect(timeout=1)

    arun(main())


def test_streams_end_when_the_connection_is_lost_for_good(
    fake_broker: FakeBrokerFactory, version: int
) -> None:
    # With reconnect=False a lost connection never comes back, yet
    # `async for` over messages() waited for ever.
    ok = connack(0, properties=b"" if version == 5 else None)
    broker = fake_broker([recv(CONNECT), send(ok), close()])

    async def main() -> None:
        c = AsyncClient(broker.host, broker.port, version=version, timeout=WAIT, reconnect=False)
        await c.connect()

        async def drain(stream: Any) -> list[Publish]:
            return [m async for m in stream]

        for stream in (c.messages(), c.messages("some/#")):
            with pytest.raises(ConnectionLost):
                await asyncio.wait_for(drain(stream), WAIT)
        await c.disconnect()

    arun(main())


def test_connect_while_connected_raises_and_keeps_the_connection(
    mosquitto: Mosquitto, tcp_proxy: ProxyFactory, version: int
) -> None:
    # A second connect() once dialled a new connection, whose CONNECT the
    # session refused: it closed the new transport and left the old one open,
    # unreferenced, its task still reading it, the client no longer connected.
    # Now it raises LocalProtocolError, as Client.connect() does, before it
    # touches anything: the first connection stays up, the only one.
    proxy = tcp_proxy(mosquitto)

    async def main() -> None:
        async with AsyncClient(proxy.host, proxy.port, version=version, timeout=WAIT) as c:
            with pytest.raises(LocalProtocolError):
                await c.connect()
            assert c.is_connected
            assert await c.publish("again", b"x", qos=1) is not None
            assert proxy.accepted.value == 1
        await proxy.closed.wait_async(1, WAIT)
        assert proxy.active == 0

    arun(main())


def test_connect_while_waiting_to_reconnect_reconnects_now(
    mosquitto: Mosquitto, tcp_proxy: ProxyFactory, version: int
) -> None:
    # The connection task waiting out its backoff once stayed, beside the new
    # one connect() starts: two tasks reading one connection. It is replaced.
    proxy = tcp_proxy(mosquitto)

    async def main() -> None:
        c = AsyncClient(
            proxy.host, proxy.port, version=version, timeout=WAIT, backoff_min=60, backoff_max=60
        )
        down = asyncio.Event()
        c.on_disconnect = lambda e: down.set()
        await c.connect()
        waiting = c._task
        await asyncio.to_thread(proxy.drop)
        await asyncio.wait_for(down.wait(), WAIT)
        await c.connect()
        assert waiting is not None and waiting.done()
        assert c.is_connected
        assert await c.publish("again", b"x", qos=1) is not None
        await c.disconnect()
        await proxy.closed.wait_async(2, WAIT)
        assert proxy.active == 0

    arun(main())


def test_qos0_publish_and_subscribe_before_connect_raise_at_once() -> None:
    # Nothing will bring a connection up, so waiting out the timeout (as
    # while a lost connection is being re-made) only hid the mistake; the
    # blocking Client raises ConnectionLost at once too (docs/client.md,
    # "Offline"). A QoS 1/2 message is queued for the connection to come.
    async def main() -> None:
        c = AsyncClient("127.0.0.1", 1, client_id="early")
        for call in (
            c.publish("t", b"x", qos=0, timeout=30),
            c.subscribe("t/#", qos=1, timeout=30),
            c.unsubscribe("t/#", timeout=30),
        ):
            with pytest.raises(ConnectionLost, match="not connected"):
                await asyncio.wait_for(call, 5)

    arun(main())
