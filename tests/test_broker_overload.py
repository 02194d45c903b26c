"""The broker under overload, over real sockets: subscribers that read slowly or not
at all, publishers that flood, clients that send without reading what they are sent.
Each must stay within a documented limit (see docs/broker.md, Limits) and must not
hold up the other clients. Tests that time other clients run the broker as a process
(``fieldline broker``): in a thread it would share the GIL with them."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from test_broker import WAIT, Raw
from test_broker_config import cli_broker
from test_broker_sessions import wait_for

from fieldline.broker import BrokerThread
from fieldline.mqtt import Subscription


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
