"""QoS 2 with ``persistence=`` and a persistent session across a killed
process: a message whose PUBREC came back but was never read is sent again
after the restart under the packet id the broker holds it by, so the broker
delivers it once and the id is free for the next message (MQTT-4.3.3-9: a
receiver takes a PUBLISH under an unreleased id as a duplicate). Before the
packet ids were stored, the restart gave that message a new id: our broker
delivered it twice and took the next message, given the old id, for a
duplicate, so that one was lost. The device runs tests/storeproc/device.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Mosquitto, ProxyFactory
from paho_peer import PahoPeer
from storeproc.child import Child
from storeproc.device import QOS2_TOPIC as TOPIC
from test_broker import running

from fieldline.broker import BrokerThread
from fieldline.store import Queue

WAIT = 10.0


@pytest.fixture(params=["fieldline", "mosquitto"])
def broker_address(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    if request.param == "mosquitto":
        m: Mosquitto = request.getfixturevalue("mosquitto")
        yield m.host, m.port
    else:
        broker: BrokerThread
        for broker in running():
            yield broker.host, broker.port


@pytest.fixture
def peer(broker_address: tuple[str, int], version: int) -> Iterator[PahoPeer]:
    p = PahoPeer(*broker_address, version)
    p.subscribe("qos2/#", 2)
    yield p
    p.close()


def second_run(peer: PahoPeer, args: tuple[str, ...], interpreter: str) -> list[tuple[str, bytes]]:
    """The device's next run (it resumes the session and publishes C), then
    what the peer received, in order, up to an end marker of its own:
    everything before it has arrived once it does."""
    with Child("device.py", "qos2-second", *args, exe=interpreter) as device:
        assert device.line(timeout=3 * WAIT) == "done"
        assert device.wait() == 0, device.stderr.decode()
    peer.publish("qos2/end", b"end", 2)
    got: list[tuple[str, bytes]] = []
    while not got or got[-1] != ("qos2/end", b"end"):
        m = peer.expect(1)[0]
        got.append((m.topic, bytes(m.payload)))
    return got


def test_a_qos2_message_cut_off_after_pubrec_is_delivered_once_after_a_kill(
    broker_address: tuple[str, int],
    peer: PahoPeer,
    tcp_proxy: ProxyFactory,
    version: int,
    tmp_path: Path,
    interpreter: str,
) -> None:
    proxy = tcp_proxy(broker_address)
    args = (proxy.host, str(proxy.port), str(version), str(tmp_path / "outbox"))
    with Child("device.py", "qos2-first", *args, stdin=True, exe=interpreter) as device:
        assert device.line() == "A"
        assert proxy.active == 1  # runs on the proxy's thread: A's PUBCOMP is counted
        down = proxy.bytes_down.value
        device.send("B")
        assert device.line() == "B"
        proxy.bytes_down.wait(down + 4, timeout=WAIT)  # B's PUBREC, never read
        assert device.kill() == []
    with Queue(args[3]) as q:
        assert [m[1] for _, m in q.pending()] == [b"B"]
    got = second_run(peer, args, interpreter)
    assert got == [(TOPIC, b"A"), (TOPIC, b"B"), (TOPIC, b"C"), ("qos2/end", b"end")]


def test_a_qos2_message_cut_off_after_pubrel_is_not_delivered_again_after_a_kill(
    broker_address: tuple[str, int],
    peer: PahoPeer,
    tcp_proxy: ProxyFactory,
    version: int,
    tmp_path: Path,
    interpreter: str,
) -> None:
    # B's PUBREC came and its PUBREL went, the broker completed B (it sent PUBCOMP),
    # and the device was killed before reading the PUBCOMP. The queue noted B
    # released, so the next run sends its PUBREL again, not B: a broker that has
    # completed B would take B for a new message and deliver it twice (ours, and
    # Mosquitto, which delivers on PUBREL).
    proxy = tcp_proxy(broker_address)
    args = (proxy.host, str(proxy.port), str(version), str(tmp_path / "outbox"))
    with Child("device.py", "qos2-released", *args, stdin=True, exe=interpreter) as device:
        assert device.line() == "A"
        assert proxy.active == 1  # runs on the proxy's thread: A's PUBCOMP is counted
        down = proxy.bytes_down.value
        device.send("B")
        assert device.line() == "released"
        proxy.bytes_down.wait(down + 8, timeout=WAIT)  # B's PUBREC and PUBCOMP
        assert device.kill() == []
    with Queue(args[3]) as q:
        assert [(m[1], m[6]) for _, m in q.pending()] == [(b"B", True)]
    got = second_run(peer, args, interpreter)
    assert got == [(TOPIC, b"A"), (TOPIC, b"B"), (TOPIC, b"C"), ("qos2/end", b"end")]


def test_the_queue_keeps_packet_ids_and_reads_records_stored_without(tmp_path: Path) -> None:
    folder = str(tmp_path / "q")
    with Queue(folder) as q:
        q.append(b'["old/t", 1, false, null]\n' + b"old")  # a record from before ids were kept
        q.put("new/t", b"new", 2, True, None, 42)
    with Queue(folder) as q:
        assert [m for _, m in q.pending()] == [
            ("old/t", b"old", 1, False, None, None, False),
            ("new/t", b"new", 2, True, None, 42, False),
        ]


def test_the_queue_notes_a_released_message_and_keeps_it_so(tmp_path: Path) -> None:
    folder = str(tmp_path / "q")
    with Queue(folder, segment_size=256) as q:
        a = q.put("t", b"a", 2, False, None, 1)
        b = q.put("t", b"b", 2, False, {"content_type": "x"}, 2)
        b2 = q.released(b)  # moved to the end, marked, in one write
        assert b2 > b and q.released(999) == 999  # gone: nothing to note
        assert [(k, m[1], m[5], m[6]) for k, m in q.pending()] == [
            (a, b"a", 1, False),
            (b2, b"b", 2, True),
        ]
    with Queue(folder, segment_size=256) as q:
        q.compact()
        assert [(k, m[1], m[4], m[6]) for k, m in q.pending()] == [
            (a, b"a", None, False),
            (b2, b"b", {"content_type": "x"}, True),
        ]
        q.done(b2)
        assert len(q) == 1
