"""Normative statements of MQTT 5.0 that the session state machine must keep,
each checked through the public API (Session, encode, Parser): a client and a
server Session joined through bytes, as in test_session."""

from __future__ import annotations

from typing import Any

import pytest
from test_session import Pair, decode_all, delivered

from fieldline.mqtt import (
    MQTT5,
    NO_MATCHING_SUBSCRIBERS,
    PACKET_TOO_LARGE,
    PROTOCOL_ERROR,
    QOS_NOT_SUPPORTED,
    RETAIN_NOT_SUPPORTED,
    TOPIC_ALIAS_INVALID,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    LocalProtocolError,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    RemoteProtocolError,
    SubAck,
    UnsubAck,
    Will,
    encode,
)
from fieldline.mqtt._session import CONNECTED, ERROR

PROBLEM = {"reason_string": "why", "user_property": [("k", "v")]}


def quiet_pair(request_problem_information: int) -> Pair:
    pair = Pair(5, server={"manual_ack": True})
    pair.connect(props={"request_problem_information": request_problem_information})
    return pair


def sent_by_server(pair: Pair) -> list[Any]:
    return decode_all(pair.s.data_to_send(), 5)


@pytest.mark.parametrize("rpi", [0, 1])
def test_request_problem_information_0_acks_carry_no_problem_info(rpi):
    # MQTT-3.1.2-29: with Request Problem Information 0 the server sends no
    # Reason String or User Property on anything but PUBLISH, CONNACK and
    # DISCONNECT; with 1 (the default) it may.
    pair = quiet_pair(rpi)
    expected = PROBLEM if rpi else None
    pid = pair.c.subscribe("a/b")
    pair.c2s()
    pair.s.suback(pid, [0], PROBLEM)
    assert sent_by_server(pair) == [SubAck(pid, [0], expected)]
    pid = pair.c.unsubscribe("a/b")
    pair.c2s()
    pair.s.unsuback(pid, [0], PROBLEM)
    assert sent_by_server(pair) == [UnsubAck(pid, [0], expected)]
    for qos, cls in ((1, PubAck), (2, PubRec)):
        pid = pair.c.publish("t", b"x", qos=qos)
        pair.c2s()
        pair.s.ack(pid, NO_MATCHING_SUBSCRIBERS, PROBLEM)
        assert sent_by_server(pair) == [cls(pid, NO_MATCHING_SUBSCRIBERS, expected)]
    # Other properties stay.
    pid = pair.c.subscribe("c/d")
    pair.c2s()
    pair.s.suback(pid, [0], {"user_property": [("k", "v")]})
    assert sent_by_server(pair) == [
        SubAck(pid, [0], {"user_property": [("k", "v")]} if rpi else None)
    ]
    # PUBLISH and DISCONNECT may carry them whatever the client asked.
    pair.s.publish("t", b"x", properties={"user_property": [("k", "v")]})
    pair.s.disconnect(0, {"reason_string": "bye"})
    out = sent_by_server(pair)
    assert out[0].properties == {"user_property": [("k", "v")]}
    assert out[1].properties == {"reason_string": "bye"}


def test_request_problem_information_0_server_auth():
    # MQTT-3.1.2-29 covers AUTH too.
    pair = Pair(5)
    props = {"authentication_method": "SCRAM", "request_problem_information": 0}
    pair.c.connect(Connect("dev1", protocol_level=5, properties=props), 0)
    pair.c2s()
    pair.s.auth(b"challenge", properties=PROBLEM)
    assert sent_by_server(pair) == [
        Auth(0x18, {"authentication_method": "SCRAM", "authentication_data": b"challenge"})
    ]


@pytest.mark.parametrize("requested", [None, 0, 1])
def test_response_information_only_when_requested(requested):
    # MQTT-3.1.2-28: without Request Response Information 1 the server
    # returns no Response Information.
    pair = Pair(5)
    props = None if requested is None else {"request_response_information": requested}
    pair.c.connect(Connect("dev1", protocol_level=5, properties=props), 0)
    pair.c2s()
    pair.s.accept({"response_information": "replies/dev1"})
    (connack,) = sent_by_server(pair)
    assert isinstance(connack, ConnAck)
    props = connack.properties or {}
    assert props.get("response_information") == ("replies/dev1" if requested else None)


@pytest.mark.parametrize("topic", ["replies/+", "replies/#", "#"])
def test_response_topic_has_no_wildcards(topic):
    # MQTT-3.3.2-14, in a PUBLISH and in a Will: a session does not send one
    # (encode() still can, to test a peer with; receiving one is for the
    # application to answer, as the broker does with DISCONNECT or CONNACK 0x82).
    props = {"response_topic": topic}
    pair = Pair(5)
    will = Will("w", properties=props)
    with pytest.raises(LocalProtocolError) as e:
        pair.c.connect(Connect("d", will=will, protocol_level=5), 0)
    assert e.value.reason_code == PROTOCOL_ERROR
    assert pair.c.data_to_send() == b""
    pair.connect()
    for sess in (pair.c, pair.s):
        with pytest.raises(LocalProtocolError):
            sess.publish("t", b"x", qos=1, properties=props)
        assert sess.inflight == 0 and sess.data_to_send() == b""
        sess.publish("t", b"x", qos=1, properties={"response_topic": "replies/x"})
    encode(Publish("t", b"x", properties=props), MQTT5)


@pytest.mark.parametrize("peer_max", [0, 2])
@pytest.mark.parametrize("sender", ["client", "server"])
def test_no_topic_alias_above_the_peers_maximum(sender, peer_max):
    # MQTT-3.3.2-9 (client), MQTT-3.3.2-11 (server): a Topic Alias the
    # application passes must be within the peer's Topic Alias Maximum.
    pair = Pair(
        5, client={"topic_alias_maximum": peer_max}, server={"topic_alias_maximum": peer_max}
    )
    pair.connect()
    sess = pair.c if sender == "client" else pair.s
    assert sess.peer_topic_alias_maximum == peer_max
    with pytest.raises(LocalProtocolError) as e:
        sess.publish("t", b"x", properties={"topic_alias": peer_max + 1})
    assert e.value.reason_code == TOPIC_ALIAS_INVALID
    assert sess.data_to_send() == b""
    if peer_max:
        sess.publish("t", b"x", properties={"topic_alias": peer_max})
        pair.run()
        assert delivered(pair.sev if sender == "client" else pair.cev) == [Publish("t", b"x")]


def test_queued_message_takes_no_topic_alias():
    # Not connected, there is no peer maximum yet: an alias would be checked
    # against nothing and could meet a peer that allows none.
    pair = Pair(5, server={"topic_alias_maximum": 5})
    with pytest.raises(LocalProtocolError):
        pair.c.publish("t", b"x", qos=1, properties={"topic_alias": 1})
    assert pair.c.inflight == 0


def test_client_sends_no_subscription_identifier():
    # MQTT-3.3.4-6: only the server puts Subscription Identifiers in PUBLISH.
    pair = Pair(5)
    pair.connect()
    props = {"subscription_identifier": [7]}
    with pytest.raises(LocalProtocolError):
        pair.c.publish("t", b"x", qos=1, properties=props)
    assert pair.c.inflight == 0 and pair.c.data_to_send() == b""
    pair.s.publish("t", b"x", properties=props)  # the server may
    pair.run()
    assert pair.cev[-1].properties == props
    # A server still takes one a client sent, as Mosquitto does (the broker
    # drops it rather than forward it: tests/test_broker_subscriptions.py).
    pair.s.receive_data(encode(Publish("t", b"x", properties=props), MQTT5), 0)
    assert pair.s.next_event() == Publish("t", b"x", properties=props)


def test_connack_within_the_clients_maximum_packet_size():
    # MQTT-3.2.2-19, -20: Reason String and User Property are left out of a
    # CONNACK they would make larger than the client's Maximum Packet Size;
    # a CONNACK too large without them is refused (MQTT-3.1.2-24), and the
    # server can still reject() the CONNECT.
    pair = Pair(5, client={"max_packet_size": 40})
    pair.c.connect(Connect("dev1", protocol_level=5), 0)
    pair.c2s()
    pair.s.accept({"reason_string": "r" * 40, "user_property": [("k", "v")]})
    (connack,) = sent_by_server(pair)
    assert connack == ConnAck(False, 0)
    pair = Pair(5, client={"max_packet_size": 40})
    pair.c.connect(Connect("dev1", protocol_level=5), 0)
    pair.c2s()
    with pytest.raises(LocalProtocolError) as e:
        pair.s.accept({"server_reference": "r" * 40})
    assert e.value.reason_code == PACKET_TOO_LARGE
    pair.s.reject(0x80, {"reason_string": "r" * 40})
    assert sent_by_server(pair) == [ConnAck(False, 0x80)]


SERVER_ONLY = [0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1]


@pytest.mark.parametrize("code", [*SERVER_ONLY, 0xA2])
def test_client_sends_no_server_disconnect_code(code):
    # MQTT-3.14.2-1 and the table of 3.14.2.1: these codes are the server's.
    pair = Pair(5)
    pair.connect()
    with pytest.raises(LocalProtocolError):
        pair.c.disconnect(code)
    assert pair.c.state == CONNECTED and pair.c.data_to_send() == b""
    pair.s.disconnect(code)
    assert sent_by_server(pair) == [Disconnect(code)]


def test_server_sends_no_disconnect_with_will():
    # 0x04 Disconnect with Will Message is the client's alone.
    pair = Pair(5)
    pair.connect()
    with pytest.raises(LocalProtocolError):
        pair.s.disconnect(0x04)
    assert pair.s.state == CONNECTED and pair.s.data_to_send() == b""
    pair.c.disconnect(0x04)
    assert pair.c2s() == [Disconnect(0x04)]


@pytest.mark.parametrize("code", [0x00, 0x80, 0x81, 0x82, 0x83, 0x90, 0x93, 0x94, 0x95, 0x98])
def test_disconnect_codes_of_both_roles(code):
    for role in ("c", "s"):
        pair = Pair(5)
        pair.connect()
        getattr(pair, role).disconnect(code)
        assert decode_all(getattr(pair, role).data_to_send(), 5) == [Disconnect(code)]


def test_topic_alias_maximum_in_the_connect_properties_is_kept():
    # A Topic Alias Maximum the application writes into the CONNECT
    # properties itself is the one the server obeys, so the client session
    # must take those aliases: with Session(topic_alias_maximum=0) it refused
    # them (0x94), and the broker sends them (MQTT-3.3.2-10 from the other
    # side: aliases up to the maximum announced are valid).
    pair = Pair(5, server={"auto_alias": True})
    pair.connect(props={"topic_alias_maximum": 5, "receive_maximum": 1})
    assert pair.c.topic_alias_maximum == 5
    for _ in range(2):
        pair.s.publish("t/x", b"x")
    pair.run()
    assert delivered(pair.cev) == [Publish("t/x", b"x")] * 2
    # A Receive Maximum put there is announced, not enforced: the clients
    # announce one below what they bear (a broker may exceed it).
    assert pair.s.peer_receive_maximum == 1
    for pid in (1, 2):
        pair.c.receive_data(encode(Publish("q", b"", 2, packet_id=pid), MQTT5), 0)
    assert len(delivered([pair.c.next_event(), pair.c.next_event()])) == 2


def test_topic_alias_maximum_in_the_connack_properties_is_kept():
    # The same for a server's accept(properties) (MQTT-3.3.2-12).
    pair = Pair(5, client={"auto_alias": True})
    pair.connect(accept={"properties": {"topic_alias_maximum": 5}})
    assert pair.s.topic_alias_maximum == 5
    for _ in range(2):
        pair.c.publish("t/x", b"x")
    pair.run()
    assert delivered(pair.sev) == [Publish("t/x", b"x")] * 2


def test_alias_only_publish_stays_on_its_connection():
    # Topic Alias mappings last one connection (3.3.2.3.4). A QoS 1/2 message
    # sent with an alias and no topic would be resent on the next connection,
    # where the alias maps nothing, and the peer would disconnect at every
    # resend: refused. QoS 0 is sent once; it may go so, unless auto_alias
    # owns the aliases.
    pair = Pair(5, server={"topic_alias_maximum": 5})
    pair.connect()
    pair.c.publish("t/x", b"1", properties={"topic_alias": 1})
    with pytest.raises(LocalProtocolError) as e:
        pair.c.publish("", b"2", qos=1, properties={"topic_alias": 1})
    assert "resent" in str(e.value)
    assert pair.c.inflight == 0
    pair.c.publish("", b"3", properties={"topic_alias": 1})
    pair.run()
    assert [(m.topic, m.payload) for m in delivered(pair.sev)] == [("t/x", b"1"), ("t/x", b"3")]
    auto = Pair(5, client={"auto_alias": True}, server={"topic_alias_maximum": 5})
    auto.connect()
    with pytest.raises(LocalProtocolError):
        auto.c.publish("", b"4", properties={"topic_alias": 1})


def test_no_authentication_method_in_connack_unless_connect_had_one():
    # MQTT-4.12.0-6; with a method, the CONNECT's is the one sent (MQTT-4.12.0-5).
    pair = Pair(5)
    pair.c.connect(Connect("d", protocol_level=5), 0)
    pair.c2s()
    pair.s.accept({"authentication_method": "X", "authentication_data": b"x"})
    assert sent_by_server(pair) == [ConnAck(False, 0)]
    pair = Pair(5)
    pair.c.connect(Connect("d", protocol_level=5, properties={"authentication_method": "A"}), 0)
    pair.c2s()
    pair.s.accept({"authentication_method": "B", "authentication_data": b"x"})
    assert sent_by_server(pair) == [
        ConnAck(False, 0, {"authentication_method": "A", "authentication_data": b"x"})
    ]


def test_resent_message_drops_the_alias_of_its_first_connection():
    # A QoS 1 message published with a Topic Alias (within the server's
    # maximum then) is resent on the next connection with its topic alone:
    # the alias meant something on the first connection only (3.3.2.3.4), and
    # the new maximum may be lower (MQTT-3.3.2-9); the server disconnected
    # at every resend (0x94).
    pair = Pair(5, server={"topic_alias_maximum": 5})
    props = {"session_expiry_interval": 60}
    pair.connect(clean=False, props=props)
    pid = pair.c.publish("t/x", b"1", qos=1, properties={"topic_alias": 5, "content_type": "a"})
    pair.c.data_to_send()  # lost with the connection
    pair.drop()
    pair.s.topic_alias_maximum = 2
    assert pair.connect(clean=False, props=props)
    got = delivered(pair.sev)
    assert [(m.topic, m.payload, m.dup, m.properties) for m in got] == [
        ("t/x", b"1", True, {"content_type": "a"})
    ]
    assert pair.cev[-1] == PubAck(pid)


@pytest.mark.parametrize("v", [4, 5])
def test_resume_resends_in_original_send_order(v):
    # MQTT-4.6.0-1: PUBLISH packets resent in the order first sent;
    # MQTT-4.6.0-4: PUBREL packets in the order the PUBRECs came. Here the
    # PUBRECs come in reverse, after a QoS 1 message: the first connection
    # sent PUBLISH a, b, c, then PUBREL b, PUBREL a, so the resumed session
    # resends PUBLISH c, PUBREL b, PUBREL a.
    props = {"session_expiry_interval": 60} if v == 5 else None
    pair = Pair(v, server={"manual_ack": True})
    pair.connect(clean=False, props=props)
    a = pair.c.publish("t", b"a", qos=2)
    b = pair.c.publish("t", b"b", qos=2)
    c = pair.c.publish("t", b"c", qos=1)
    assert [m.payload for m in pair.c2s()] == [b"a", b"b", b"c"]
    pair.s.ack(b)
    pair.s.ack(a)  # the PUBACK for c is owed
    assert pair.s2c() == []
    assert decode_all(pair.c.data_to_send(), v) == [PubRel(b), PubRel(a)]  # lost
    pair.drop()
    pair.c.connect(Connect("dev1", False, protocol_level=v, properties=props), 0)
    pair.c2s()
    assert pair.s.accept() is True
    assert pair.s2c() == [ConnAck(True, 0, pair.cev[-1].properties)]
    assert decode_all(pair.c.data_to_send(), v) == [
        Publish("t", b"c", 1, dup=True, packet_id=c),
        PubRel(b),
        PubRel(a),
    ]


def server_refuses(pair: Pair, packet: Any, code: int) -> None:
    """``packet`` from the client makes the server disconnect with ``code``."""
    pair.s.receive_data(encode(packet, MQTT5), 0)
    with pytest.raises(RemoteProtocolError) as e:
        pair.s.next_event()
    assert e.value.reason_code == code
    assert sent_by_server(pair) == [Disconnect(code)]


@pytest.mark.parametrize("session_max", [1, 2])
@pytest.mark.parametrize("announced", [0, 1])
def test_server_enforces_the_maximum_qos_announced_in_accept(announced, session_max):
    # A Maximum QoS put in accept() properties is the one announced (it wins
    # over Session(maximum_qos=...)) and so the one enforced: a client that
    # publishes above it gets DISCONNECT 0x9B (3.2.2.3.4; MQTT-3.2.2-11 is
    # the client's side). The server took QoS 2 while announcing 0 or 1.
    pair = Pair(5, server={"maximum_qos": session_max})
    pair.connect(accept={"properties": {"maximum_qos": announced}})
    assert pair.cev[-1].properties["maximum_qos"] == announced
    assert pair.s.maximum_qos == announced
    pair.c.publish("t", b"within", qos=announced)
    pair.run()
    assert [m.payload for m in delivered(pair.sev)] == [b"within"]
    server_refuses(pair, Publish("t", b"above", announced + 1, packet_id=9), QOS_NOT_SUPPORTED)


def test_server_enforces_retain_available_0_announced_in_accept():
    # Retain Available 0 in accept() properties: a retained PUBLISH gets
    # DISCONNECT 0x9A (3.2.2.3.5; MQTT-3.2.2-14 is the client's side). It
    # held for that connection only: the next, accepted without it, takes one.
    pair = Pair(5)
    props = {"session_expiry_interval": 60}
    pair.connect(clean=False, props=props, accept={"properties": {"retain_available": 0}})
    pair.c.publish("t", b"plain", qos=1)
    pair.run()
    assert [m.payload for m in delivered(pair.sev)] == [b"plain"]
    server_refuses(pair, Publish("t", b"kept", 0, retain=True), RETAIN_NOT_SUPPORTED)
    pair.drop()
    pair.connect(clean=False, props=props)
    pair.c.publish("t", b"kept", qos=1, retain=True)
    pair.run()
    assert delivered(pair.sev)[-1] == Publish("t", b"kept", 1, True, packet_id=2)


@pytest.mark.parametrize(
    ("will", "props", "code"),
    [
        (Will("w", b"x", qos=1), {"maximum_qos": 0}, QOS_NOT_SUPPORTED),
        (Will("w", b"x", qos=2), {"maximum_qos": 1}, QOS_NOT_SUPPORTED),
        (Will("w", b"x", retain=True), {"retain_available": 0}, RETAIN_NOT_SUPPORTED),
    ],
)
def test_accept_refuses_limits_the_will_exceeds(will, props, code):
    # MQTT-3.2.2-12, -13: a Will the announced Maximum QoS or Retain Available
    # forbids means refusing the connection. accept() raises and sends
    # nothing; reject() answers with the code it carries.
    pair = Pair(5)
    pair.c.connect(Connect("d", will=will, protocol_level=5), 0)
    pair.c2s()
    with pytest.raises(LocalProtocolError) as e:
        pair.s.accept(props)
    assert e.value.reason_code == code
    assert pair.s.data_to_send() == b"" and pair.s.maximum_qos == 2
    pair.s.reject(e.value.reason_code)
    assert sent_by_server(pair) == [ConnAck(False, code)]
    pair = Pair(5)
    pair.c.connect(Connect("d", will=Will("w", b"x", qos=will.qos), protocol_level=5), 0)
    pair.c2s()
    assert pair.s.accept({"maximum_qos": will.qos} if will.qos < 2 else None) is False


def quiet_client_gets(case: str, props: dict[str, Any] | None, rpi: int | None = 0) -> Any:
    """A connected client that sent Request Problem Information ``rpi`` (None:
    none) receives the ``case`` packet carrying ``props``, as a server that
    ignores MQTT-3.1.2-29 would send it (encoded by hand: our server session
    keeps it). Returns the pair, the client's event read."""
    pair = Pair(5)
    cprops: dict[str, Any] = {} if rpi is None else {"request_problem_information": rpi}
    if case == "auth":
        cprops["authentication_method"] = "M"
        pair.c.connect(Connect("dev1", protocol_level=5, properties=cprops), 0)
        pair.c2s()
        packet: Any = Auth(0x18, {"authentication_method": "M", **(props or {})})
    else:
        pair.connect(props=cprops)
        if case in ("puback", "pubrec", "pubcomp"):
            pid = pair.c.publish("t", b"x", qos=1 if case == "puback" else 2)
            if case == "pubcomp":
                pair.c.receive_data(encode(PubRec(pid), MQTT5), 0)
                assert pair.c.next_event() is None
            packet = {"puback": PubAck, "pubrec": PubRec, "pubcomp": PubComp}[case](pid, 0, props)
        elif case == "pubrel":
            pair.c.receive_data(encode(Publish("t", b"x", 2, packet_id=7), MQTT5), 0)
            assert isinstance(pair.c.next_event(), Publish)
            packet = PubRel(7, 0, props)
        elif case == "suback":
            packet = SubAck(pair.c.subscribe("a/b"), [0], props)
        elif case == "unsuback":
            packet = UnsubAck(pair.c.unsubscribe("a/b"), [0], props)
        else:  # PUBLISH, DISCONNECT: they may carry both (MQTT-3.1.2-29)
            packet = {
                "publish": Publish("t", b"x", properties=props),
                "disconnect": Disconnect(0x80, props),
            }[case]
    pair.c.data_to_send()
    pair.c.receive_data(encode(packet, MQTT5), 0)
    return pair, pair.c.next_event()


QUIET_CASES = ["puback", "pubrec", "pubcomp", "pubrel", "suback", "unsuback", "auth"]


@pytest.mark.parametrize("prop", [{"reason_string": "why"}, {"user_property": [("k", "v")]}])
@pytest.mark.parametrize("case", QUIET_CASES)
def test_client_refuses_problem_information_it_asked_not_to_get(case, prop):
    # MQTT-3.1.2-29: with Request Problem Information 0, a Reason String or
    # User Property on anything but PUBLISH, CONNACK and DISCONNECT is a
    # Protocol Error: the client answers DISCONNECT 0x82 (4.13).
    with pytest.raises(RemoteProtocolError) as e:
        quiet_client_gets(case, prop)
    assert e.value.reason_code == PROTOCOL_ERROR
    assert next(iter(prop)) in str(e.value)


@pytest.mark.parametrize("rpi", [None, 1, 0])
@pytest.mark.parametrize("case", [*QUIET_CASES, "publish", "disconnect"])
def test_client_takes_problem_information_otherwise(case, rpi):
    # Requested (1, the default), or on PUBLISH and DISCONNECT whatever the
    # client asked, they are taken; without them, anything is.
    problem = {"user_property": [("k", "v")]} if case == "publish" else PROBLEM  # no reason there
    for props in (problem, None):
        if rpi == 0 and props and case in QUIET_CASES:
            continue
        pair, event = quiet_client_gets(case, props, rpi)
        assert pair.c.state != ERROR and decode_all(pair.c.data_to_send(), 5) != [
            Disconnect(PROTOCOL_ERROR)
        ]
        if case in ("pubrel", "pubrec"):
            assert event is None
        else:
            assert event is not None and event.properties == (
                props if case != "auth" else {"authentication_method": "M", **(props or {})}
            )
