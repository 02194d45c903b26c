"""The broker under overload, over real sockets: subscribers that read slowly or not
at all, publishers that flood, clients that send without reading what they are sent.
Each must stay within a documented limit (see docs/broker.md, Limits) and must not
hold up the other clients. Tests that time other clients run the broker as a process
(``fieldline broker``): in a thread it would share the GIL with them."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from test_broker import WAIT, Raw
from test_broker_config import cli_broker
from test_broker_sessions import wait_for

from fieldline.broker import BrokerThread, hooks
from fieldline.mqtt import Parser, Publish, Subscription


def _stalled(port: int, client_id: bytes, *packets: bytes) -> socket.socket:
    """A 5.0 client, connected with a tiny receive buffer, that sends ``packets``
    and then reads nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = b"\x00\x04MQTT\x05\x02\x00\x3c\x00" + len(client_id).to_bytes(2, "big") + client_id
    sock.sendall(bytes([0x10, len(body)]) + body)
    assert sock.recv(1) == b"\x20"  # CONNACK (the rest is never read)
    for p in packets:
        sock.sendall(p)
    return sock


def _subscribe(topic_filter: bytes, qos: int, packet_id: int = 1) -> bytes:
    """A 5.0 SUBSCRIBE packet."""
    body = packet_id.to_bytes(2, "big") + b"\x00"  # no properties
    body += len(topic_filter).to_bytes(2, "big") + topic_filter + bytes([qos])
    return bytes([0x82, len(body)]) + body


def _round_trip(c: Raw) -> float:
    """Seconds a QoS 1 PUBLISH from ``c`` takes to be acknowledged."""
    t = time.monotonic()
    assert c.publish("rt", b"1", 1).reason_code < 0x80
    return time.monotonic() - t


@pytest.mark.parametrize("loop", ["asyncio", "auto"])
def test_subscribes_sent_back_to_back_do_not_hold_up_other_clients(
    tmp_path: Path, loop: str
) -> None:
    # Each SUBSCRIBE to "#" walks every retained message (and queues as many as the
    # queue holds). A client that sent hundreds of them in one write had them all
    # handled in one turn of the event loop: seconds in which no other client was
    # answered. Now a connection yields after each SUBSCRIBE (or 256 other packets).
    retained, n = 10_000, 500
    config = tmp_path / "broker.toml"
    config.write_text(f'max_queued_messages = 100\nevent_loop = "{loop}"\n')
    with cli_broker("--config", str(config)) as port:
        filler = Raw(port, "filler")
        for i in range(retained):
            filler.session.publish(f"r/{i // 100}/{i}", b"v", 0, retain=True)
            if i % 100 == 99:
                filler.flush()
        filler.publish("x", b"", 1)  # after the QoS 0 ones: all retained now
        live = Raw(port, "live")
        live.subscribe(Subscription("done", 0))
        _round_trip(live)
        t0 = time.monotonic()
        # Then a PUBLISH to "done": handled in order, it reaches "live" after them.
        burst = _subscribe(b"#", 1) * n + b"\x30\x07\x00\x04done\x00"
        greedy = _stalled(port, b"greedy", burst)
        worst, rounds = 0.0, 0
        while not live.early:
            assert time.monotonic() - t0 < 4 * WAIT, "the SUBSCRIBEs were not all handled"
            worst = max(worst, _round_trip(live))
            rounds += 1
        spent = time.monotonic() - t0
        assert rounds >= 5, f"the other client was answered {rounds} times in {spent:.2f}s"
        assert worst < spent / 4, f"held up {worst:.2f}s of {spent:.2f}s"
        for c in (greedy, filler.sock, live.sock):
            c.close()


@pytest.mark.usefixtures("both_event_loops")
@pytest.mark.parametrize("big", ["properties", "topic"])
def test_queued_bytes_count_the_topic_and_properties_not_only_the_payload(big: str) -> None:
    # max_queued_bytes counted payloads only: messages with an empty payload and a
    # long topic or 10 KB of user properties filled a stalled subscriber's queue to
    # max_queued_messages (1000 of them, 10 MB) with queued_bytes still 0.
    limit = 100_000
    with BrokerThread("127.0.0.1", 0, max_queued_bytes=limit, max_write_buffer=16384) as b:
        stalled = _stalled(b.port, b"stalled", _subscribe(b"big/#", 0))
        wait_for(b, "subscriptions", 1)
        pub = Raw(b.port, "pub")
        pad = "p" * 10_000
        for i in range(1500):  # 15 MB: past what the kernel buffers take
            if big == "topic":
                pub.session.publish(f"big/{i}/{pad}", b"", 0)
            else:
                props = {"user_property": [("pad", pad)]}
                pub.session.publish(f"big/{i}", b"", 0, properties=props)
            pub.flush()
        assert pub.publish("end", b"", 1).reason_code == 0x10  # all routed by now
        stats = b.call(b.broker.stats)
        # (The queue may be empty by now: the kernel takes some of it.)
        assert stats["queued_bytes"] <= limit
        assert stats["queued"] <= limit // 10_000
        assert stats["dropped"] > 1000
        stalled.close()
        pub.close()


def _take(c: Raw, n: int = 0) -> list[Publish]:
    """Read, answering as we go (Raw flushes only after an event: a PUBCOMP or PUBREL
    due would wait), until ``n`` messages came and every QoS 1/2 one ``c`` sent is
    complete; returns the messages."""
    s = c.session
    got: list[Publish] = []
    while len(got) < n or s.inflight:
        data = c.sock.recv(65536)
        assert data, "closed by the broker"
        s.receive_data(data, time.monotonic())
        while (ev := s.next_event()) is not None:
            if isinstance(ev, Publish):
                got.append(ev)
        c.flush()
    return got


def _write_buffers(b: BrokerThread) -> dict[str, int]:
    """Bytes each connection holds written but not taken by the network."""

    def sizes() -> dict[str, int]:
        return {
            c.session.client_id: c.transport.get_write_buffer_size()
            for c in b.broker.connections
            if c.transport is not None
        }

    return b.call(sizes)


@pytest.mark.usefixtures("both_event_loops")
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_a_stalled_subscriber_stays_bounded_while_a_publisher_floods(qos: int) -> None:
    # A real publisher floods at each QoS; one subscriber reads nothing (its TCP
    # window is full), another reads along. The stalled one holds at most its queue
    # limits, its in-flight window and one write buffer; the publisher has every ack
    # and the reading subscriber every message: neither waits for the stalled one.
    limits: dict[str, Any] = {
        "max_queued_messages": 50, "max_queued_bytes": 200_000, "max_inflight": 10,
        "max_write_buffer": 16384,
    }  # fmt: skip
    with BrokerThread("127.0.0.1", 0, **limits) as b:
        stalled = _stalled(b.port, b"stalled", _subscribe(b"f/#", qos))
        live = Raw(b.port, "live")
        live.subscribe(Subscription("f/#", qos))
        wait_for(b, "subscriptions", 2)
        pub = Raw(b.port, "pub")
        payload = b"x" * 4000
        n, batch = 2000, 25  # 8 MB: past what the kernel buffers for "stalled" (4 MB)
        for i in range(0, n, batch):
            for j in range(i, i + batch):
                pub.session.publish(f"f/{j}", payload, qos)
            pub.flush()
            got = _take(live, batch)  # the reading subscriber keeps up, in order
            assert [m.topic for m in got] == [f"f/{j}" for j in range(i, i + batch)]
            assert _take(pub) == []  # and the publisher has every ack

        def held() -> tuple[int, int, int]:
            cs = b.broker.sessions.get("stalled")
            assert cs is not None
            return len(cs.queue), cs.queued_bytes, cs.session.inflight

        queued, queued_bytes, inflight = b.call(held)
        assert queued <= limits["max_queued_messages"]
        assert queued_bytes <= limits["max_queued_bytes"]
        assert inflight <= limits["max_inflight"]
        assert b.call(b.broker.stats)["dropped"] > n // 4  # the kernel took up to 4 MB
        assert _write_buffers(b)["stalled"] <= limits["max_write_buffer"] + 2 * len(payload)
        stalled.close()
        live.close()
        pub.close()


def test_an_offline_persistent_session_keeps_only_its_limits_in_memory_and_on_disk(
    tmp_path: Path,
) -> None:
    # Messages pile up for a persistent session whose client is away: memory and the
    # persistence file hold max_queued_messages of them (the newest: drop_oldest),
    # the rest are counted as dropped; after a restart the client gets those.
    db = tmp_path / "broker.db"
    options: dict[str, Any] = {"persistence": str(db), "max_queued_messages": 100}
    props = {"session_expiry_interval": 600}
    with BrokerThread("127.0.0.1", 0, **options) as b:
        away = Raw(b.port, "away", clean_start=False, properties=props)
        away.subscribe(Subscription("p/#", 1))
        away.close()
        wait_for(b, "connected", 0)
        pub = Raw(b.port, "pub")
        n = 3000
        for i in range(0, n, 100):
            for j in range(i, i + 100):
                pub.session.publish(f"p/{j}", b"%d" % j, 1)
            pub.flush()
            _take(pub)
        stats = b.call(b.broker.stats)
        assert (stats["queued"], stats["dropped"]) == (100, n - 100)
        pub.close()
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM queue").fetchone()[0] == 100
    con.close()
    with BrokerThread("127.0.0.1", 0, **options) as b:
        away = Raw(b.port, "away", clean_start=False, properties=props)
        assert away.connack.session_present
        got = away.messages(100)
        assert [m.payload for m in got] == [b"%d" % j for j in range(n - 100, n)]
        assert away.quiet()
        away.close()


def _answers(sock: socket.socket) -> list[tuple[str, Any]]:
    """Everything the broker sends until it closes, as (packet type, reason code)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    parser = Parser(5)
    parser.feed(data)
    out = []
    while (p := parser.next_packet()) is not None:
        out.append((type(p).__name__, getattr(p, "reason_code", None)))
    return out


@pytest.mark.usefixtures("both_event_loops")
def test_a_publish_trickled_byte_by_byte_is_not_a_sign_of_life() -> None:
    # A client announces a large PUBLISH and sends its body a byte at a time. It holds
    # at most max_packet_size, and only whole packets count for Keep Alive
    # (MQTT-3.1.2-22: "receive an MQTT Control Packet"): it is disconnected 1.5 x Keep
    # Alive after its last whole packet, bytes arriving or not. Others carry on.
    with BrokerThread("127.0.0.1", 0, max_packet_size=65536) as b:
        other = Raw(b.port, "other")
        slow = Raw(b.port, "slow", keep_alive=1)
        t0 = time.monotonic()
        slow.sock.sendall(b"\x30\xf9\xff\x03")  # a PUBLISH, 65529 bytes to come
        closed = False
        for _ in range(60):  # 6 s at most
            try:
                slow.sock.sendall(b"t")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            _round_trip(other)
            try:
                if not slow.sock.recv(65536, socket.MSG_DONTWAIT):
                    closed = True
                    break
            except BlockingIOError:
                pass
            except ConnectionResetError:
                closed = True
                break
            time.sleep(0.1)  # the trickle's pace, not a wait for the broker
        assert closed, "a trickle of bytes kept the connection alive"
        assert 1.4 < time.monotonic() - t0 < 4
        # One byte more than max_packet_size announced: refused from its header alone.
        big = socket.create_connection(("127.0.0.1", b.port), timeout=WAIT)
        big.sendall(b"\x10\x0e\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x01b")
        big.sendall(b"\x30\xfd\xff\x03")  # 4 + 65533 bytes
        assert _answers(big) == [("ConnAck", 0), ("Disconnect", 0x95)]
        big.close()
        other.close()


@pytest.mark.usefixtures("both_event_loops")
def test_qos2_publishes_never_released_end_at_receive_maximum() -> None:
    # QoS 2 PUBLISHes whose PUBREL never comes each hold a packet id: beyond the
    # broker's Receive Maximum the client gets DISCONNECT 0x93 (MQTT-3.3.4-9).
    with BrokerThread("127.0.0.1", 0, receive_maximum=20) as b:
        sock = socket.create_connection(("127.0.0.1", b.port), timeout=WAIT)
        sock.sendall(b"\x10\x0e\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x01q")
        pubs = b"".join(
            b"\x34\x07\x00\x01p" + i.to_bytes(2, "big") + b"\x00x" for i in range(1, 31)
        )
        sock.sendall(pubs)
        answers = _answers(sock)
        assert answers[0] == ("ConnAck", 0)
        assert answers[1:] == [("PubRec", 0x10)] * 20 + [("Disconnect", 0x93)]
        sock.close()


@pytest.mark.usefixtures("both_event_loops")
def test_an_async_on_message_hook_that_falls_behind_holds_a_bounded_number_of_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each notification of an async hook runs in a task holding the message for up to
    # hook_timeout: under a flood, a hook slower than the messages held memory growing
    # with the publish rate. Past MAX_PENDING_NOTIFICATIONS running, the next ones are
    # skipped and counted as timeouts; once it catches up it hears messages again.
    monkeypatch.setattr(hooks, "MAX_PENDING_NOTIFICATIONS", 50)

    class Slow:
        def __init__(self) -> None:
            self.go: asyncio.Event | None = None
            self.heard = 0

        def start(self, broker: Any) -> None:
            self.go = asyncio.Event()

        async def on_message(self, *args: Any) -> None:
            assert self.go is not None
            await self.go.wait()
            self.heard += 1

    slow = Slow()
    with BrokerThread("127.0.0.1", 0, plugins=[slow], hook_timeout=WAIT) as b:
        pub = Raw(b.port, "pub")
        for i in range(200):
            pub.session.publish("flood", b"%d" % i, 0)
        pub.flush()
        assert pub.publish("flood", b"last", 1).reason_code == 0x10  # all routed
        assert b.call(lambda: len(b.broker.plugins._notes)) == 50
        assert b.call(b.broker.stats)["plugin_timeouts"] == {"Slow.on_message": 151}
        assert slow.go is not None
        b.call(slow.go.set)
        deadline = time.monotonic() + WAIT
        while b.call(lambda: len(b.broker.plugins._notes)):  # all 50 done
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert slow.heard == 50
        pub.publish("flood", b"heard", 1)
        while b.call(lambda: slow.heard) < 51:  # caught up: heard again
            assert time.monotonic() < deadline
            time.sleep(0.01)
        pub.close()


@pytest.mark.usefixtures("both_event_loops")
def test_a_burst_read_at_once_is_not_dropped_for_a_subscriber_that_takes_it() -> None:
    # Deliveries routed in one read wait to leave in one write (pump_soon), so a
    # burst larger than max_queued_messages overflowed the queue of a subscriber
    # that was reading and had room: all but the last few were dropped. The queue
    # limit is for what waits; a full queue first hands on what the connection takes.
    with BrokerThread("127.0.0.1", 0, max_queued_messages=2) as b:
        sub = Raw(b.port, "sub")
        sub.subscribe(Subscription("burst/#", 1))
        pub = Raw(b.port, "pub")
        for i in range(20):
            pub.session.publish(f"burst/{i}", b"%d" % i, i % 2)
        pub.flush()  # one write, read by the broker at once
        got = _take(sub, 20)
        assert [m.topic for m in got] == [f"burst/{i}" for i in range(20)]
        assert b.call(b.broker.stats)["dropped"] == 0
        sub.close()
        pub.close()


@pytest.mark.usefixtures("both_event_loops")
def test_a_subscriber_that_never_acknowledges_holds_max_inflight_messages() -> None:
    # It reads what it is sent but sends no PUBACK: max_inflight messages go out,
    # the rest wait in its queue (within its limits), and go once it acknowledges.
    with BrokerThread("127.0.0.1", 0, max_inflight=5, max_queued_messages=10) as b:
        sub = Raw(b.port, "mute", auto_flush=False)
        sub.subscribe(Subscription("m/#", 1))
        sub.flush()
        for i in range(30):
            b.call(b.broker.publish, f"m/{i}", b"%d" % i, 1)
        assert [m.topic for m in sub.messages(5)] == [f"m/{i}" for i in range(5)]
        assert sub.quiet()
        stats = b.call(b.broker.stats)
        assert (stats["inflight"], stats["queued"], stats["dropped"]) == (5, 10, 15)
        sub.flush()  # the five PUBACKs: the newest ten of the rest come
        got = sub.messages(5)
        sub.flush()
        got += sub.messages(5)
        assert [m.topic for m in got] == [f"m/{i}" for i in range(20, 30)]
        sub.close()
