"""fieldline.mqtt._codec on MicroPython: plain test_* functions using assert and
mpytest.raises only. Round trips of every packet type in both versions with a
fixed set of properties, one-byte-at-a-time parsing, byte vectors and malformed
packets with their reason codes. The full suite is tests/test_codec.py.
"""

import mpytest

from fieldline.mqtt._codec import Parser, decode, encode
from fieldline.mqtt._errors import LocalProtocolError, RemoteProtocolError
from fieldline.mqtt._packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)


def _h(text):
    # bytes.fromhex is optional in MicroPython builds.
    s = text.replace(" ", "")
    return bytes([int(s[i : i + 2], 16) for i in range(0, len(s), 2)])


def _packets(v):
    """One or more packets of every type valid in version ``v``, with properties in 5.0."""
    v5 = v == 5

    def pr(d):
        return d if v5 else None

    will = Will(
        "clients/d\u00e9v/state",
        b"offline",
        1,
        True,
        pr(
            {"will_delay_interval": 10, "content_type": "text/plain", "user_property": [("a", "b")]}
        ),
    )
    connect_props = {
        "session_expiry_interval": 0xFFFFFFFF,  # a long int on 32-bit ports
        "receive_maximum": 10,
        "maximum_packet_size": 1 << 20,
        "topic_alias_maximum": 5,
        "request_problem_information": 0,
        "request_response_information": 1,
        "authentication_method": "SCRAM-SHA-1",
        "authentication_data": b"\x00\x01",
        "user_property": [("k", "v"), ("k", "v2")],
    }
    connack_props = {
        "session_expiry_interval": 60,
        "assigned_client_identifier": "auto-1",
        "server_keep_alive": 120,
        "response_information": "resp/",
        "server_reference": "other:1883",
        "reason_string": "ok",
        "receive_maximum": 100,
        "topic_alias_maximum": 10,
        "maximum_qos": 1,
        "retain_available": 0,
        "maximum_packet_size": 65536,
        "wildcard_subscription_available": 1,
        "subscription_identifier_available": 1,
        "shared_subscription_available": 0,
    }
    publish_props = {
        "payload_format_indicator": 1,
        "message_expiry_interval": 3600,
        "content_type": "application/json",
        "response_topic": "reply/\u6e29",
        "correlation_data": b"\xff\x00",
        "subscription_identifier": [1, 268435455],
        "topic_alias": 3,
        "user_property": [("\u00e9", "\U0001f600")],
    }
    if v5:
        sub2 = Subscription("#", 2, True, True, 2)
    else:
        sub2 = Subscription("#", 2)
    out = [
        Connect("d\u00e9v-1", True, 30, "user", b"pw", will, v, pr(connect_props)),
        Connect("", False, 0, protocol_level=v),
        ConnAck(True, 0, pr(connack_props)),
        ConnAck(False, 0x87 if v5 else 5),
        Publish("a/b", b""),
        Publish("s/\u6e29", b"\x00\xff" * 100, 1, True, True, 65535, pr(publish_props)),
        Publish("t", b"x", 2, packet_id=1),
        PubAck(1, 0x10 if v5 else 0, pr({"reason_string": "r"})),
        PubRec(2, 0x80 if v5 else 0),
        PubRel(3, 0x92 if v5 else 0),
        PubComp(4, 0, pr({"user_property": [("x", "y")]})),
        Subscribe(
            5,
            [Subscription("a/+", 1), sub2],
            pr({"subscription_identifier": 268435455, "user_property": [("s", "1")]}),
        ),
        SubAck(5, [1, 2, 0x80] + ([0x97] if v5 else []), pr({"reason_string": "ok"})),
        Unsubscribe(6, ["a/+", "#"], pr({"user_property": [("u", "1")]})),
        UnsubAck(6, [0, 0x11] if v5 else None, pr({"reason_string": "x"})),
        PingReq(),
        PingResp(),
        Disconnect(0x04 if v5 else 0, pr({"session_expiry_interval": 5, "server_reference": "x"})),
    ]
    if v5:
        out.append(
            Auth(
                0x18,
                {
                    "authentication_method": "SCRAM",
                    "authentication_data": b"abc",
                    "reason_string": "m",
                },
            )
        )
    return out


def _round_trip(v):
    for p in _packets(v):
        raw = encode(p, v)
        q = decode(raw, v)
        assert q == p, (p, q)
        # MicroPython dicts do not keep insertion order, so properties may come
        # out in another order: compare lengths, not bytes.
        assert len(encode(q, v)) == len(raw), p


def test_round_trip_311():
    _round_trip(4)


def test_round_trip_5():
    _round_trip(5)


def _parse_bytewise(parser, stream):
    got = []
    for i in range(len(stream)):
        parser.feed(stream[i : i + 1])
        p = parser.next_packet()
        while p is not None:
            got.append(p)
            p = parser.next_packet()
    assert parser.buffered() == 0
    return got


def test_parse_one_byte_at_a_time():
    for v in (4, 5):
        sent = _packets(v)
        stream = b"".join([encode(p, v) for p in sent])
        assert _parse_bytewise(Parser(v), stream) == sent, v
        # All at once, too.
        parser = Parser(v)
        parser.feed(stream)
        got = []
        p = parser.next_packet()
        while p is not None:
            got.append(p)
            p = parser.next_packet()
        assert got == sent, v


def test_server_parser_takes_version_from_connect():
    for v in (4, 5):
        sent = _packets(v)  # starts with a CONNECT
        parser = Parser(None)
        stream = b"".join([encode(p, v) for p in sent])
        assert _parse_bytewise(parser, stream) == sent
        assert parser.version == v


VECTORS = [
    (4, PingReq(), "c0 00"),
    (5, PingResp(), "d0 00"),
    (
        4,
        Connect("test", True, 60, protocol_level=4),
        "10 10 00 04 4d 51 54 54 04 02 00 3c 00 04 74 65 73 74",
    ),
    (
        5,
        Connect("", True, 10, properties={"session_expiry_interval": 10}),
        "10 12 00 04 4d 51 54 54 05 02 00 0a 05 11 00 00 00 0a 00 00",
    ),
    (4, Publish("a/b", b"hi", 1, True, True, 10), "3b 09 00 03 61 2f 62 00 0a 68 69"),
    (
        5,
        Publish("a/b", b"hi", 1, packet_id=1, properties={"content_type": "t"}),
        "32 0e 00 03 61 2f 62 00 01 04 03 00 01 74 68 69",
    ),
    (5, Publish("\u00e9", b""), "30 05 00 02 c3 a9 00"),
    (5, PubAck(1, 0x80, {"reason_string": "x"}), "40 08 00 01 80 04 1f 00 01 78"),
    (4, PubRel(3), "62 02 00 03"),
    (
        5,
        Subscribe(2, [Subscription("a", 2, True, True, 2)], {"subscription_identifier": 5}),
        "82 09 00 02 02 0b 05 00 01 61 2e",
    ),
    (4, SubAck(1, [0, 0x80]), "90 04 00 01 00 80"),
    (5, Disconnect(0x04), "e0 01 04"),
]


def test_byte_vectors():
    for v, p, hexdata in VECTORS:
        assert encode(p, v) == _h(hexdata), p
        assert decode(_h(hexdata), v) == p, hexdata


def test_varint_boundaries():
    # Remaining lengths 127 / 128 / 16383 / 16384 (1.5.5).
    for n, header in (
        (127, "30 7f"),
        (128, "30 80 01"),
        (16383, "30 ff 7f"),
        (16384, "30 80 80 01"),
    ):
        p = Publish("t", bytes(n - 3))
        raw = encode(p, 4)
        assert raw[: len(_h(header))] == _h(header), n
        assert decode(raw, 4) == p


MALFORMED = [
    # (version, bytes, reason code)
    (5, "00 00", 0x81),  # packet type 0
    (4, "30 ff ff ff ff 01", 0x81),  # remaining length of 5 bytes (1.5.5)
    (5, "c0 80 00", 0x81),  # non-minimal remaining length (MQTT-1.5.5-1)
    (4, "60 02 00 01", 0x81),  # PUBREL flags 0000, not 0010 (MQTT-2.1.3-1)
    (5, "c1 00", 0x81),  # PINGREQ flags 0001
    (4, "36 05 00 01 74 00 01", 0x81),  # PUBLISH QoS 3 (MQTT-3.3.1-4)
    (4, "38 03 00 01 74", 0x82),  # DUP on QoS 0 (MQTT-3.3.1-2)
    (5, "30 06 00 03 61 2f 2b 00", 0x90),  # wildcard in topic (MQTT-3.3.2-2)
    (4, "32 05 00 01 74 00 00", 0x82),  # packet id 0 (MQTT-2.2.1-3)
    (4, "30 03 00 01 ff", 0x81),  # invalid UTF-8 (MQTT-1.5.4-1)
    (4, "30 05 00 03 ed a0 80", 0x81),  # encoded surrogate (MQTT-1.5.4-1)
    (5, "30 05 00 02 61 00 00", 0x81),  # U+0000 (MQTT-1.5.4-2)
    (5, "30 09 00 01 74 04 03 00 02 74 ff", 0x81),  # content type runs past its block
    (5, "30 0a 00 01 74 06 23 00 01 23 00 02", 0x82),  # topic alias twice
    (5, "30 07 00 01 74 03 23 00 00", 0x94),  # topic alias 0 (MQTT-3.3.2-8): Topic Alias invalid
    (5, "30 07 00 01 74 03 11 00 00", 0x81),  # session expiry in PUBLISH
    (5, "30 05 00 01 74 01 7f", 0x81),  # unknown property id
    (4, "10 0d 00 04 4d 51 54 54 04 03 00 3c 00 01 63", 0x81),  # CONNECT reserved flag
    (4, "10 0d 00 04 4d 51 54 54 04 0a 00 3c 00 01 63", 0x81),  # will QoS without will
    (4, "10 11 00 04 4d 51 54 54 04 42 00 3c 00 01 63 00 02 70 77", 0x81),  # MQTT-3.1.2-22
    (4, "10 0d 00 04 4d 51 54 54 03 02 00 3c 00 01 63", 0x84),  # level 3 (MQTT-3.1.2-2)
    (5, "82 07 00 01 00 00 01 61 40", 0x81),  # subscribe option reserved bit (MQTT-3.8.3-5)
    (5, "82 07 00 01 00 00 01 61 30", 0x82),  # retain handling 3
    (5, "82 10 00 01 00 00 0a 24 73 68 61 72 65 2f 67 2f 61 04", 0x82),  # no local, $share
    (4, "82 02 00 01", 0x82),  # SUBSCRIBE without filters (MQTT-3.8.3-3)
    (5, "a2 03 00 01 00", 0x82),  # UNSUBSCRIBE without filters (MQTT-3.10.3-2)
    (5, "40 03 00 01 92", 0x82),  # reason code not valid for PUBACK
    (4, "f0 00", 0x82),  # AUTH in 3.1.1
    (None, "c0 00", 0x82),  # server: first packet is not CONNECT (MQTT-3.1.0-1)
    (5, "30 03 00 0a 2b", 0x81),  # topic runs past the packet, "+" in what is there
    (4, "32 05 00 0a 61 2f 23", 0x81),
]


def test_malformed_packets():
    for v, hexdata, code in MALFORMED:
        data = _h(hexdata)
        e = mpytest.raises(RemoteProtocolError, decode, data, v)
        assert e.reason_code == code, (hexdata, e.reason_code)
        # Same answer one byte at a time.
        parser = Parser(v)

        def feed_all(parser=parser, data=data):
            for i in range(len(data)):
                parser.feed(data[i : i + 1])
                parser.next_packet()

        e = mpytest.raises(RemoteProtocolError, feed_all)
        assert e.reason_code == code, (hexdata, e.reason_code)


def test_truncated_connect():
    # Every truncated prefix of a CONNECT, remaining length patched, is malformed.
    for v in (4, 5):
        raw = encode(_packets(v)[0], v)
        i = 1
        while raw[i] & 0x80:
            i += 1
        body = raw[i + 1 :]
        for k in range(len(body)):
            n = bytes([k]) if k < 128 else bytes([(k & 127) | 128, k >> 7])
            e = mpytest.raises(RemoteProtocolError, decode, raw[:1] + n + body[:k], v)
            assert e.reason_code == 0x81, (v, k)


def test_packet_too_large_at_header():
    parser = Parser(5, 1024)
    parser.feed(_h("30 ff ff ff 7f"))
    e = mpytest.raises(RemoteProtocolError, parser.next_packet)
    assert e.reason_code == 0x95
    assert parser.buffered() <= 5
    parser = Parser(4, 10)
    parser.feed(_h("30 64"))
    e = mpytest.raises(RemoteProtocolError, parser.next_packet)
    assert e.reason_code == 0x95


def test_encode_errors():
    cases = [
        (5, Publish("a/+", b""), 0x90),
        (4, Publish("a/#", b""), 0x90),
        (5, Publish("t", b"", 3, packet_id=1), 0x82),
        (5, Publish("t", b"", 1, packet_id=0), 0x82),
        (4, Publish("t", b"", 1, packet_id=65536), 0x82),
        (5, Publish("t", b"", dup=True), 0x82),
        (5, Publish("t", 12), 0x82),
        (4, Publish("t", b"", properties={"content_type": "x"}), 0x82),
        (4, PubAck(1, 0, {"reason_string": "x"}), 0x82),
        (5, Connect("a" * 65536), 0x81),
        (5, Connect("a\x00"), 0x81),
        (5, Connect("c", properties={"receive_maximum": 0}), 0x82),
        (5, Subscribe(1, []), 0x82),
        (4, Auth(), 0x82),
        (5, Subscribe(1, [Subscription("a/#/b")]), 0x8F),  # MQTT-4.7.1-1
        (4, Subscribe(1, [Subscription("sport+")]), 0x8F),  # MQTT-4.7.1-2
        (5, Subscribe(1, [Subscription("")]), 0x8F),  # MQTT-4.7.3-1
        (5, Subscribe(1, [Subscription("$share/g/a", no_local=True)]), 0x82),  # MQTT-3.8.3-4
        (5, Unsubscribe(1, ["ok", "a/#/b"]), 0x8F),
    ]
    for v, p, code in cases:
        e = mpytest.raises(LocalProtocolError, encode, p, v)
        assert e.reason_code == code, (p, e.reason_code)


def test_error_text_is_built_when_printed():
    # Errors carry detail numbers; _names builds the text only for str().
    e = mpytest.raises(RemoteProtocolError, decode, b"\x30\xff\xff\xff\xff\x01")
    assert str(e) == "Malformed Packet (0x81): remaining length longer than 4 bytes", str(e)
    e = mpytest.raises(LocalProtocolError, encode, PubAck(1, 0x42), 5)
    assert str(e) == "Protocol Error (0x82): reason code 0x42 not valid here", str(e)


def test_control_packets_load_their_codec_for_each_use():
    # CONNECT .. AUTH go through _codec_control, which a board lets go after
    # each use (fieldline._use); CPython keeps it. Both give the same bytes.
    import sys

    name = "fieldline.mqtt._codec_control"
    for v in (4, 5):
        data = encode(Connect("dev", keep_alive=30, protocol_level=v), v)
        assert data[:2] == b"\x10" + bytes((len(data) - 2,))
        p = Parser(v)
        p.feed(b"\x20\x02\x00\x00" if v == 4 else b"\x20\x03\x01\x00\x00")
        ack = p.next_packet()
        assert ack == ConnAck(v == 5, 0)
        assert encode(Disconnect(), v) == b"\xe0\x00"
        assert (name in sys.modules) is not (sys.implementation.name == "micropython")
