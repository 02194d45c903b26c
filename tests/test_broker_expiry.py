"""Message Expiry Interval (MQTT 5.0 3.3.2.3.3): an interval of 0 reaches only subscribers
it can go to at once; a message in flight is resent with the interval left, and keeps its
deadline across a restart. Over real sockets, against our broker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_broker import WAIT, Raw, paho_client, paho_wait_connected, running
from test_broker_sessions import wait_for

from fieldline.broker import BrokerThread
from fieldline.mqtt import PubAck, Subscription

# On uvloop (the default when installed) and on asyncio's own loop.
pytestmark = pytest.mark.usefixtures("both_event_loops")


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    yield from running()


AT_ONCE = {"message_expiry_interval": 0}


# -- Message Expiry Interval 0 (3.3.2.3.3) ----------------------------------------------


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_expiry_interval_0_reaches_a_connected_subscriber(broker: BrokerThread, qos: int) -> None:
    # 3.3.2.3.3: a lifetime of 0 seconds. Onward delivery to a connected subscriber
    # starts at once, so it gets the message (Mosquitto delivers it too), with the
    # interval left: 0 (MQTT-3.3.2-6).
    sub = Raw(broker.port, "sub")
    sub.subscribe(Subscription("now/#", 2))
    pub, _ = paho_client(broker.port, 5, "pub")
    try:
        paho_wait_connected(pub)
        props = Properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = 0
        pub.publish("now/x", b"at once", qos, properties=props).wait_for_publish(WAIT)
        (m,) = sub.messages(1)
        assert (m.topic, m.payload, m.qos) == ("now/x", b"at once", qos)
        assert m.properties["message_expiry_interval"] == 0
        assert broker.call(broker.broker.stats)["expired"] == 0
    finally:
        pub.loop_stop()
        pub.disconnect()
        sub.close()


def test_expiry_interval_0_is_not_kept_for_an_offline_session(broker: BrokerThread) -> None:
    # MQTT-3.3.2-5: delivery to an offline subscriber cannot start before the
    # interval has passed: its copy is deleted, not queued.
    props = {"session_expiry_interval": 60}
    sub = Raw(broker.port, "away", properties=props)
    sub.subscribe(Subscription("now/#", 1))
    sub.close()
    wait_for(broker, "connected", 0)
    pub = Raw(broker.port, "pub")
    assert isinstance(pub.publish("now/x", b"gone", 1, properties=AT_ONCE), PubAck)
    pub.publish("now/y", b"kept", 1)
    assert broker.call(broker.broker.stats)["queued"] == 1
    back = Raw(broker.port, "away", clean_start=False, properties=props)
    assert [m.payload for m in back.messages(1)] == [b"kept"]
    assert back.quiet()
    assert broker.call(broker.broker.stats)["expired"] == 1
    back.close()
    pub.close()


def test_expiry_interval_0_is_dropped_when_it_has_to_wait_in_the_queue(
    broker: BrokerThread,
) -> None:
    # A connected subscriber whose Receive Maximum is reached: the message waits in
    # the queue, its delivery has not started, and its 0 seconds have run out.
    sub = Raw(broker.port, "slow", auto_flush=False, receive_maximum=1)
    sub.subscribe(Subscription("now/#", 1))
    sub.flush()
    publish = broker.broker.publish
    broker.call(publish, "now/1", b"in flight", 1)
    (first,) = sub.messages(1)  # not acknowledged yet: the window is full
    broker.call(publish, "now/2", b"waits", 1, False, AT_ONCE)
    broker.call(publish, "now/3", b"no expiry", 1)
    wait_for(broker, "queued", 2)
    sub.flush()  # the PUBACK: room again
    assert [m.payload for m in sub.messages(1)] == [b"no expiry"]
    sub.flush()
    assert sub.quiet()
    assert broker.call(broker.broker.stats)["expired"] == 1
    sub.close()


def test_expiry_interval_0_is_not_retained(broker: BrokerThread) -> None:
    # 3.3.2.3.3: a retained message whose interval passed is not sent to new
    # subscribers. With 0 it has passed when it is stored: it replaces the topic's
    # retained message (MQTT-3.3.1-5) and is gone at once, so the topic has none.
    pub = Raw(broker.port, "pub")
    pub.publish("r/x", b"old", 1, retain=True)
    assert broker.call(broker.broker.stats)["retained"] == 1
    pub.publish("r/x", b"new", 1, retain=True, properties=AT_ONCE)
    assert broker.call(broker.broker.stats)["retained"] == 0
    sub = Raw(broker.port, "sub")
    sub.subscribe(Subscription("r/#", 1))
    assert sub.quiet()
    sub.close()
    pub.close()


def wait_past(broker: BrokerThread, client_id: str) -> None:
    """Wait until the broker's clock has passed when the Message Expiry Interval of
    every message in flight to ``client_id`` runs out."""
    b = broker.broker

    def left() -> float:
        deadlines = b.sessions.get(client_id).expiry.values()  # type: ignore[union-attr]
        return max(deadlines) - b.loop.time()

    end = time.monotonic() + WAIT
    while broker.call(left) >= 0:
        assert time.monotonic() < end, "the messages never expired"
        time.sleep(0.05)


# -- an in-flight message whose Message Expiry Interval ran out (3.3.2.3.3) ----------


@pytest.mark.parametrize("interval", [1, 0])
def test_an_expired_message_in_flight_is_resent_with_interval_0(
    broker: BrokerThread, interval: int
) -> None:
    # Sent and never acknowledged, the messages' delivery has started: MQTT-3.3.2-5
    # deletes only a copy whose delivery has not, and MQTT-4.4.0-1 has them sent again
    # when the session resumes. They carry the interval left (MQTT-3.3.2-6): none, 0,
    # which the broker itself reads as a lifetime of 0 s, not as "never expires".
    # (Mosquitto drops them instead: db__message_write_inflight_out_single.)
    props = {"session_expiry_interval": 60}
    c = Raw(broker.port, "x", clean_start=False, properties=props, auto_flush=False)
    c.subscribe(Subscription("exp/#", 2))
    expiring = {"message_expiry_interval": interval}
    broker.call(broker.broker.publish, "exp/1", b"qos 1", 1, False, expiring)
    broker.call(broker.broker.publish, "exp/2", b"qos 2", 2, False, expiring)
    first = c.messages(2)
    assert [m.properties["message_expiry_interval"] for m in first] == [interval] * 2
    c.close()  # no PUBACK, no PUBREC sent
    wait_for(broker, "connected", 0)
    wait_past(broker, "x")
    again = Raw(broker.port, "x", clean_start=False, properties=props)
    assert again.connack.session_present
    got = again.messages(2)
    assert [(m.topic, m.dup) for m in got] == [("exp/1", True), ("exp/2", True)]
    assert [m.properties["message_expiry_interval"] for m in got] == [0, 0]
    assert broker.call(broker.broker.stats)["expired"] == 0
    assert again.quiet(0.2)
    again.close()


# -- the deadline of an in-flight message across a restart (persistence schema 3) --------


def test_an_in_flight_message_keeps_its_expiry_deadline_across_a_restart(
    tmp_path: Path,
) -> None:
    # A message sent and not acknowledged when the broker stopped is sent again after
    # the restart with the interval it has left (MQTT-3.3.2-6): the persistence file
    # keeps its deadline. It used to keep only the interval it was sent with, so the
    # resend, a second after it had run out, still claimed that second.
    db = str(tmp_path / "b.db")
    props = {"session_expiry_interval": 60}
    with BrokerThread(persistence=db, durability="full") as broker:
        c = Raw(broker.port, "x", clean_start=False, properties=props, auto_flush=False)
        c.subscribe(Subscription("exp/#", 1))
        expiring = {"message_expiry_interval": 1}
        broker.call(broker.broker.publish, "exp/1", b"qos 1", 1, False, expiring)
        assert [m.properties["message_expiry_interval"] for m in c.messages(1)] == [1]
        c.close()  # no PUBACK
        wait_for(broker, "connected", 0)
    with BrokerThread(persistence=db) as broker:
        wait_past(broker, "x")  # the deadline came back from the file
        again = Raw(broker.port, "x", clean_start=False, properties=props)
        assert again.connack.session_present
        (m,) = again.messages(1)
        assert (m.topic, m.dup, m.properties["message_expiry_interval"]) == ("exp/1", True, 0)
        again.close()
