"""MQTT 5.0 routing in the broker: shared subscriptions, subscription identifiers,
no-local, overlapping subscriptions, Receive Maximum both ways, Maximum Packet Size both
ways, message expiry, topic aliases from clients."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from test_broker import Closed, Raw, running
from test_broker_sessions import wait_for

from fieldline.broker import BrokerThread
from fieldline.mqtt import Disconnect, PubAck, Subscription

# On uvloop (the default when installed) and on asyncio's own loop.
pytestmark = pytest.mark.usefixtures("both_event_loops")


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    yield from running()


def test_shared_subscription_splits_round_robin(broker: BrokerThread) -> None:
    workers = [Raw(broker.port, f"w{i}") for i in range(3)]
    for w in workers:
        w.subscribe(Subscription("$share/g/jobs/#", 1))
    plain = Raw(broker.port, "plain")
    plain.subscribe(Subscription("jobs/#", 1))
    for i in range(6):
        broker.call(broker.broker.publish, f"jobs/{i}", b"%d" % i, 1)
    got = [[m.payload for m in w.messages(2)] for w in workers]
    assert sorted(sum(got, [])) == [b"%d" % i for i in range(6)]  # each exactly once
    assert all(w.quiet(0.1) for w in workers)
    assert len(plain.messages(6)) == 6  # a non-shared subscriber still gets every one
    for c in [*workers, plain]:
        c.close()


def test_overlapping_subscriptions_one_delivery_max_qos_all_ids(broker: BrokerThread) -> None:
    c = Raw(broker.port, "c")
    c.subscribe(Subscription("o/#", 0), properties={"subscription_identifier": 1})
    c.subscribe(Subscription("o/+", 2), properties={"subscription_identifier": 2})
    c.subscribe(Subscription("o/x", 1))  # no identifier
    broker.call(broker.broker.publish, "o/x", b"once", 2)
    (m,) = c.messages(1)
    assert m.qos == 2  # MQTT-3.3.4-2: the highest QoS of the matches
    assert sorted(m.properties["subscription_identifier"]) == [1, 2]  # MQTT-3.3.4-3
    assert c.quiet()
    c.close()


def test_no_local(broker: BrokerThread) -> None:
    c = Raw(broker.port, "self")
    c.subscribe(Subscription("nl", 1, no_local=True))
    other = Raw(broker.port, "other")
    other.subscribe(Subscription("nl", 1))
    c.publish("nl", b"mine", 1)
    assert [m.payload for m in other.messages(1)] == [b"mine"]
    assert c.quiet()  # MQTT-3.8.3-3
    other.publish("nl", b"theirs", 1)
    assert [m.payload for m in c.messages(1)] == [b"theirs"]
    c.close()
    other.close()


def test_broker_respects_client_receive_maximum(broker: BrokerThread) -> None:
    c = Raw(broker.port, "slow", auto_flush=False, receive_maximum=2)
    c.flush()
    c.subscribe(Subscription("rm", 1))
    for i in range(5):
        broker.call(broker.broker.publish, "rm", b"%d" % i, 1)
    assert [m.payload for m in c.messages(2)] == [b"0", b"1"]
    assert c.quiet()  # MQTT-4.9.0-2: no more than 2 unacknowledged
    c.flush()  # the two PUBACKs
    assert [m.payload for m in c.messages(2)] == [b"2", b"3"]
    c.flush()
    assert [m.payload for m in c.messages(1)] == [b"4"]
    c.close()


def test_client_over_broker_receive_maximum_is_disconnected() -> None:
    with BrokerThread(receive_maximum=2) as broker:
        c = Raw(broker.port, "eager")
        assert c.connack.properties["receive_maximum"] == 2
        # Three QoS 2 messages without releasing any: 0x93 (MQTT-3.3.4-9). Our client
        # session would wait for the window, so write the PUBLISH bytes by hand.
        c.sock.sendall(b"".join(b"\x34\x07\x00\x02rm\x00" + bytes([i, 0]) for i in (1, 2, 3)))
        events = []
        with pytest.raises(Closed):
            while True:
                events.append(c.next())
        assert isinstance(events[-1], Disconnect) and events[-1].reason_code == 0x93
        c.close()


def test_maximum_packet_size_both_ways() -> None:
    with BrokerThread(max_packet_size=200) as broker:
        small = Raw(broker.port, "small", max_packet_size=100)
        assert small.connack.properties["maximum_packet_size"] == 200
        small.subscribe(Subscription("big/#", 1))
        broker.call(broker.broker.publish, "big/a", b"x" * 150, 1)  # too large for it
        broker.call(broker.broker.publish, "big/b", b"fits", 1)
        assert [m.payload for m in small.messages(1)] == [b"fits"]  # MQTT-3.1.2-25
        assert broker.call(broker.broker.stats)["dropped"] == 1
        sender = Raw(broker.port, "sender")
        sender.sock.sendall(b"\x30\xc8\x01\x00\x01t" + b"x" * 197)  # 203 bytes > 200
        ev = sender.next()
        assert isinstance(ev, Disconnect) and ev.reason_code == 0x95
        small.close()
        sender.close()


def test_message_expiry_drops_queued_and_decrements_forwarded(broker: BrokerThread) -> None:
    props = {"session_expiry_interval": 60}
    c = Raw(broker.port, "x", clean_start=False, properties=props)
    c.subscribe(Subscription("exp/#", 1))
    c.close()
    wait_for(broker, "connected", 0)
    publish = broker.broker.publish
    broker.call(publish, "exp/a", b"short", 1, False, {"message_expiry_interval": 1})
    broker.call(publish, "exp/b", b"long", 1, False, {"message_expiry_interval": 60})
    broker.call(publish, "exp/c", b"forever", 1)
    time.sleep(1.1)  # what is under test is time passing: the first one runs out
    c = Raw(broker.port, "x", clean_start=False, properties=props)
    got = c.messages(2)
    assert [m.payload for m in got] == [b"long", b"forever"]
    # MQTT-3.3.2-6: the interval left, not the one received; none when there was none.
    assert 58 <= got[0].properties["message_expiry_interval"] <= 59
    assert "message_expiry_interval" not in (got[1].properties or {})
    assert c.quiet(0.2)
    assert broker.call(broker.broker.stats)["expired"] == 1
    c.close()


@pytest.mark.parametrize("takeover", [False, True], ids=["reconnect", "takeover"])
def test_a_resent_message_carries_the_expiry_interval_left(
    broker: BrokerThread, takeover: bool
) -> None:
    # MQTT-3.3.2-6 holds for a resend too: QoS 1 and 2 messages sent, never acked,
    # go again (DUP) when the session resumes, carrying the interval left then, as
    # does a message first sent then (queued while the client was away).
    props = {"session_expiry_interval": 60}
    c = Raw(broker.port, "x", clean_start=False, properties=props, auto_flush=False)
    c.subscribe(Subscription("exp/#", 2))
    publish = broker.broker.publish
    expiring = {"message_expiry_interval": 10}
    broker.call(publish, "exp/1", b"qos 1", 1, False, expiring)
    broker.call(publish, "exp/2", b"qos 2", 2, False, expiring)
    first = c.messages(2)
    assert [m.properties["message_expiry_interval"] for m in first] == [10, 10]
    if not takeover:
        c.close()  # no PUBACK, no PUBREC sent
        wait_for(broker, "connected", 0)
        broker.call(publish, "exp/queued", b"first sent later", 1, False, expiring)
    time.sleep(1.5)  # what is under test is time passing while the messages wait
    again = Raw(broker.port, "x", clean_start=False, properties=props)
    assert again.connack.session_present
    got = again.messages(2 if takeover else 3)
    assert [(m.topic, m.dup) for m in got[:2]] == [("exp/1", True), ("exp/2", True)]
    if not takeover:
        assert (got[2].topic, got[2].dup) == ("exp/queued", False)
    for m in got:
        assert 5 <= m.properties["message_expiry_interval"] <= 9, m
    assert again.quiet(0.2)
    again.close()
    c.close()


def test_puback_reason_is_success(broker: BrokerThread) -> None:
    c = Raw(broker.port, "p")
    ack = c.publish("nobody/listens", b"x", 1)
    assert isinstance(ack, PubAck) and ack.reason_code in (0, 0x10)
    c.close()


def test_topic_aliases_from_a_client(broker: BrokerThread) -> None:
    # The broker grants aliases (Topic Alias Maximum in its CONNACK); a client that
    # uses them (our session's automatic aliases: the topic goes once, then only its
    # alias) has every message delivered under the full topic name.
    sub = Raw(broker.port, "alias-sub")
    sub.subscribe(Subscription("al/#", 1))
    pub = Raw(broker.port, "alias-pub", auto_alias=True)
    try:
        assert pub.connack.properties["topic_alias_maximum"] >= 1
        sent: list[bytes] = []
        for i in range(3):
            pub.session.publish("al/x", b"%d" % i, 1)
            sent.append(pub.session.data_to_send())
            pub.sock.sendall(sent[-1])
            assert isinstance(pub.next(), PubAck)
        assert b"al/x" in sent[0] and all(b"al/x" not in s for s in sent[1:])  # alias only
        got = sub.messages(3)
        assert [(m.topic, m.payload) for m in got] == [
            ("al/x", b"0"),
            ("al/x", b"1"),
            ("al/x", b"2"),
        ]
        assert all("topic_alias" not in (m.properties or {}) for m in got)  # hop-only
    finally:
        pub.close()
        sub.close()


def test_topic_alias_over_the_maximum_is_a_protocol_error(broker: BrokerThread) -> None:
    from fieldline.mqtt import Publish, encode

    c = Raw(broker.port, "alias-bad")
    try:
        maximum = c.connack.properties["topic_alias_maximum"]
        bad = Publish("al/y", b"x", 0, properties={"topic_alias": maximum + 1})
        c.sock.sendall(encode(bad, 5))
        ev = c.next()
        assert isinstance(ev, Disconnect) and ev.reason_code == 0x94  # Topic Alias invalid
    finally:
        c.close()
