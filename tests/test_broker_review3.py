"""Fixes from a third review of the broker against MQTT 5.0, Mosquitto and EMQX: each
test names the rule it checks; those of a fix fail without it."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_broker import WAIT, Raw, running
from test_broker_sessions import wait_for

from fieldline.broker import BrokerThread
from fieldline.mqtt import Disconnect, PubAck, Publish, SubAck, Subscription, Will, encode

# On uvloop (the default when installed) and on asyncio's own loop.
pytestmark = pytest.mark.usefixtures("both_event_loops")


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    yield from running()


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


# -- 1. an in-flight message whose Message Expiry Interval ran out (3.3.2.3.3) ----------


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


# -- 2. Keep Alive while an async plug-in hook decides (MQTT-3.1.2-22) -------------------


@pytest.mark.parametrize("hook", ["authorize_publish", "authorize_subscribe"])
def test_keep_alive_does_not_run_out_while_a_hook_decides(hook: str) -> None:
    # While an async hook decides on a PUBLISH or SUBSCRIBE the broker reads nothing
    # more from that client (its packets stay in order), so the PINGREQs it sends wait
    # in the socket: they are not the client's silence, and MQTT-3.1.2-22 (1.5 x Keep
    # Alive without a packet) must not cut it off. Once the hook has answered, Keep
    # Alive holds as before: a client that then goes silent is disconnected (0x8D).
    started, release = threading.Event(), threading.Event()

    class Slow:
        async def decide(self, client_id: str, *args: Any) -> None:
            started.set()
            while not release.is_set():
                await asyncio.sleep(0.01)

    plugin = Slow()
    setattr(plugin, hook, plugin.decide)
    for broker in running(plugins=[plugin], hook_timeout=WAIT):
        c = Raw(broker.port, "slow", keep_alive=1)
        if hook == "authorize_publish":
            c.session.publish("ka/x", b"x", 1)
        else:
            c.session.subscribe([Subscription("ka/#", 1)])
        c.flush()
        assert started.wait(WAIT)
        # What is under test is time passing: twice 1.5 x Keep Alive, the client
        # sending PINGREQ as it should.
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            c.session.ping()
            c.flush()
            assert c.quiet(0.4), "cut off while the hook decided"
        release.set()
        assert isinstance(c.next(), PubAck if hook == "authorize_publish" else SubAck)
        ev = c.next()  # silent from now on
        assert isinstance(ev, Disconnect) and ev.reason_code == 0x8D
        c.close()


# -- 3. a shared subscription group with no member left (4.8.2) --------------------------


def test_a_message_no_shared_member_is_left_to_take_is_counted_as_dropped(
    broker: BrokerThread,
) -> None:
    # 4.8.2: the messages an ending member had not completed go to another member of
    # its group. With none left they are lost: counted, as every delivery dropped is,
    # in dropped_total ($SYS publish/messages/dropped, messages_dropped_total), and on
    # their own in shared_dropped.
    only = Raw(broker.port, "only", auto_flush=False, receive_maximum=1)
    only.subscribe(Subscription("$share/g/jobs", 1))
    only.flush()
    for payload in (b"1", b"2"):
        broker.call(broker.broker.publish, "jobs", payload, 1)
    only.messages(1)  # never acknowledged; the other one waits in the queue
    only.close()  # clean session: it ends now, and the group with it
    wait_for(broker, "sessions", 0)
    st = broker.call(broker.broker.stats)
    assert (st["shared_dropped"], st["dropped_total"]) == (2, 2)


# -- 4. a review of MQTT 5.0 features against the spec and Mosquitto ---------------------

# Will Delay Interval and Session Expiry (3.1.3.2.2): the Will goes when the delay has
# passed or the session ends, whichever comes first. Covered elsewhere: a reconnect
# (Clean Start 0) before the delay cancels it, DISCONNECT 0x04 publishes it, a normal
# DISCONNECT discards it (test_broker_sessions.py).

LONG_DELAY = {"will_delay_interval": 3600}


def watch(broker: BrokerThread, topic_filter: str) -> Raw:
    w = Raw(broker.port, "watcher")
    w.subscribe(Subscription(topic_filter, 1))
    return w


def test_a_will_goes_when_a_session_of_expiry_0_ends_not_after_its_delay(
    broker: BrokerThread,
) -> None:
    # Session Expiry 0: the session ends with the connection, before the delay.
    w = watch(broker, "will/#")
    c = Raw(broker.port, "d", will=Will("will/d", b"gone", 1, properties=LONG_DELAY))
    c.close()
    (m,) = w.messages(1)
    assert m.payload == b"gone"
    assert "will_delay_interval" not in (m.properties or {})  # a CONNECT property only
    w.close()


def test_a_will_goes_when_the_session_expires_before_its_delay(broker: BrokerThread) -> None:
    # Session Expiry 1 s, lowered to it by DISCONNECT 0x04 (3.14.2.2.2), Will Delay 1 h:
    # the Will goes when the session ends, about 1 s later; not at once, not in an hour.
    w = watch(broker, "will/#")
    will = Will("will/e", b"expired", 1, properties=LONG_DELAY)
    c = Raw(broker.port, "e", properties={"session_expiry_interval": 60}, will=will)
    c.session.disconnect(0x04, {"session_expiry_interval": 1})
    c.flush()
    started = time.monotonic()
    (m,) = w.messages(1)
    assert m.payload == b"expired"
    assert 0.8 <= time.monotonic() - started < 5
    wait_for(broker, "sessions", 1)  # the watcher's alone: the session ended with it
    w.close()
    c.close()


def test_a_clean_start_before_the_will_delay_ends_the_session_and_sends_the_will(
    broker: BrokerThread,
) -> None:
    # A new connection with Clean Start 1 ends the old session (MQTT-3.1.2-4), so its
    # Will goes then, as Mosquitto does (connect__on_authorised: context__send_will);
    # only a connection to the same session cancels it (MQTT-3.1.3-9).
    w = watch(broker, "will/#")
    props = {"session_expiry_interval": 3600}
    will = Will("will/c", b"left", 1, properties=LONG_DELAY)
    Raw(broker.port, "c", clean_start=False, properties=props, will=will).close()
    wait_for(broker, "connected", 1)
    assert w.quiet(0.2)
    again = Raw(broker.port, "c", clean_start=True)
    assert not again.connack.session_present
    assert [m.payload for m in w.messages(1)] == [b"left"]
    again.close()
    w.close()


def test_a_takeover_before_the_will_delay_cancels_the_will(broker: BrokerThread) -> None:
    # A takeover (MQTT-3.1.4-3) ends the old connection, whose Will waits for its delay
    # (3.1.2.5); the new connection continues the session, so it is not sent
    # (MQTT-3.1.3-9). One without a delay goes at the takeover (test_broker_sessions.py).
    w = watch(broker, "will/#")
    props = {"session_expiry_interval": 3600}
    will = Will("will/t", b"taken", 1, properties={"will_delay_interval": 1})
    old = Raw(broker.port, "t", clean_start=False, properties=props, will=will)
    new = Raw(broker.port, "t", clean_start=False, properties=props)
    assert new.connack.session_present
    assert isinstance(old.next(), Disconnect)  # 0x8E
    assert w.quiet(1.5)  # past the delay: nothing
    new.session.disconnect()
    new.flush()
    assert w.quiet(0.3)
    for c in (w, old, new):
        c.close()


# Request/Response (4.10): Response Topic and Correlation Data reach the subscriber
# unchanged (MQTT-3.3.2-15, -16), whichever way the message went.

REQUEST = {
    "response_topic": "reply/to/me",
    "correlation_data": bytes(range(256)),  # binary, not UTF-8
    "payload_format_indicator": 0,
    "user_property": [("k", "v"), ("k", "v2")],
}


def test_response_topic_and_correlation_data_are_forwarded_unchanged(
    broker: BrokerThread,
) -> None:
    def same(m: Any) -> None:
        assert {k: m.properties.get(k) for k in REQUEST} == REQUEST, m

    keep = {"session_expiry_interval": 60}
    away = Raw(broker.port, "away", clean_start=False, properties=keep)
    away.subscribe(Subscription("req/#", 1))
    away.close()
    wait_for(broker, "connected", 0)
    live = Raw(broker.port, "live")
    live.subscribe(Subscription("req/#", 1))
    pub = Raw(broker.port, "pub", will=Will("req/will", b"w", 1, properties=REQUEST))
    assert pub.publish("req/live", b"q", 1, properties=REQUEST).reason_code == 0
    assert pub.publish("req/kept", b"r", 1, retain=True, properties=REQUEST).reason_code == 0
    pub.close()  # its Will
    for m in live.messages(3):  # live, retained (as it is routed), the Will
        same(m)
    late = Raw(broker.port, "late")
    late.subscribe(Subscription("req/kept", 1))
    same(late.messages(1)[0])  # the retained message, on subscribe
    back = Raw(broker.port, "away", clean_start=False, properties=keep)
    for m in back.messages(3):  # queued while it was away
        same(m)
    for c in (live, late, back):
        c.close()


# Subscription Identifiers (3.3.4, MQTT-3.3.4-3 to -5): beyond the overlapping case of
# test_broker_v5.py.


def test_subscription_identifiers_on_retained_shared_and_replaced_subscriptions(
    broker: BrokerThread,
) -> None:
    broker.call(broker.broker.publish, "sid/r", b"kept", 1, True)
    c = Raw(broker.port, "c")
    # A retained message sent on subscribe carries that subscription's identifier.
    c.subscribe(Subscription("sid/+", 1), properties={"subscription_identifier": 5})
    (m,) = c.messages(1)
    assert (m.retain, m.properties["subscription_identifier"]) == (True, [5])
    # A shared subscription is its own copy (4.8.2) with its own identifier only
    # (MQTT-3.3.4-5); the non-shared one keeps its single copy with 5.
    c.subscribe(Subscription("$share/g/sid/#", 1), properties={"subscription_identifier": 6})
    broker.call(broker.broker.publish, "sid/x", b"1", 1)
    got = sorted(m.properties["subscription_identifier"] for m in c.messages(2))
    assert got == [[5], [6]]
    # One a client puts in its PUBLISH (which MQTT-3.3.4-6 forbids) is not forwarded:
    # dropped, as Mosquitto drops it (handle__publish).
    pub = Raw(broker.port, "pub")
    pub.sock.sendall(encode(Publish("sid/z", b"3", 1, packet_id=1,
                                    properties={"subscription_identifier": [99]}), 5))  # fmt: skip
    got = sorted(m.properties["subscription_identifier"] for m in c.messages(2))
    assert got == [[5], [6]]
    pub.close()
    # Subscribing again without an identifier replaces the subscription: none now.
    c.subscribe(Subscription("sid/+", 1, retain_handling=2))
    c.subscribe(Subscription("$share/g/sid/#", 1))
    broker.call(broker.broker.publish, "sid/y", b"2", 1)
    for m in c.messages(2):
        assert "subscription_identifier" not in (m.properties or {}), m
    assert c.quiet(0.2)
    c.close()


# Retain Handling and Retain As Published (3.8.3.1, MQTT-3.3.1-9 to -13): beyond
# test_retain_handling_and_retain_as_published in test_broker.py.


def test_retain_handling_0_sends_retained_again_on_every_subscribe(broker: BrokerThread) -> None:
    broker.call(broker.broker.publish, "rh/a", b"kept", 1, True)
    c = Raw(broker.port, "c")
    for _ in range(2):  # new, then existing: MQTT-3.3.1-9 sends them both times
        c.subscribe(Subscription("rh/#", 1, retain_handling=0))
        (m,) = c.messages(1)
        assert (m.topic, m.retain) == ("rh/a", True)
    assert c.quiet(0.2)
    c.close()


def test_retain_as_published_per_subscription(broker: BrokerThread) -> None:
    # A retained message on subscribe has RETAIN 1 whatever Retain As Published says;
    # a live one keeps its RETAIN 1 only where it is set (MQTT-3.3.1-12, -13).
    c = Raw(broker.port, "c")
    c.subscribe(Subscription("rap/#", 1, retain_as_published=False))
    other = Raw(broker.port, "other")
    other.subscribe(Subscription("rap/#", 1, retain_as_published=True))
    broker.call(broker.broker.publish, "rap/x", b"1", 1, True)
    assert [m.retain for m in c.messages(1)] == [False]
    assert [m.retain for m in other.messages(1)] == [True]
    late = Raw(broker.port, "late")
    late.subscribe(Subscription("rap/#", 1, retain_as_published=False))
    assert [m.retain for m in late.messages(1)] == [True]
    for x in (c, other, late):
        x.close()


# Overlapping subscriptions of one client (3.3.4): beyond test_broker_v5.py's case.


@pytest.mark.parametrize("version", [4, 5])
def test_overlapping_subscriptions_give_one_copy_at_the_highest_qos(
    broker: BrokerThread, version: int
) -> None:
    # MQTT-3.3.4-2 (3.1.1: MQTT-3.3.5-1): one copy, at the highest QoS of the matching
    # subscriptions, capped by the message's; a No Local one that does not match the
    # sender leaves the others to deliver; also while the client is away (queued).
    keep = {"session_expiry_interval": 60} if version == 5 else None
    c = Raw(broker.port, "c", version, clean_start=False, properties=keep)
    c.subscribe(Subscription("ov/#", 0))
    c.subscribe(Subscription("ov/+", 2))
    c.subscribe(Subscription("ov/x", 1))
    broker.call(broker.broker.publish, "ov/x", b"q1", 1)
    (m,) = c.messages(1)
    assert m.qos == 1
    assert c.quiet(0.2)
    if version == 5:
        c.subscribe(Subscription("ov/x", 1, no_local=True))
    c.publish("ov/x", b"mine", 2)
    (m,) = c.messages(1)  # through ov/+ (and ov/#), not ov/x's No Local
    assert (m.payload, m.qos) == (b"mine", 2)
    assert c.quiet(0.2)
    c.close()
    wait_for(broker, "connected", 0)
    broker.call(broker.broker.publish, "ov/x", b"away", 2)
    back = Raw(broker.port, "c", version, clean_start=False, properties=keep)
    (m,) = back.messages(1)
    assert (m.payload, m.qos) == (b"away", 2)
    assert back.quiet(0.2)
    back.close()


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


def test_a_file_of_schema_2_gets_the_deadline_column(tmp_path: Path) -> None:
    # A schema 2 file has no deadline for in-flight messages: it opens as schema 3, and
    # its in-flight message is resent as before, with the interval it was sent with.
    db = tmp_path / "b.db"
    props = {"session_expiry_interval": 60}
    with BrokerThread(persistence=str(db), durability="full") as broker:
        c = Raw(broker.port, "x", clean_start=False, properties=props, auto_flush=False)
        c.subscribe(Subscription("exp/#", 1))
        broker.call(broker.broker.publish, "exp/1", b"m", 1, False, {"message_expiry_interval": 60})
        c.messages(1)
        c.close()
        wait_for(broker, "connected", 0)
    with sqlite3.connect(db) as conn:  # back to what a schema 2 broker wrote
        conn.executescript(
            """
            CREATE TABLE old AS SELECT client_id, packet_id, ord, state, topic, payload, qos,
                retain, props, share FROM inflight;
            DROP TABLE inflight;
            ALTER TABLE old RENAME TO inflight;
            UPDATE meta SET value=2 WHERE key='schema';
            """
        )
    conn.close()
    with BrokerThread(persistence=str(db)) as broker:
        again = Raw(broker.port, "x", clean_start=False, properties=props)
        (m,) = again.messages(1)
        assert (m.topic, m.dup, m.properties["message_expiry_interval"]) == ("exp/1", True, 60)
        again.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (3,)
        assert "expires" in [r[1] for r in conn.execute("PRAGMA table_info(inflight)")]
    conn.close()
