"""Both clients resuming a session: what goes out again after a reconnect (messages kept by
the ``persistence`` hook, subscriptions and unsubscriptions cut off, many subscriptions
under a Maximum Packet Size) and what must not (an invalid subscribe, a message above a
lowered Maximum QoS). Over real sockets, to a fake broker or Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from conftest import FakeBrokerFactory, Mosquitto, ProxyFactory, arun
from fakebroker import (
    CONNECT,
    DISCONNECT,
    SUBSCRIBE,
    UNSUBSCRIBE,
    FakeConnection,
    connack,
    connack_ok,
    suback_for,
)

from fieldline.mqtt import (
    AsyncClient,
    Client,
    ConnectionLost,
    LocalProtocolError,
    MQTTTimeout,
    PublishRefused,
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


# -- an unsubscribe() cut off before its UNSUBACK ------------------------------------


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
        conn.send(suback_for(conn.recv_packet(), version))
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


def test_a_pubrel_answered_with_identifier_not_found_completes_the_publish(
    fake_broker: FakeBrokerFactory,
) -> None:
    # MQTT 5.0: the PUBREC came (the broker has the message), the PUBREL went,
    # and the connection broke before the PUBCOMP. On the resumed session the
    # PUBREL goes again, and a broker that had completed the message answers
    # PUBCOMP 0x92 (Packet Identifier not found), as ours does after a
    # takeover. publish() raised PublishRefused(0x92) for a message the broker
    # had delivered: an application retrying it delivered it twice.
    def first(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.send(connack(0, properties=b""))
        pid = conn.recv_packet()[-4:-2]  # topic "q2/x", the id, no properties, "x"
        conn.send(b"\x50\x02" + pid)  # PUBREC
        assert conn.recv_packet()[0] == 0x62  # PUBREL
        conn.close()  # no PUBCOMP

    def resumed(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.send(connack(0, session_present=True, properties=b""))
        pubrel = conn.recv_packet()
        assert pubrel[0] == 0x62, pubrel
        conn.send(b"\x70\x03" + pubrel[2:4] + b"\x92")  # PUBCOMP, Packet Identifier not found

    broker = fake_broker(first, resumed)
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
    ack = c.publish("q2/x", b"x", qos=2)
    assert (ack.type, ack.reason_code) == (7, 0x92)
    c.disconnect()
