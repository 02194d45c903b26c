"""End to end: a device's QoS 1 messages published while offline survive the
device process being killed, in a ``fieldline.store.Queue`` given to the MQTT
client as ``persistence=``, and reach a subscriber once the next run of the
device is back online. The device runs tests/storeproc/device.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Mosquitto, ProxyFactory
from paho_peer import PahoPeer
from storeproc.child import Child
from storeproc.device import TOPIC, payload, properties

from fieldline.mqtt import Client
from fieldline.store import REFUSE, Queue, QueueFull

N = 25
WAIT = 10.0


@pytest.fixture
def peer(mosquitto: Mosquitto, version: int) -> Iterator[PahoPeer]:
    p = PahoPeer(mosquitto.host, mosquitto.port, version)
    yield p
    p.close()


def test_messages_published_offline_survive_a_kill_and_arrive_after_restart(
    mosquitto: Mosquitto,
    tcp_proxy: ProxyFactory,
    version: int,
    peer: PahoPeer,
    tmp_path: Path,
    interpreter: str,
) -> None:
    peer.subscribe("outbox/#", 1)
    proxy = tcp_proxy(mosquitto)
    folder = str(tmp_path / "outbox")
    args = (proxy.host, str(proxy.port), str(version), folder)
    payloads = [payload(i) for i in range(N)]

    with Child("device.py", "first", *args, str(N), stdin=True, exe=interpreter) as device:
        assert device.line() == "up"
        assert peer.expect(1)[0].payload == b"online"
        proxy.refuse()  # the network goes: no connection now or later
        proxy.drop()
        device.send("offline")
        assert device.line() == "offline"
        for i in range(N):
            assert device.line() == f"queued {i} {i + 1}"  # in the queue when publish returned
        assert device.line() == "done"
        assert device.kill() == []
    assert proxy.established.value == 1  # only the first connection got through

    # What the killed process left on disk: the N messages, oldest first.
    with Queue(folder) as q:
        assert q.stats()["damaged"] == []
        stored = [m for _, m in q.pending()]
    assert [(t, p, qos, retain) for t, p, qos, retain, _, _, _ in stored] == [
        (TOPIC, p, 1, False) for p in payloads
    ]
    assert [m[4] for m in stored] == [properties(version, i) for i in range(N)]

    proxy.accept()  # the network is back
    with Child("device.py", "second", *args, exe=interpreter) as device:
        assert device.line() == f"pending {N}"
        assert device.line(timeout=3 * WAIT) == "empty"
        assert device.wait() == 0, device.stderr.decode()

    got = peer.expect(N)
    assert [m.topic for m in got] == [TOPIC] * N
    assert [m.payload for m in got] == payloads
    assert all(m.qos == 1 for m in got)
    assert peer.messages.empty()  # no message twice (so far)
    if version == 5:
        for i, m in enumerate(got):
            props = vars(m.properties)
            assert props["ContentType"] == "application/x-test"
            assert props["UserProperty"] == [("n", str(i))]
    with Queue(folder) as q:
        assert len(q) == 0
        assert q.pending() == []


def test_a_message_the_queue_refuses_is_not_sent(
    mosquitto: Mosquitto, version: int, peer: PahoPeer, tmp_path: Path
) -> None:
    # A publish() whose persistence put() fails raises that error; the
    # message once went out anyway (the session had queued it first), so an
    # application that retried it sent it twice.
    peer.subscribe("outbox/#", 1)
    with Queue(str(tmp_path / "q"), max_entries=1, policy=REFUSE) as q:
        c = Client(mosquitto.host, mosquitto.port, version=version, persistence=q, timeout=WAIT)
        c.connect()
        c.publish("outbox/1", b"1", qos=1, timeout=0)  # queued, not yet acknowledged
        with pytest.raises(QueueFull):
            c.publish("outbox/2", b"2", qos=1, timeout=0)
        assert c.session.inflight == 1
        deadline = time.monotonic() + WAIT
        while len(q) and time.monotonic() < deadline:
            c.loop(0.1)  # until message 1's PUBACK makes room
        c.publish("outbox/3", b"3", qos=1)
        c.disconnect()
        assert len(q) == 0
    assert [m.payload for m in peer.expect(2)] == [b"1", b"3"]
