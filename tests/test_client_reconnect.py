"""Both clients across connections: the backoff between reconnect attempts,
which CONNECT resumes the session, and (the blocking Client; the
AsyncClient's is in test_async_client.py) connect() while connected."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import FakeBrokerFactory, Mosquitto, arun
from fakebroker import FakeConnection, connack, connack_ok, prop, suback_for

from fieldline.mqtt import AsyncClient, Client, ConnectionLost, LocalProtocolError

WAIT = 10.0


@pytest.mark.parametrize("then", ["refuse", "too_small"])
def test_a_failed_attempt_counts_once_in_the_backoff(
    fake_broker: FakeBrokerFactory, kind: str, then: str
) -> None:
    # Connection 1 is accepted, then lost. Connection 2 is accepted with a
    # Maximum Packet Size too small for the SUBSCRIBE that restores our
    # subscription, so that attempt fails just after its CONNACK; later
    # connections do the same (``too_small``) or close before their CONNACK
    # (``refuse``). After the loss the client waits backoff_min, then each
    # failed attempt doubles the delay once: 1, 2, 4, 8, 16 x backoff_min
    # after connections 1-5 (their upper half jittered). Each failed
    # attempt once counted twice (the escaped failure left the socket open,
    # or the loss was counted on reading EOF and again by the redial); and
    # a CONNACK once reset the count although its attempt then failed, so
    # a broker failing every attempt just after its CONNACK was redialled
    # every backoff_min for ever.
    m = 0.2
    accepted: dict[int, float] = {}
    closed: dict[int, float] = {}

    def subscribed(conn: FakeConnection) -> None:
        conn.recv_packet()  # CONNECT
        conn.send(connack_ok(5))
        conn.send(suback_for(conn.recv_packet(), 5, qos=0))  # the SUBSCRIBE's SUBACK
        closed[conn.index] = time.monotonic()
        conn.close()

    def too_small(conn: FakeConnection) -> None:
        accepted[conn.index] = time.monotonic()
        conn.recv_packet()
        conn.send(connack(0, properties=b"\x27" + (16).to_bytes(4, "big")))
        closed[conn.index] = time.monotonic()
        conn.close()

    def refuse(conn: FakeConnection) -> None:
        accepted[conn.index] = time.monotonic()
        conn.recv_packet()
        closed[conn.index] = time.monotonic()
        conn.close()

    broker = fake_broker(subscribed, too_small, refuse if then == "refuse" else too_small)
    opts = dict(keepalive=0, timeout=WAIT, backoff_min=m, backoff_max=60)
    topic = "a/topic/filter/longer/than/sixteen/bytes"
    if kind == "blocking":
        c = Client(broker.host, broker.port, **opts)
        c.connect()
        assert c.subscribe(topic) == [0]
        deadline = time.monotonic() + 3 * WAIT
        while broker.accepted.value < 6 and time.monotonic() < deadline:
            c.loop(0.1)
        c.disconnect()
        assert broker.accepted.value >= 6
    else:

        async def main() -> None:
            a = AsyncClient(broker.host, broker.port, **opts)
            await a.connect()
            assert await a.subscribe(topic) == [0]
            await broker.accepted.wait_async(6, 3 * WAIT)
            await a.disconnect()

        arun(main())
    for n, d in ((0, m), (1, 2 * m), (2, 4 * m), (3, 8 * m), (4, 16 * m)):
        gap = accepted[n + 1] - closed[n]
        assert d / 2 - 0.05 <= gap < d + 0.1, (
            f"delay after connection {n + 1}: {gap:.2f} s, not {d} s"
        )


def clean_start(connect: bytes) -> bool:
    # CONNECT: fixed header, Remaining Length, "\x00\x04MQTT", level, flags.
    return bool(connect[connect.index(b"MQTT") + 5] & 0x02)


def test_a_connect_after_a_failed_attempt_still_resumes_the_session(
    fake_broker: FakeBrokerFactory, kind: str
) -> None:
    # MQTT 5.0, clean_start=True with a session expiry: only the first
    # CONNECT starts clean and takes the client id the broker assigns;
    # later ones resume that session. An attempt that failed before its
    # CONNACK once made the next connect() count as a first again: clean
    # start, no client id, and the session the broker kept (its queued
    # messages) was thrown away.
    def first(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.send(connack(0, properties=prop(0x12, b"auto-1")))
        conn.close()

    def fail(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.close()

    def resume(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.send(connack(0, session_present=True, properties=b""))

    broker = fake_broker(first, fail, resume)
    opts = dict(version=5, session_expiry=60, reconnect=False, keepalive=0, timeout=WAIT)

    if kind == "blocking":
        c = Client(broker.host, broker.port, **opts)
        c.connect()
        deadline = time.monotonic() + WAIT
        while c.is_connected and time.monotonic() < deadline:
            c.loop(0.1)  # until connection 1 ends
        with pytest.raises((ConnectionLost, OSError)):
            c.connect()  # connection 2 fails before its CONNACK
        assert c.connect().session_present
        c.disconnect()
    else:

        async def main() -> None:
            a = AsyncClient(broker.host, broker.port, **opts)
            down = asyncio.Event()
            a.on_disconnect = lambda error: down.set()
            await a.connect()
            await asyncio.wait_for(down.wait(), WAIT)  # connection 1 ends
            with pytest.raises((ConnectionLost, OSError)):
                await a.connect()  # connection 2 fails before its CONNACK
            assert (await a.connect()).session_present
            await a.disconnect()

        arun(main())

    connects = [conn.packets[0] for conn in broker.connections]
    assert [clean_start(p) for p in connects] == [True, False, False]
    assert b"auto-1" not in connects[0]
    assert b"auto-1" in connects[1] and b"auto-1" in connects[2]


def test_connect_while_connected_is_refused_and_keeps_the_connection(
    mosquitto: Mosquitto, version: int
) -> None:
    # A second dial once replaced the live socket's CONNECT state, and its
    # failure path closed the connection that was up.
    c = Client(mosquitto.host, mosquitto.port, version=version, timeout=WAIT)
    c.connect()
    with pytest.raises(LocalProtocolError) as e:
        c.connect()
    assert e.value.reason_code == 0x82
    assert c.is_connected
    c.publish("t/still/up", b"x", qos=1)  # acknowledged, else it raises
    c.disconnect()
