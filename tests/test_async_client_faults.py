"""AsyncClient against scripted misbehaviour (tests/fakebroker.py): connections
that die at awkward moments, and what the client does next."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from conftest import FakeBrokerFactory, arun
from fakebroker import CONNECT, PUBACK, FakeConnection, connack_ok, recv, reset, send

from fieldline.mqtt import AsyncClient, Publish, encode

WAIT = 10.0


def publish(version: int, pid: int, payload: bytes, dup: bool = False) -> bytes:
    return bytes(encode(Publish("t", payload, 1, dup=dup, packet_id=pid), version))


def wait_for(event: threading.Event) -> Any:
    # A script step: wait until the test says go.
    return lambda conn: event.wait(WAIT)


def acked(conn: FakeConnection) -> list[int]:
    return [int.from_bytes(p[2:4], "big") for p in conn.packets if p[0] >> 4 == PUBACK]


def test_an_ack_given_after_the_transport_died_waits_for_the_resend(
    fake_broker: FakeBrokerFactory, version: int
) -> None:
    # The broker resets the connection while reading is paused (max_inbox=1:
    # message 1 is in a callback, message 2 waits for its place), so the
    # connection task has not seen it when the callback ends. Its PUBACK
    # was once written to the closed transport, which dropped it without a
    # word, and the session had forgotten it was owed: the broker's resend
    # was delivered a second time. Now the client finds the transport dead
    # before answering, treats it as connection loss at once, and keeps the
    # answer for the resend (MQTT-4.4.0-1): no second delivery.
    go = threading.Event()
    broker = fake_broker(
        [
            recv(CONNECT),
            send(connack_ok(version)),
            send(publish(version, 1, b"1") + publish(version, 2, b"2")),
            wait_for(go),
            reset(),
        ],
        [
            recv(CONNECT),
            send(connack_ok(version, session_present=True)),
            send(publish(version, 1, b"1", dup=True) + publish(version, 2, b"2", dup=True)),
        ],
    )

    async def main() -> None:
        c = AsyncClient(
            broker.host,
            broker.port,
            client_id="acker",
            version=version,
            clean_start=version == 5,
            session_expiry=3600,
            keepalive=0,
            max_inbox=1,
            backoff_min=0.05,
            backoff_max=0.1,
            timeout=WAIT,
        )
        got: list[bytes] = []
        started = asyncio.Event()
        release = asyncio.Event()

        async def handler(m: Publish) -> None:
            got.append(m.payload)
            started.set()
            await release.wait()

        c.on_message = handler
        await c.connect()
        await asyncio.wait_for(started.wait(), WAIT)
        w = c._w
        assert w is not None
        go.set()
        with contextlib.suppress(OSError):
            await asyncio.wait_for(w.wait_closed(), WAIT)  # the RST reached the transport
        release.set()  # the callback ends: message 1 is answered now
        await broker.accepted.wait_async(2, WAIT)
        second = broker.connections[1]
        await second.packets_received.wait_async(3, WAIT)  # CONNECT, PUBACK 1, PUBACK 2
        assert sorted(acked(second)) == [1, 2]
        assert got == [b"1", b"2"], "a message was delivered twice"
        await c.disconnect()

    arun(main())
