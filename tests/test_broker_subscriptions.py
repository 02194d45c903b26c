"""Subscriptions and what they are sent: retained messages of deep and wildcard filters, in
the order their topics were made; repeated and invalid filters; subscription identifiers,
Retain Handling and Retain As Published (MQTT 5.0 3.8.3.1); overlapping subscriptions.
Over real sockets, against our broker."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from test_broker import Raw, recv_exact, running
from test_broker_sessions import wait_for

from fieldline.broker import BrokerThread
from fieldline.mqtt import Connect, Publish, Subscription, encode

# On uvloop (the default when installed) and on asyncio's own loop.
pytestmark = pytest.mark.usefixtures("both_event_loops")


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    yield from running()


def test_a_wildcard_filter_thousands_of_levels_deep_finds_its_retained_message(
    broker: BrokerThread,
) -> None:
    # A topic may have thousands of levels (up to 65535 bytes): the retained store's
    # walk of a wildcard filter that deep raised RecursionError on the event loop, and
    # the subscriber's connection died without its SUBACK.
    topic = "/".join(["a"] * 1500)
    p = Raw(broker.port, "p")
    p.publish(topic, b"deep", 1, retain=True)
    c = Raw(broker.port, "c")
    for f in ("/".join(["+"] * 1500), "/".join(["a"] * 1499) + "/+", "a/+/" + topic[4:]):
        ack = c.subscribe(Subscription(f, 1))
        assert ack.reason_codes == [1]
        (m,) = c.messages(1)
        assert (m.topic, m.payload, m.retain) == (topic, b"deep", True)
    p.close()
    c.close()


def test_a_subscribe_repeating_a_filter_does_not_hold_up_the_broker() -> None:
    # MQTT-3.8.4-5: each filter of a SUBSCRIBE is handled as if subscribed alone, so
    # one repeating "#" gets the retained messages again each time, and all but what
    # the queue holds are dropped. Making them all first stalled the event loop (here
    # 20 million deliveries): the SUBACK and every other client waited.
    with BrokerThread(max_queued_messages=100) as broker:
        for i in range(1000):
            broker.call(broker.broker.publish, f"r/{i}", b"x", 1, True)
        c = Raw(broker.port, "greedy")
        ack = c.subscribe(*[Subscription("#", 1)] * 20000)
        assert ack.reason_codes == [1] * 20000
        other = Raw(broker.port, "other")  # the broker still answers others
        assert other.connack.reason_code == 0
        got = c.messages(100)  # what the queue holds: the last 100 (drop_oldest)
        assert all(m.retain for m in got)
        assert c.quiet()
        assert broker.call(broker.broker.stats)["dropped"] == 20000 * 1000 - 100
        c.close()
        other.close()


def test_retained_messages_of_a_wildcard_filter_come_in_the_order_their_topics_were_made(
    broker: BrokerThread,
) -> None:
    # The order the recursive walk gave before 8ad5d12 (not a spec rule, but devices
    # reading "config/+" at start-up saw it, so the iterative walk keeps it).
    topics = [f"config/{i}" for i in range(10)]
    for t in topics:
        broker.call(broker.broker.publish, t, t.encode(), 1, True)
    c = Raw(broker.port, "c")
    c.subscribe(Subscription("config/+", 1))
    assert [m.topic for m in c.messages(10)] == topics
    c.close()


def test_unsubscribe_of_an_invalid_filter_is_answered_as_subscribe_answers_it(
    broker: BrokerThread,
) -> None:
    # UNSUBSCRIBE a/#/b: 0x8F (Topic Filter invalid), as SUBSCRIBE of it
    # gets, not 0x11 (No subscription existed); the valid filter beside it
    # is still removed. Sent as raw bytes: our own client refuses the filter.
    with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as sock:
        sock.sendall(bytes(encode(Connect("u", protocol_level=5), 5)))
        connack = sock.recv(2)
        assert connack[0] == 0x20
        recv_exact(sock, connack[1])
        sub = b"\x00\x03a/b\x00"
        sock.sendall(b"\x82" + bytes([3 + len(sub)]) + b"\x00\x01\x00" + sub)
        assert recv_exact(sock, 6) == b"\x90\x04\x00\x01\x00\x00"  # SUBACK, QoS 0
        body = b"\x00\x02\x00" + b"\x00\x05a/#/b" + b"\x00\x03a/b"
        sock.sendall(b"\xa2" + bytes([len(body)]) + body)
        assert recv_exact(sock, 7) == b"\xb0\x05\x00\x02\x00\x8f\x00"  # UNSUBACK


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
