"""Bad input and bad peers: malformed bytes get the session's reason code and a close,
other clients carry on; a subscriber that stops reading stays within its limits."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from test_broker import WAIT, Raw, running
from test_broker_sessions import wait_for

from fieldline.broker import BrokerThread
from fieldline.mqtt import Client, Parser, Subscription

# On uvloop (the default when installed) and on asyncio's own loop.
pytestmark = pytest.mark.usefixtures("both_event_loops")

CONNECT_V5 = b"\x10\x0e\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x01x"
OK = ("ConnAck", 0)


def packets(data: bytes, version: int = 5) -> list[Any]:
    """The packets in ``data`` as (type, reason code) pairs."""
    parser = Parser(version)
    parser.feed(data)
    out = []
    while (p := parser.next_packet()) is not None:
        out.append((type(p).__name__, getattr(p, "reason_code", None)))
    return out


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    yield from running()


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` and EOF on a fresh socket; return all the broker sends until it
    closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


@pytest.mark.parametrize(
    ("data", "answer"),
    [
        # MQTT-3.1.2-2: unknown protocol level -> CONNACK 0x84 (3.1.1 return code 1)
        (b"\x10\x0d\x00\x04MQTT\x07\x02\x00\x3c\x00\x01x", [("ConnAck", 1)]),
        # MQTT-3.1.0-1: the first packet must be CONNECT
        (b"\x30\x05\x00\x01ahi", []),
        # MQTT-3.1.2-3: reserved CONNECT flag set: Malformed, closed (a CONNACK 0x81 is
        # optional, 4.13.1, and the session sends none for a CONNECT it cannot decode)
        (b"\x10\x0e\x00\x04MQTT\x05\x03\x00\x3c\x00\x00\x01x", []),
        # QoS 3 PUBLISH after CONNECT -> DISCONNECT 0x81 (MQTT-3.3.1-4)
        (CONNECT_V5 + b"\x36\x05\x00\x01a\x00\x01", [OK, ("Disconnect", 0x81)]),
        # a second CONNECT -> DISCONNECT 0x82 (MQTT-3.1.0-2)
        (CONNECT_V5 + CONNECT_V5, [OK, ("Disconnect", 0x82)]),
        # a Remaining Length longer than 4 bytes -> DISCONNECT 0x81
        (CONNECT_V5 + b"\x30\xff\xff\xff\xff\x01", [OK, ("Disconnect", 0x81)]),
        # wildcard in a PUBLISH topic -> DISCONNECT 0x90
        (CONNECT_V5 + b"\x30\x05\x00\x01#\x00x", [OK, ("Disconnect", 0x90)]),
    ],
)
def test_malformed_input_gets_reason_code_then_close(
    broker: BrokerThread, data: bytes, answer: list[Any]
) -> None:
    version = 4 if data[8:9] == b"\x07" else 5  # 3.1.1 answers an unknown level
    assert packets(exchange(broker.port, data), version) == answer


def _suback(data: bytes, version: int) -> list[int]:
    parser = Parser(version)
    parser.feed(data)
    while (p := parser.next_packet()) is not None:
        if type(p).__name__ == "SubAck":
            return list(p.reason_codes)
    raise AssertionError(f"no SUBACK in {data!r}")


def test_invalid_filter_is_refused_in_suback(broker: BrokerThread) -> None:
    # Hand-built: our client refuses to send these filters (MQTT-4.7.1-1, -2).
    # SUBSCRIBE id 1: "a/#/b" QoS 1 and "ok/+" QoS 1 (5.0, no properties).
    sub5 = b"\x82\x12\x00\x01\x00\x00\x05a/#/b\x01\x00\x04ok/+\x01"
    assert _suback(exchange(broker.port, CONNECT_V5 + sub5), 5) == [0x8F, 1]
    # 3.1.1: "x+" QoS 0.
    connect3 = b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02f3"
    sub3 = b"\x82\x07\x00\x01\x00\x02x+\x00"
    assert _suback(exchange(broker.port, connect3 + sub3), 4) == [0x80]


def test_random_bytes_do_not_disturb_other_clients(broker: BrokerThread) -> None:
    with Client(broker.host, broker.port, client_id="bystander") as c:
        c.subscribe("calm/#", qos=1)
        rng = os.urandom(4096)
        for i in range(20):
            chunk = rng[i * 200 : i * 200 + 200]
            exchange(broker.port, chunk)  # garbage: answered or closed, never a hang
            exchange(broker.port, CONNECT_V5 + chunk)
        c.publish("calm/still", b"fine", qos=1)
        assert c.recv(timeout=WAIT).payload == b"fine"
    wait_for(broker, "connections", 0)


def test_stalled_subscriber_stays_bounded_and_does_not_slow_others() -> None:
    limits: dict[str, Any] = {"max_queued_messages": 20, "max_write_buffer": 64 * 1024}
    with BrokerThread(**limits) as broker:
        stalled = socket.create_connection(("127.0.0.1", broker.port), timeout=WAIT)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(CONNECT_V5.replace(b"\x01x", b"\x01s"))
        assert stalled.recv(1) == b"\x20"  # CONNACK (the rest is never read)
        # SUBSCRIBE id 1 to "big/#" at QoS 1; then never read again.
        stalled.sendall(b"\x82\x0b\x00\x01\x00\x00\x05big/#\x01")
        wait_for(broker, "subscriptions", 1)
        live = Raw(broker.port, "live")
        live.subscribe(Subscription("big/#", 0))
        payload = b"x" * 10_000
        n = 500  # 5 MB through the broker
        got = 0
        for i in range(n):
            broker.call(broker.broker.publish, f"big/{i}", payload, 1)
            if i % 10 == 9:  # the other subscriber reads along and gets every one
                got += len(live.messages(10))
        assert got == n

        def buffered() -> int:
            return sum(
                c.transport.get_write_buffer_size()
                for c in broker.broker.connections
                if c.transport is not None
            )

        stats = broker.call(broker.broker.stats)
        assert stats["queued"] <= limits["max_queued_messages"]
        assert stats["dropped"] > 0
        assert broker.call(buffered) <= limits["max_write_buffer"] + 2 * len(payload)
        stalled.close()
        live.close()
