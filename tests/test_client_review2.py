"""Both clients, second review: the application's own disconnect() as an event and as
the end of an iteration, an unsubscribe() cut off before its UNSUBACK, an on_auth
that raises, and the blocking client's calls from several threads. Each test names
the fault it guards."""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any

import pytest
from conftest import FakeBrokerFactory, Mosquitto, arun
from fakebroker import CONNECT, SUBSCRIBE, FakeConnection, accept_then_close, connack, connack_ok

from fieldline.mqtt import AsyncClient, Client, ConnectionLost, MQTTError

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
