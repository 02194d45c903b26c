"""Sessions in the broker: persistent sessions and offline queueing, clean start, session
expiry, takeover, wills (and will delay), server-assigned client ids, keepalive."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from test_broker import WAIT, Closed, Raw, running

from fieldline.broker import BrokerThread
from fieldline.mqtt import Client, ConnAck, Disconnect, Subscription, Will

# On uvloop (the default when installed) and on asyncio's own loop.
pytestmark = pytest.mark.usefixtures("both_event_loops")

NEVER = 0xFFFFFFFF


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    yield from running()


def wait_for(broker: BrokerThread, key: str, value: int) -> None:
    """Wait until ``broker.stats()[key] == value`` (the broker's own view of an event)."""
    deadline = time.monotonic() + WAIT
    while broker.call(broker.broker.stats)[key] != value:
        assert time.monotonic() < deadline, f"stats[{key!r}] never became {value}"
        time.sleep(0.01)


@pytest.mark.parametrize("version", [4, 5])
def test_offline_persistent_session_gets_queued_messages(
    broker: BrokerThread, version: int
) -> None:
    props = {"session_expiry_interval": 60} if version == 5 else None
    sub = Raw(broker.port, "keeper", version, clean_start=False, properties=props)
    assert not sub.connack.session_present
    sub.subscribe(Subscription("q/#", 2))
    sub.session.disconnect()
    sub.flush()
    sub.close()
    wait_for(broker, "connected", 0)
    with Client(broker.host, broker.port, client_id="pub", version=version) as p:
        p.publish("q/0", b"qos0 is not queued", qos=0)
        for i in range(3):
            p.publish(f"q/{i}", b"%d" % i, qos=1 + i % 2)
    wait_for(broker, "queued", 3)
    sub = Raw(broker.port, "keeper", version, clean_start=False, properties=props)
    assert sub.connack.session_present  # MQTT-3.2.2-3
    got = sub.messages(3)
    assert [(m.topic, m.qos) for m in got] == [("q/0", 1), ("q/1", 2), ("q/2", 1)]
    assert sub.quiet()
    sub.close()


def test_clean_start_discards_the_session(broker: BrokerThread) -> None:
    props = {"session_expiry_interval": 60}
    sub = Raw(broker.port, "c", clean_start=False, properties=props)
    sub.subscribe(Subscription("cs", 1))
    sub.close()
    wait_for(broker, "connected", 0)
    broker.call(broker.broker.publish, "cs", b"x", 1)
    sub = Raw(broker.port, "c", clean_start=True, properties=props)
    assert not sub.connack.session_present
    assert sub.quiet()  # neither the queued message nor the subscription survived
    broker.call(broker.broker.publish, "cs", b"y", 1)
    assert sub.quiet()
    sub.close()


def test_session_expires_after_its_interval(broker: BrokerThread) -> None:
    sub = Raw(broker.port, "e", clean_start=False, properties={"session_expiry_interval": 1})
    sub.subscribe(Subscription("e", 1))
    sub.close()
    wait_for(broker, "sessions", 0)  # after about one second
    assert broker.call(broker.broker.stats)["subscriptions"] == 0
    sub = Raw(broker.port, "e", clean_start=False, properties={"session_expiry_interval": 1})
    assert not sub.connack.session_present
    sub.close()


def test_unacknowledged_message_is_resent_with_dup_on_resume(broker: BrokerThread) -> None:
    props = {"session_expiry_interval": NEVER}
    sub = Raw(broker.port, "r", clean_start=False, properties=props, auto_flush=False)
    sub.flush()
    sub.subscribe(Subscription("r", 1))
    broker.call(broker.broker.publish, "r", b"ack me", 1)
    (m,) = sub.messages(1)
    assert not m.dup
    sub.close()  # the PUBACK the session queued is never sent
    sub = Raw(broker.port, "r", clean_start=False, properties=props)
    (m,) = sub.messages(1)
    assert (m.payload, m.dup) == (b"ack me", True)  # MQTT-4.4.0-1
    assert sub.quiet()
    sub.close()


def test_takeover_v5_old_connection_gets_disconnect_0x8e(broker: BrokerThread) -> None:
    props = {"session_expiry_interval": 60}
    old = Raw(broker.port, "twin", clean_start=False, properties=props)
    old.subscribe(Subscription("tk", 1))
    new = Raw(broker.port, "twin", clean_start=False, properties=props)
    assert new.connack.session_present
    ev = old.next()
    assert isinstance(ev, Disconnect) and ev.reason_code == 0x8E
    with pytest.raises(Closed):
        old.next()
    broker.call(broker.broker.publish, "tk", b"to the new one", 1)
    assert [m.payload for m in new.messages(1)] == [b"to the new one"]
    new.close()
    old.close()


def test_takeover_v311_closes_old_connection_and_publishes_its_will(
    broker: BrokerThread,
) -> None:
    watcher = Raw(broker.port, "w", 4)
    watcher.subscribe(Subscription("will/#", 1))
    old = Raw(broker.port, "twin", 4, will=Will("will/twin", b"gone", 1))
    new = Raw(broker.port, "twin", 4)
    assert isinstance(new.connack, ConnAck) and new.connack.reason_code == 0
    with pytest.raises(Closed):
        old.next()  # 3.1.1 has no server DISCONNECT: just closed (MQTT-3.1.4-2)
    assert [m.topic for m in watcher.messages(1)] == ["will/twin"]
    for c in (watcher, old, new):
        c.close()


@pytest.mark.parametrize("version", [4, 5])
def test_will_on_abrupt_close_not_on_disconnect(broker: BrokerThread, version: int) -> None:
    watcher = Raw(broker.port, "w", version)
    watcher.subscribe(Subscription("will/#", 1))
    polite = Raw(broker.port, "polite", version, will=Will("will/polite", b"x", 1))
    polite.session.disconnect()
    polite.flush()
    with pytest.raises(Closed):
        polite.next()
    abrupt = Raw(broker.port, "abrupt", version, will=Will("will/abrupt", b"bye", 1, True))
    abrupt.close()  # no DISCONNECT
    (m,) = watcher.messages(1)
    assert (m.topic, m.payload) == ("will/abrupt", b"bye")
    # A retained Will stays for later subscribers.
    late = Raw(broker.port, "late", version)
    late.subscribe(Subscription("will/abrupt", 1))
    assert [m.payload for m in late.messages(1)] == [b"bye"]
    for c in (watcher, polite, late):
        c.close()


def test_disconnect_with_will_message_0x04(broker: BrokerThread) -> None:
    watcher = Raw(broker.port, "w")
    watcher.subscribe(Subscription("will/#", 1))
    c = Raw(broker.port, "c", will=Will("will/c", b"asked for", 1))
    c.session.disconnect(0x04)
    c.flush()
    assert [m.payload for m in watcher.messages(1)] == [b"asked for"]
    watcher.close()
    c.close()


def test_will_delay_is_cancelled_by_reconnect_and_fires_after_it(broker: BrokerThread) -> None:
    watcher = Raw(broker.port, "w")
    watcher.subscribe(Subscription("will/#", 1))
    props = {"session_expiry_interval": 60}
    will = Will("will/d", b"late", 1, properties={"will_delay_interval": 1})
    c = Raw(broker.port, "d", clean_start=False, properties=props, will=will)
    c.close()
    c = Raw(broker.port, "d", clean_start=False, properties=props, will=will)
    assert watcher.quiet(1.3)  # back within the delay: no Will (MQTT-3.1.3-9)
    c.close()
    (m,) = watcher.messages(1)  # after the 1 s delay
    assert m.payload == b"late"
    watcher.close()


def test_server_assigns_client_ids() -> None:
    with BrokerThread() as broker:
        a = Raw(broker.port, "")
        b = Raw(broker.port, "")
        ida = a.connack.properties["assigned_client_identifier"]
        idb = b.connack.properties["assigned_client_identifier"]
        assert ida and idb and ida != idb  # MQTT-3.1.3-6, 3.2.2.3.7
        v3 = Raw(broker.port, "", 4)  # 3.1.1: accepted, nothing announced
        assert v3.connack.reason_code == 0
        v3.subscribe(Subscription("anon", 1))
        broker.call(broker.broker.publish, "anon", b"x", 1)
        assert [m.payload for m in v3.messages(1)] == [b"x"]
        for c in (a, b, v3):
            c.close()


@pytest.mark.parametrize("version", [4, 5])
def test_keepalive_timeout_closes_after_one_and_a_half_times(version: int) -> None:
    with BrokerThread() as broker:
        c = Raw(broker.port, "sleepy", version, keep_alive=1)
        started = time.monotonic()
        try:
            ev = c.next(5)  # we never send PINGREQ
            assert version == 5 and isinstance(ev, Disconnect) and ev.reason_code == 0x8D
            with pytest.raises(Closed):
                c.next(5)
        except Closed:
            assert version == 4
        assert 1.4 <= time.monotonic() - started < 4  # MQTT-3.1.2-24
        c.close()


def test_server_keep_alive_and_session_expiry_caps() -> None:
    with BrokerThread(max_keep_alive=30, max_session_expiry=100) as broker:
        c = Raw(broker.port, "k", keep_alive=0, properties={"session_expiry_interval": NEVER})
        assert c.connack.properties["server_keep_alive"] == 30
        assert c.connack.properties["session_expiry_interval"] == 100
        assert c.session.keep_alive == 30
        c.close()


def test_the_caps_hold_for_3_1_1_clients_and_at_disconnect() -> None:
    with BrokerThread(max_keep_alive=30, max_session_expiry=1) as broker:
        # 3.1.1 cannot be told a Server Keep Alive: refused, return code 2 (as Mosquitto).
        for ka in (0, 31):
            c = Raw(broker.port, f"ka-{ka}", 4, keep_alive=ka)
            assert c.connack.reason_code == 2
            c.close()
        c = Raw(broker.port, "ka-ok", 4, keep_alive=30)
        assert c.connack.reason_code == 0
        c.close()
        # A 3.1.1 persistent session would never end: the cap ends it.
        c = Raw(broker.port, "v3", 4, clean_start=False, keep_alive=30)
        c.close()
        # A 5.0 DISCONNECT cannot lift the cap either (it asks for "never").
        c = Raw(broker.port, "v5", 5, properties={"session_expiry_interval": 1})
        c.session.disconnect(properties={"session_expiry_interval": NEVER})
        c.flush()
        c.close()
        deadline = time.monotonic() + WAIT
        while broker.call(broker.broker.stats)["sessions"]:
            assert time.monotonic() < deadline, "sessions outlived max_session_expiry"
            time.sleep(0.05)
        for version, cid in ((4, "v3"), (5, "v5")):
            c = Raw(broker.port, cid, version, clean_start=False, keep_alive=30)
            assert not c.connack.session_present
            c.close()
