"""Wills across a broker restart (``--persist FILE``): the Will of a connection that
was open when the broker stopped or died is published when it starts again, after
its Will Delay Interval, unless the client comes back first; a Will discarded by a
normal DISCONNECT stays discarded. Presence topics ("status/device" retained
"offline" as the Will) then never say "online" for a device that is gone.

The broker runs as a real process, as in test_broker_persistence.py. With
``--durability full`` a QoS 1 PUBACK comes after the commit of everything before
it, so a device's QoS 1 publish after its CONNECT (or another client's after a
DISCONNECT) is the point from which the file holds its Will (or its absence).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import pytest
from test_broker import Raw
from test_broker_persistence import BrokerProc, Peer, brokers, props, until_marker

from fieldline.mqtt import Publish, Subscription, Will

__all__ = ["brokers"]  # the fixture, used by name

STATUS = "status/dev"


def device(port: int, version: int, client_id: str, will: Will, expiry: int | None = None) -> Raw:
    """A client with ``will``; it has said "online" (QoS 1, retained as the Will) once it returns,
    so the file holds its Will."""
    properties = None if expiry is None else {"session_expiry_interval": expiry}
    d = Raw(port, client_id, version, clean_start=expiry is None, will=will,
            properties=properties)  # fmt: skip
    assert d.publish(will.topic, b"online", 1, retain=will.retain).reason_code < 0x80
    return d


def retained_status(port: int, version: int) -> bytes:
    """The payload retained on ``STATUS``, read by a fresh subscriber."""
    sub = Peer(port, "reader", version)
    sub.subscribe(Subscription(STATUS, 1))
    sub.subscribe(Subscription("marker", 1))
    got = [m.payload for m in until_marker(sub, "marker") if m.topic == STATUS]
    sub.close()
    assert len(got) == 1, got
    return got[0]


def wills_in_file(b: BrokerProc) -> int:
    with sqlite3.connect(b.db) as db:
        return int(db.execute("SELECT count(*) FROM wills").fetchone()[0])


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("ending", ["kill", "stop"])
def test_the_will_of_a_connection_open_at_a_crash_is_published_at_the_next_start(
    brokers: Callable[..., BrokerProc], version: int, ending: str
) -> None:
    b = brokers("--durability", "full").start()
    d = device(b.port, version, "dev", Will(STATUS, b"offline", 1, retain=True))
    assert retained_status(b.port, version) == b"online"
    getattr(b, ending)()  # the device never reconnects: it died with the broker
    d.close()
    b.start()
    assert retained_status(b.port, version) == b"offline"
    b.stop()
    assert wills_in_file(b) == 0  # published, so forgotten


@pytest.mark.parametrize("version", [4, 5])
def test_a_will_discarded_by_disconnect_stays_discarded(
    brokers: Callable[..., BrokerProc], version: int
) -> None:
    b = brokers("--durability", "full").start()
    d = device(b.port, version, "dev", Will(STATUS, b"offline", 1, retain=True))
    d.session.disconnect()  # normal DISCONNECT: no Will (MQTT-3.1.2-10)
    d.flush()
    d.close()
    # Another client's QoS 1 publish: its PUBACK follows the commit of the discard.
    other = Raw(b.port, "other", version)
    assert other.publish("x", b"", 1).reason_code < 0x80
    b.kill()
    b.start()
    assert retained_status(b.port, version) == b"online"
    b.stop()
    assert wills_in_file(b) == 0


def test_a_client_back_within_the_will_delay_after_a_restart_cancels_its_will(
    brokers: Callable[..., BrokerProc],
) -> None:
    b = brokers("--durability", "full").start()
    delay = {"will_delay_interval": 1}
    device(b.port, 5, "back", Will("gone/back", b"x", 1, properties=delay), expiry=600)
    slower = {"will_delay_interval": 2}
    device(b.port, 5, "lost", Will("gone/lost", b"x", 1, properties=slower), expiry=600)
    b.kill()
    b.start()
    sub = Peer(b.port, "watcher", 5)
    sub.subscribe(Subscription("gone/#", 1), Subscription("marker", 1))
    # "back" returns to its session within its 1 s; "lost" does not.
    will = Will("gone/back", b"x", 1, properties=delay)
    back = Raw(b.port, "back", 5, clean_start=False, will=will, properties=props(5, 600))
    assert back.connack.session_present
    # "lost"'s Will comes after 2 s; "back"'s would have come a second before it.
    first = sub.messages(1)[0]
    assert isinstance(first, Publish) and first.topic == "gone/lost"
    assert [m.topic for m in until_marker(sub, "marker")] == []
    b.stop()
    assert wills_in_file(b) == 1  # "back" was connected at the stop: its new Will is owed
