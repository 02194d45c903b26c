"""The limits that protect the broker process: payload bytes queued per session (beside
the message count, same drop policy and counter), connections, and each client's
publish rate. Real sockets; the broker's own ``stats()`` says when an event happened."""

from __future__ import annotations

import math
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from test_broker import WAIT, Closed, Raw, running
from test_broker_sessions import wait_for

from fieldline.broker import BrokerConfig, BrokerThread, ConfigError
from fieldline.broker.configfile import apply_flags, load_config
from fieldline.broker.limits import TokenBucket
from fieldline.mqtt import Subscription

PROPS = {"session_expiry_interval": 60}


def offline_subscriber(broker: BrokerThread, client_id: str) -> None:
    """A persistent session subscribed to ``q/#`` at QoS 1, then disconnected."""
    sub = Raw(broker.port, client_id, clean_start=False, properties=PROPS)
    sub.subscribe(Subscription("q/#", 1))
    sub.session.disconnect()
    sub.flush()
    sub.close()
    wait_for(broker, "connected", 0)


def reconnect(broker: BrokerThread, client_id: str) -> Raw:
    sub = Raw(broker.port, client_id, clean_start=False, properties=PROPS)
    assert sub.connack.session_present
    return sub


# -- max_queued_bytes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "kept"), [("drop_oldest", [b"7", b"8", b"9"]), ("drop_new", [b"0", b"1", b"2"])]
)
def test_queued_bytes_limit_drops_by_policy_and_counts(policy: str, kept: list[bytes]) -> None:
    for broker in running(max_queued_bytes=1000, queue_policy=policy):
        offline_subscriber(broker, "slow")
        for i in range(10):  # 303 bytes each (the topic counts): three fit in 1000
            broker.call(broker.broker.publish, "q/x", b"%d" % i + b"." * 299, 1)
        stats = broker.call(broker.broker.stats)
        assert (stats["queued"], stats["queued_bytes"], stats["dropped"]) == (3, 909, 7)
        sub = reconnect(broker, "slow")
        assert [m.payload[:1] for m in sub.messages(3)] == kept
        assert sub.quiet()
        wait_for(broker, "queued_bytes", 0)
        sub.close()


def test_message_larger_than_the_byte_limit_is_dropped_alone() -> None:
    for broker in running(max_queued_bytes=1000):  # drop_oldest
        offline_subscriber(broker, "slow")
        broker.call(broker.broker.publish, "q/small", b"s" * 100, 1)  # 107 with its topic
        broker.call(broker.broker.publish, "q/huge", b"h" * 995, 1)  # 1000 + 1
        stats = broker.call(broker.broker.stats)
        assert (stats["queued"], stats["queued_bytes"], stats["dropped"]) == (1, 107, 1)
        sub = reconnect(broker, "slow")
        assert [m.topic for m in sub.messages(1)] == ["q/small"]
        assert sub.quiet()
        sub.close()


# -- max_connections ---------------------------------------------------------------------


def test_connection_beyond_max_connections_is_refused_and_closed() -> None:
    for broker in running(max_connections=2):
        first, second = Raw(broker.port, "a"), Raw(broker.port, "b")
        assert (first.connack.reason_code, second.connack.reason_code) == (0, 0)
        for version, code in ((5, 0x97), (4, 3)):  # Quota exceeded; Server unavailable
            extra = Raw(broker.port, f"extra{version}", version)
            assert extra.connack.reason_code == code
            with pytest.raises(Closed):
                extra.next()
            extra.close()
        stats = broker.call(broker.broker.stats)
        assert (stats["connections_refused"], stats["sessions"]) == (2, 2)
        wait_for(broker, "connections", 2)
        first.close()
        wait_for(broker, "connections", 1)
        third = Raw(broker.port, "c")  # room again
        assert third.connack.reason_code == 0
        assert second.subscribe(Subscription("still/here", 1)).reason_codes == [1]
        for c in (second, third):
            c.close()


def test_max_connections_zero_means_no_limit() -> None:
    for broker in running(max_connections=0):
        clients = [Raw(broker.port, f"c{i}") for i in range(5)]
        assert [c.connack.reason_code for c in clients] == [0] * 5
        for c in clients:
            c.close()


# -- max_publish_rate --------------------------------------------------------------------

RATE = 5  # a second, and the bucket holds one second's worth


def subscriber(broker: BrokerThread) -> Raw:
    sub = Raw(broker.port, "sub")
    sub.subscribe(Subscription("r/#", 1))
    return sub


def answer(pub: Raw, topic: str, payload: bytes, qos: int) -> Any:
    """Publish at QoS 1/2 and return the PubAck, PubComp or failed PubRec. Unlike
    ``Raw.publish`` it sends the PUBREL a successful PUBREC calls for (no event comes
    with that PUBREC, so Raw would not flush it)."""
    pub.session.publish(topic, payload, qos)
    pub.flush()
    while True:
        ev = pub.session.next_event()  # handling a PUBREC queues the PUBREL
        pub.flush()
        if ev is not None:
            return ev
        data = pub.sock.recv(65536)
        if not data:
            raise Closed()
        pub.session.receive_data(data, time.monotonic())


def within_rate(accepted: int, seconds: float) -> bool:
    return RATE <= accepted <= RATE + RATE * seconds + 1


@pytest.mark.parametrize("qos", [1, 2])
def test_publishes_over_the_rate_are_answered_0x97_and_dropped(qos: int) -> None:
    for broker in running(max_publish_rate=RATE):
        sub = subscriber(broker)
        pub = Raw(broker.port, "fast")
        start = time.monotonic()
        codes = [answer(pub, "r/x", b"%d" % i, qos).reason_code for i in range(20)]
        seconds = time.monotonic() - start
        # 0x97 Quota exceeded: PUBACK/PUBREC may not carry 0x96 (MQTT 5.0 3.4.2.1, 3.5.2.1)
        refused = codes.count(0x97)
        accepted = 20 - refused
        assert set(codes) == {0, 0x97} and within_rate(accepted, seconds), (codes, seconds)
        assert codes[:RATE] == [0] * RATE  # the burst goes through
        assert broker.call(broker.broker.stats)["rate_limited"] == refused
        payloads = [m.payload for m in sub.messages(accepted)]
        assert payloads == [b"%d" % i for i, c in enumerate(codes) if c == 0]
        assert sub.quiet()
        for c in (sub, pub):
            c.close()


@pytest.mark.parametrize(("version", "qos"), [(5, 0), (4, 0), (4, 1)])
def test_publishes_over_the_rate_are_dropped_quietly_without_a_reason_code(
    version: int, qos: int
) -> None:
    # QoS 0 has no answer; 3.1.1 has no reason code for it: a normal ack, message dropped.
    for broker in running(max_publish_rate=RATE):
        sub = subscriber(broker)
        pub = Raw(broker.port, "fast", version)
        start = time.monotonic()
        acks = [pub.publish("r/x", b"%d" % i, qos) for i in range(20)]
        seconds = time.monotonic() - start
        if qos:
            assert all(ack.reason_code in (0, None) for ack in acks)  # 3.1.1 acks carry none
        else:
            # The SUBACK comes once every PUBLISH before it was handled.
            assert pub.subscribe(Subscription("barrier", 0)).reason_codes == [0]
        refused = broker.call(broker.broker.stats)["rate_limited"]
        accepted = 20 - refused
        assert within_rate(accepted, seconds), (refused, seconds)
        assert len(sub.messages(accepted)) == accepted
        assert sub.quiet()
        for c in (sub, pub):
            c.close()


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(2, now=0.0)  # holds 2
    assert [bucket.take(0.0) for _ in range(3)] == [True, True, False]
    assert bucket.take(0.25) is False  # half a token
    assert bucket.take(0.5) is True
    assert [bucket.take(100.0) for _ in range(3)] == [True, True, False]  # never above 2
    slow = TokenBucket(0.5, now=0.0)  # holds at least one
    assert (slow.take(0.0), slow.take(1.0), slow.take(2.0)) == (True, False, True)


# -- max_subscriptions and max_topic_aliases_out -----------------------------------------


@pytest.mark.parametrize(("version", "refused"), [(5, 0x97), (4, 0x80)])
def test_subscriptions_beyond_max_subscriptions_are_refused_per_filter(
    version: int, refused: int
) -> None:
    # 5.0: 0x97 Quota exceeded; 3.1.1 has one failure code, 0x80. A filter the session
    # holds already may be subscribed again (its options replaced) at the limit; room
    # made by UNSUBSCRIBE can be used again.
    for broker in running(max_subscriptions=3):
        c = Raw(broker.port, "greedy", version)
        assert c.subscribe("a", "b").reason_codes == [0, 0]
        ack = c.subscribe(Subscription("c", 1), "d", Subscription("a", 1))
        assert ack.reason_codes == [1, refused, 1]
        assert broker.call(broker.broker.stats)["subscriptions"] == 3
        c.publish("d", b"not subscribed", 0)
        c.publish("c", b"subscribed", 1)
        assert [m.topic for m in c.messages(1)] == ["c"]
        c.session.unsubscribe("b")
        c.flush()
        c.next()  # UNSUBACK
        assert c.subscribe("d").reason_codes == [0]
        c.close()


def test_max_subscriptions_zero_means_no_limit() -> None:
    for broker in running(max_subscriptions=0):
        c = Raw(broker.port, "many")
        filters = [f"f/{i}" for i in range(1100)]  # beyond the default of 1000
        assert c.subscribe(*filters).reason_codes == [0] * 1100
        c.close()


def test_the_broker_assigns_at_most_max_topic_aliases_out_aliases() -> None:
    # The client takes 1000 aliases, the broker gives at most 2: the topics after
    # the first two arrive by name every time. (The client's session rejects an
    # alias above its own maximum, MQTT-3.3.2-10, so a smaller client maximum
    # caps the broker too: see the second client.)
    for broker in running(max_topic_aliases_out=2):
        big = Raw(broker.port, "big", topic_alias_maximum=1000)
        small = Raw(broker.port, "small", topic_alias_maximum=1)
        for c in (big, small):
            c.subscribe("al/#")
        pub = Raw(broker.port, "pub")
        for _ in range(2):
            for i in range(5):
                pub.publish(f"al/{i}", b"x", 1)
        topics = [f"al/{i}" for i in range(5)] * 2
        for c, n in ((big, 2), (small, 1)):
            assert [m.topic for m in c.messages(10)] == topics
            aliases = c.session._rx_alias  # what the broker told this client
            assert sorted(aliases) == list(range(1, n + 1))
            c.close()
        pub.close()


# -- configuration -----------------------------------------------------------------------


def test_limits_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(
        "max_queued_bytes = 65536\nmax_connections = 0\nmax_publish_rate = 100\n"
        "max_subscriptions = 50\nmax_topic_aliases_out = 8\n"
    )
    cfg = load_config(path)
    assert (cfg.max_subscriptions, cfg.max_topic_aliases_out) == (50, 8)
    assert (BrokerConfig().max_subscriptions, BrokerConfig().max_topic_aliases_out) == (1000, 64)
    assert (cfg.max_queued_bytes, cfg.max_connections) == (65536, 0)
    assert cfg.max_publish_rate == 100.0 and isinstance(cfg.max_publish_rate, float)


def test_limits_from_flags_override_the_file() -> None:
    cfg = BrokerConfig(max_connections=5, max_publish_rate=1.0)
    cfg = apply_flags(cfg, max_connections=0, max_publish_rate=20)
    assert (cfg.max_connections, cfg.max_publish_rate) == (0, 20.0)
    assert apply_flags(cfg).max_connections == 0  # not given: as configured
    with pytest.raises(ConfigError, match="max_publish_rate must be 0"):
        apply_flags(cfg, max_publish_rate=-1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_queued_bytes": 0}, "max_queued_bytes must be at least 1"),
        ({"max_connections": -1}, "max_connections must be 0"),
        ({"max_publish_rate": -1.0}, "max_publish_rate must be 0"),
        ({"max_publish_rate": math.nan}, "max_publish_rate must be 0"),
        ({"max_subscriptions": -1}, "max_subscriptions must be 0"),
        ({"max_topic_aliases_out": 65536}, "max_topic_aliases_out must be 0"),
    ],
)
def test_bad_limits_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BrokerThread(**options)


def test_a_client_that_never_reads_is_dropped_before_its_answers_pile_up() -> None:
    # PINGRESPs (and acks) to a client that sends and never reads would pile up in
    # the broker's memory: past max_write_buffer + max_packet_size (+64 KiB) unsent,
    # the connection is dropped. A reading client next to it is not disturbed.
    with BrokerThread("127.0.0.1", 0, max_write_buffer=16384, max_packet_size=4096) as b:
        sock = socket.create_connection(("127.0.0.1", b.port), timeout=WAIT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x00\x00\x03dev")  # CONNECT
        pings = b"\xc0\x00" * 250_000  # 500 KB of PINGREQ
        dropped = False
        for _ in range(40):  # 20 MB at most
            try:
                sock.sendall(pings)
            except (BrokenPipeError, ConnectionResetError):
                dropped = True
                break
        sock.close()
        assert dropped, "the broker kept reading from a client that reads nothing"
        other = Raw(b.port, "reader")
        assert other.publish("t", b"x", 1).reason_code < 0x80
        other.close()
