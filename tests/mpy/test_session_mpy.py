# Session tests that run on MicroPython as well as CPython: plain test_*
# functions and assert only. A client and a server Session joined through bytes.

import fieldline.mqtt._props  # noqa: F401  (works around a lazy-import issue, see below)
from fieldline.mqtt._codec import Parser, encode
from fieldline.mqtt._errors import LocalProtocolError, RemoteProtocolError
from fieldline.mqtt._packets import Connect, PingReq, PubAck, PubComp, Publish, PubRec
from fieldline.mqtt._session import CLIENT, CONNECTED, ERROR, IDLE, SERVER, Session

# On MicroPython, _codec's ``from . import _props`` goes through the package
# ``__getattr__``, which does not know ``_props``; importing it first here
# makes it a package attribute. To be fixed in fieldline/mqtt/__init__.py.


def _drain(sess, log):
    while True:
        e = sess.next_event()
        if e is None:
            return
        log.append(e)


def _run(c, s, cev, sev, now=0):
    for _ in range(50):
        a = c.data_to_send()
        if a:
            s.receive_data(a, now)
        _drain(s, sev)
        b = s.data_to_send()
        if b:
            c.receive_data(b, now)
        _drain(c, cev)
        if not a and not b:
            return


def _pair(v=5, ka=60, clean=True, c=None, s=None, skw=None):
    c = c or Session(CLIENT, v)
    s = s or Session(SERVER, **(skw or {}))
    cev = []  # type: list
    sev = []  # type: list
    props = {"session_expiry_interval": 100} if v == 5 and not clean else None
    c.connect(Connect("dev", clean, ka, protocol_level=v, properties=props), 0)
    s.receive_data(c.data_to_send(), 0)
    _drain(s, sev)
    s.accept()
    _run(c, s, cev, sev)
    assert c.state == CONNECTED and s.state == CONNECTED
    return c, s, cev, sev


def _pubs(events):
    return [e.payload for e in events if isinstance(e, Publish)]


def test_qos_both_ways():
    for v in (4, 5):
        c, s, cev, sev = _pair(v)
        for q in (0, 1, 2):
            c.publish("a/b", b"c%d" % q, q)
            s.publish("x", b"s%d" % q, q)
        _run(c, s, cev, sev)
        assert _pubs(sev) == [b"c0", b"c1", b"c2"]
        assert _pubs(cev) == [b"s0", b"s1", b"s2"]
        assert [type(e) for e in cev if not isinstance(e, Publish)][1:] == [PubAck, PubComp]
        assert c.inflight == 0 and s.inflight == 0


def test_qos2_duplicate_not_delivered():
    c, s, cev, sev = _pair(5)
    s.receive_data(encode(Publish("t", b"x", 2, packet_id=3), 5), 0)
    _drain(s, sev)
    s.receive_data(encode(Publish("t", b"x", 2, dup=True, packet_id=3), 5), 0)
    _drain(s, sev)
    assert _pubs(sev) == [b"x"]
    p = Parser(5)
    p.feed(s.data_to_send())
    assert p.next_packet() == PubRec(3) and p.next_packet() == PubRec(3)


def test_window_and_order():
    c, s, cev, sev = _pair(5, skw={"receive_maximum": 2})
    for i in range(10):
        c.publish("t", b"%d" % i, 1 + i % 2)
    assert c.inflight == 10
    _run(c, s, cev, sev)
    assert _pubs(sev) == [b"%d" % i for i in range(10)]
    assert c.inflight == 0


def test_resume_resends_with_dup():
    c, s, cev, sev = _pair(5, clean=False)
    c.publish("t", b"a", 1)
    c.publish("t", b"b", 2)
    c.data_to_send()  # lost
    c.connection_lost(1)
    s.connection_lost(1)
    assert c.state == IDLE
    c2, s2, cev2, sev2 = _pair(5, clean=False, c=c, s=s)
    got = [e for e in sev2 if isinstance(e, Publish)]
    assert [(e.payload, e.dup) for e in got] == [(b"a", True), (b"b", True)]
    assert c.inflight == 0


def test_keepalive():
    c, s, cev, sev = _pair(4, ka=10)
    assert c.next_deadline() == 10
    c.tick(10)
    p = Parser(4)
    p.feed(c.data_to_send())
    assert p.next_packet() == PingReq()
    assert s.next_deadline() == 15
    try:
        s.tick(15)
        raise AssertionError("no timeout")
    except RemoteProtocolError as e:
        assert e.reason_code == 0x8D
    assert s.state == ERROR


def test_keepalive_timeout_answers_by_role():
    # A 5.0 server that times out sends DISCONNECT 0x8D; a client does not
    # (0x8D is a server's code, MQTT-3.14.2-1): it just closes.
    for role in ("c", "s"):
        c, s, cev, sev = _pair(5, ka=10)
        sess = c if role == "c" else s
        sess.tick(10)  # a client sends PINGREQ here, and gets no answer
        sess.data_to_send()
        try:
            sess.tick(15)
            raise AssertionError("no timeout")
        except RemoteProtocolError as e:
            assert e.reason_code == 0x8D
        assert sess.state == ERROR
        out = sess.data_to_send()
        assert out == (b"" if role == "c" else b"\xe0\x01\x8d"), out


def test_disconnect_codes_by_role():
    # MQTT-3.14.2-1: 0x8B is a server's, 0x04 a client's.
    c, s, cev, sev = _pair(5)
    for sess, code in ((c, 0x8B), (s, 0x04)):
        try:
            sess.disconnect(code)
            raise AssertionError("sent")
        except LocalProtocolError:
            pass
        assert sess.state == CONNECTED and sess.data_to_send() == b""
    c.disconnect(0x04)
    assert c.data_to_send() == b"\xe0\x01\x04"


def test_topic_alias_roundtrip():
    c = Session(CLIENT, 5, auto_alias=True)
    c, s, cev, sev = _pair(5, c=c, skw={"topic_alias_maximum": 4})
    for _ in range(3):
        c.publish("long/topic/name", b"x", 0)
    _run(c, s, cev, sev)
    assert [e.topic for e in sev if isinstance(e, Publish)] == ["long/topic/name"] * 3


def _acks_sent(s, v):
    p = Parser(v)
    p.feed(s.data_to_send())
    out = []  # type: list
    while True:
        x = p.next_packet()
        if x is None:
            return out
        out.append(x)


def test_manual_ack():
    # manual_ack: delivered unanswered; ack() answers; a QoS 2 resend is not
    # delivered twice, before or after the answer.
    for v in (4, 5):
        c, s, cev, sev = _pair(v, skw={"manual_ack": True})
        a = c.publish("t", b"1", 1)
        b = c.publish("t", b"2", 2)
        s.receive_data(c.data_to_send(), 0)
        _drain(s, sev)
        assert _pubs(sev) == [b"1", b"2"] and s.data_to_send() == b""
        dup = encode(Publish("t", b"2", 2, dup=True, packet_id=b), v)
        s.receive_data(dup, 0)
        assert s.next_event() is None and s.data_to_send() == b""
        s.ack(b)
        s.ack(a)
        assert _acks_sent(s, v) == [PubRec(b), PubAck(a)]
        s.receive_data(dup, 0)
        assert s.next_event() is None
        assert _acks_sent(s, v) == [PubRec(b)]
        c.receive_data(encode(PubRec(b), v) + encode(PubAck(a), v), 0)
        _drain(c, cev)
        _run(c, s, cev, sev)
        assert c.inflight == 0 and len(_pubs(sev)) == 2


def test_manual_ack_refused_and_receive_maximum():
    c, s, cev, sev = _pair(5, skw={"manual_ack": True, "receive_maximum": 2})
    s.receive_data(encode(Publish("t", b"", 2, packet_id=1), 5), 0)
    s.receive_data(encode(Publish("t", b"", 1, packet_id=2), 5), 0)
    _drain(s, sev)
    s.ack(1, 0x87)  # refused: the QoS 2 exchange ends (4.3.3)
    assert _acks_sent(s, 5) == [PubRec(1, 0x87)]
    s.receive_data(encode(Publish("t", b"", 1, packet_id=3), 5), 0)
    _drain(s, sev)
    s.receive_data(encode(Publish("t", b"", 1, packet_id=4), 5), 0)
    try:
        s.next_event()
        raise AssertionError("no error")
    except RemoteProtocolError as e:
        assert e.reason_code == 0x93  # ids 2 and 3 still unanswered


def test_queued_messages_over_connack_limits_fail():
    # MQTT-3.2.2-11, -14: queued before a CONNACK that forbids them, they
    # fail as PubAck events; the rest go out.
    c = Session(CLIENT, 5)
    s = Session(SERVER, maximum_qos=1)
    cev = []  # type: list
    sev = []  # type: list
    c.connect(Connect("dev", protocol_level=5), 0)
    q2 = c.publish("t", b"2", 2)
    r = c.publish("t", b"r", 1, True)
    ok = c.publish("t", b"1", 1)
    s.receive_data(c.data_to_send(), 0)
    _drain(s, sev)
    s.accept({"retain_available": 0})
    _run(c, s, cev, sev)
    assert cev[1:] == [PubAck(q2, 0x9B), PubAck(r, 0x9A), PubAck(ok)], cev
    assert _pubs(sev) == [b"1"] and c.inflight == 0


def test_server_failures_answer_in_the_connects_format():
    # A 5.0 CONNECT with a wrong protocol name: CONNACK 0x84 in 5.0 format.
    s = Session(SERVER)
    s.receive_data(encode(Connect("a", protocol_level=5), 5).replace(b"MQTT", b"MQTX"), 0)
    try:
        s.next_event()
        raise AssertionError("no error")
    except RemoteProtocolError as e:
        assert e.reason_code == 0x84
    assert s.data_to_send() == b"\x20\x03\x00\x84\x00"
    # While a CONNECT awaits accept(), more than max_packet_size bytes
    # waiting is refused (0x95) rather than buffered.
    s = Session(SERVER, max_packet_size=100)
    s.receive_data(encode(Connect("a", protocol_level=5), 5), 0)
    assert isinstance(s.next_event(), Connect)
    s.receive_data(b"\x30\xff\xff\xff\x2f" + b"\0" * 100, 0)
    try:
        s.next_event()
        raise AssertionError("no error")
    except RemoteProtocolError as e:
        assert e.reason_code == 0x95 and s.state == ERROR
    assert s.data_to_send() == b"\x20\x03\x00\x95\x00"
