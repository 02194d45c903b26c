"""A security review of the broker, as an attacker on the network and as a
low-privilege client would approach it: each test is a hole found (and closed) or a
defence checked, over real sockets."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_broker import WAIT, Closed, Raw
from test_broker_listeners import connect_bytes
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Ping, Request

from fieldline.broker import BrokerThread, Listener
from fieldline.broker.acl import Acl
from fieldline.broker.configfile import config_from_dict
from fieldline.broker.passwords import Passwords, hash_password, parse_hash
from fieldline.mqtt import CLIENT, Client, Connect, NotAuthorized, Session, Subscription

NOT_AUTHORIZED = 0x87

# -- WebSocket ---------------------------------------------------------------------------


def _websocket_buffered(b: BrokerThread) -> int:
    """The bytes the broker holds unsent on its (one) WebSocket connection."""

    def size() -> int:
        (conn,) = b.broker.connections
        assert conn.transport is not None
        return conn.transport.get_write_buffer_size()

    return b.call(size)


def _websocket_client(port: int) -> tuple[socket.socket, WSConnection]:
    """A WebSocket connection with a small receive buffer (set before connecting, so
    TCP's window agrees with it), upgraded and past its CONNACK."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(WAIT)
    sock.connect(("127.0.0.1", port))
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host="localhost", target="/mqtt", subprotocols=["mqtt"])))
    connected = False
    while True:  # the upgrade's answer, then the CONNACK
        data = sock.recv(65536)
        assert data, "closed before the CONNACK"
        ws.receive_data(data)
        for ev in ws.events():
            if isinstance(ev, AcceptConnection):
                sock.sendall(ws.send(BytesMessage(data=connect_bytes("pinger"))))
            elif isinstance(ev, BytesMessage):
                connected = True
        if connected:
            return sock, ws


@pytest.mark.usefixtures("both_event_loops")
def test_websocket_pings_from_a_client_that_never_reads_do_not_pile_up() -> None:
    # RFC 6455 5.5.2 makes us answer every Ping, but a client that sends pings and
    # reads nothing would have the broker hold every Pong in memory, without bound
    # (the MQTT write-buffer checks never see them). Once the network stops taking
    # bytes, only the latest Pong waits (5.5.3 allows answering only the latest).
    with BrokerThread(listeners=[Listener("ws", port=0)]) as b:
        sock, ws = _websocket_client(b.port)  # from here on it reads nothing
        frame = ws.send(Ping(b"p" * 125))
        burst = frame * (1_000_000 // len(frame))
        before = b.call(lambda: b.broker.counters.bytes_in)
        for _ in range(8):  # 8 MB of pings, each answered with a 127-byte Pong
            sock.sendall(burst)
        # A QoS 0 PUBLISH (no answer) after them: once it is read, they all were.
        sock.sendall(ws.send(BytesMessage(data=b"\x30\x04\x00\x01x\x00")))
        deadline = time.monotonic() + WAIT
        while b.call(lambda: b.broker.counters.bytes_in) < before + 6:
            assert time.monotonic() < deadline, "the broker stopped reading"
            time.sleep(0.01)
        assert _websocket_buffered(b) < 1_000_000
        sock.close()


# -- ACL ---------------------------------------------------------------------------------

# Every client reads the fleet's topics, except its own secret (a deny rule narrowing a
# broad grant by the client's identity).
FLEET_ACL = """\
topic read fleet/#
topic deny fleet/%c/secret
user root
topic write #
"""


def test_a_deny_rule_that_cannot_be_filled_in_denies_more_not_less() -> None:
    # A client id is the client's choice: one holding "/", "+" or "#" cannot be put in
    # a rule (it would change the filter's shape). Leaving a grant out then closes
    # access, but leaving a deny out opened it: client "cam/1" could read
    # fleet/cam/1/secret. Such a deny rule now denies everything from its first %c
    # (or %u) on.
    acl = Acl.parse(FLEET_ACL)
    cam = acl.permissions(None, "cam1")
    assert cam.can_read("fleet/cam2/secret") and not cam.can_read("fleet/cam1/secret")
    for client_id in ("cam/1", "cam+", "cam#"):
        odd = acl.permissions(None, client_id)
        assert not odd.can_read("fleet/cam/1/secret")
        assert not odd.can_subscribe("fleet/cam/1/secret")
        assert not odd.can_subscribe("fleet/#")
    anonymous_deny = Acl.parse("topic read a/#\ntopic deny a/%u/b\n").permissions(None, "c")
    assert not anonymous_deny.can_read("a/x/b")  # no user name: the same


def test_a_client_id_with_a_slash_does_not_escape_a_deny_rule(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text(FLEET_ACL)
    with BrokerThread(acl_file=str(acl)) as b:
        sub = Client("127.0.0.1", b.port, client_id="cam/1")
        sub.connect(timeout=WAIT)
        codes = sub.subscribe([Subscription("fleet/cam/1/secret"), Subscription("fleet/+")])
        assert codes == [NOT_AUTHORIZED, NOT_AUTHORIZED]
        sub.disconnect()


def test_a_client_id_starting_with_dollar_does_not_reach_the_sys_topics(tmp_path: Path) -> None:
    # "topic read %c/#" gives each device the tree named after it. A client that
    # calls itself "$SYS" must not get the broker's own topics through it: a rule
    # whose filter would start with "$" only once filled in does not apply.
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite %c/#\n")
    assert Acl.load(acl).permissions(None, "dev1").can_read("dev1/x")
    assert not Acl.load(acl).permissions(None, "$SYS").can_read("$SYS/broker/uptime")
    named = Acl.parse("topic read $SYS/#\ntopic deny %c/#\n").permissions(None, "$SYS")
    assert not named.can_read("$SYS/x")  # a deny rule still applies, as filled in
    with BrokerThread(acl_file=str(acl), sys_interval=1) as b:
        spy = Client("127.0.0.1", b.port, client_id="$SYS")
        spy.connect(timeout=WAIT)
        assert spy.subscribe("$SYS/#") == [NOT_AUTHORIZED]
        spy.disconnect()


# -- authentication ----------------------------------------------------------------------


def _password_file(path: Path, **users: str) -> Path:
    fast = {"n": 1024, "r": 8, "p": 1}  # the tests check the logic, not the cost
    Passwords({u: hash_password(pw.encode(), **fast) for u, pw in users.items()}).save(path)
    return path


def _connect_bytes(username: str, password: bytes) -> bytes:
    s = Session(CLIENT)
    s.connect(Connect("", True, 30, username, password, protocol_level=5), 0.0)
    return s.data_to_send()


def test_no_hash_is_computed_for_a_connection_that_has_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each password check costs a slow hash, a few at a time. A flood of CONNECTs
    # whose connections are gone (cut by connect_timeout while they waited) must not
    # keep the hashing busy, ahead of clients still waiting for their answer.
    gate = threading.Event()
    calls = []
    verify = Passwords.verify

    def counted(self: Passwords, username: str, password: bytes) -> bool:
        calls.append(username)
        if len(calls) <= 4:  # the four concurrent checks wait: the rest queue up
            gate.wait(WAIT)
        return verify(self, username, password)

    monkeypatch.setattr(Passwords, "verify", counted)
    pw = _password_file(tmp_path / "passwd", alice="s3cret")
    with BrokerThread(password_file=str(pw), connect_timeout=1) as b:
        flood = []
        for _ in range(12):
            sock = socket.create_connection(("127.0.0.1", b.port), timeout=WAIT)
            sock.sendall(_connect_bytes("alice", b"guess"))
            flood.append(sock)
        for sock in flood:  # each is cut after connect_timeout, its check still owed
            assert sock.recv(16) == b""
            sock.close()
        gate.set()
        ok = Client("127.0.0.1", b.port, username="alice", password=b"s3cret")
        ok.connect(timeout=WAIT)
        ok.disconnect()
    assert len(calls) == 5  # the four that had started, and the last client's


def test_use_username_as_clientid_stops_one_user_taking_over_anothers_session(
    tmp_path: Path,
) -> None:
    # A client id is the client's choice: by default a second connection with the
    # same id, from any user, closes the first and continues its session
    # (MQTT-3.1.4-3), as in Mosquitto. With use_username_as_clientid (Mosquitto's
    # option) a client's id is its user name, so bob cannot cut alice off, nor claim
    # her id's ACL rules; a client without a user name is refused.
    pw = _password_file(tmp_path / "passwd", alice="s3cret", bob="hunter2")
    options: dict[str, Any] = {"password_file": str(pw), "allow_anonymous": True}
    with BrokerThread(use_username_as_clientid=True, **options) as b:
        alice = Client("127.0.0.1", b.port, client_id="phone", username="alice", password=b"s3cret")
        alice.connect(timeout=WAIT)
        alice.subscribe("t")
        bob = Client("127.0.0.1", b.port, client_id="phone", username="bob", password=b"hunter2")
        bob.connect(timeout=WAIT)  # the same client id as alice's CONNECT held
        assert sorted(b.call(lambda: list(b.broker.sessions.sessions))) == ["alice", "bob"]
        bob.publish("t", b"still here", qos=1)
        assert alice.recv(timeout=WAIT).payload == b"still here"
        with pytest.raises(NotAuthorized) as refused:
            Client("127.0.0.1", b.port, client_id="anon").connect(timeout=WAIT)
        assert refused.value.reason_code == NOT_AUTHORIZED
        alice.disconnect()
        bob.disconnect()
    assert config_from_dict({"use_username_as_clientid": True}).use_username_as_clientid


@pytest.mark.parametrize("version", [4, 5])
def test_use_username_as_clientid_gives_an_empty_client_id_the_user_name(
    tmp_path: Path, version: int
) -> None:
    # As in Mosquitto, an empty client id becomes the user name too (it was given an
    # "auto-..." id, so the user's session was not the one it resumed or took over);
    # a 5.0 client is told in Assigned Client Identifier (MQTT-3.2.2-16).
    pw = _password_file(tmp_path / "passwd", alice="s3cret")
    with BrokerThread(password_file=str(pw), use_username_as_clientid=True) as b:
        first = Raw(b.port, "phone", version, username="alice", password=b"s3cret")
        assert first.connack.reason_code == 0
        second = Raw(b.port, "", version, username="alice", password=b"s3cret")
        assert second.connack.reason_code == 0
        props = second.connack.properties or {}
        assigned = props.get("assigned_client_identifier")
        assert assigned == ("alice" if version == 5 else None)
        assert b.call(lambda: list(b.broker.sessions.sessions)) == ["alice"]
        with pytest.raises(Closed):  # taken over: one user name, one session
            while True:
                first.next()  # 5.0: DISCONNECT 0x8E first
        second.close()
        first.close()


def test_an_unknown_user_costs_the_same_hash_as_a_known_one() -> None:
    # An unknown user name is checked against a dummy hash, so it takes as long as a
    # known one. The dummy must have the parameters the file's hashes have, not the
    # defaults: a file of cheaper (or dearer) hashes would otherwise tell by the time
    # taken which user names exist.
    cheap = {"n": 1024, "r": 8, "p": 1}
    pw = Passwords({"alice": hash_password(b"s3cret", **cheap)})
    assert not pw.verify("nobody", b"guess")
    assert pw._dummy is not None
    assert parse_hash(pw._dummy)[:3] == parse_hash(pw.users["alice"])[:3]


# -- defences checked: what an attacker tries first --------------------------------------


def _answer_and_close(sock: socket.socket) -> bytes:
    """Everything the broker sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_before_authentication_a_client_costs_little(tmp_path: Path) -> None:
    pw = _password_file(tmp_path / "passwd", alice="s3cret")
    # connect_timeout is 2 s: "at once" below is well under it, even on a busy machine.
    with BrokerThread(password_file=str(pw), connect_timeout=2.0) as b:
        # Silence after the TCP accept: closed after connect_timeout.
        with socket.create_connection(("127.0.0.1", b.port), timeout=WAIT) as sock:
            start = time.monotonic()
            assert _answer_and_close(sock) == b""
            assert time.monotonic() - start < 5
        # A CONNECT announcing 256 MB: refused on its header, the body never awaited
        # (nor buffered): the 0x95 CONNACK comes before connect_timeout.
        with socket.create_connection(("127.0.0.1", b.port), timeout=WAIT) as sock:
            sock.sendall(b"\x10\xff\xff\xff\x7f\x00\x04MQTT\x05")
            start = time.monotonic()
            answer = _answer_and_close(sock)
            assert time.monotonic() - start < 1.0
            assert answer[:1] in (b"", b"\x20")  # nothing, or a CONNACK
        # A first packet other than CONNECT: closed at once, also when only its
        # header came (a PUBLISH announcing 1,000 bytes: its body is never awaited).
        for first in (b"\x82\x06\x00\x01\x00\x01t\x00", b"\x30\xe8\x07"):
            with socket.create_connection(("127.0.0.1", b.port), timeout=WAIT) as sock:
                sock.sendall(first)
                start = time.monotonic()
                _answer_and_close(sock)
                assert time.monotonic() - start < 1.0
        assert b.call(lambda: len(b.broker.sessions.sessions)) == 0


def test_silent_connections_cannot_fill_max_connections() -> None:
    # Connections that have not sent CONNECT count against max_connections (each
    # costs a socket), but a client that does send one must not be refused because
    # an attacker holds every slot with silent sockets: a CONNECT beyond the limit
    # closes a connection still without its CONNECT to make room.
    with BrokerThread(max_connections=3, connect_timeout=60) as b:
        silent = [socket.create_connection(("127.0.0.1", b.port), timeout=WAIT) for _ in range(3)]
        deadline = time.monotonic() + WAIT
        while b.call(lambda: len(b.broker.connections)) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        ok = Client("127.0.0.1", b.port, client_id="real")
        assert ok.connect(timeout=WAIT).reason_code == 0
        closed = 0
        for sock in silent:
            sock.settimeout(0.2)
            try:
                closed += sock.recv(1) == b""
            except TimeoutError:
                pass
            sock.close()
        assert closed == 1
        ok.disconnect()


@pytest.mark.parametrize(
    "username", [b"ali\x00ce", b"ali\xffce", b"\xed\xa0\x80"], ids=["nul", "bad-utf8", "surrogate"]
)
def test_a_user_name_that_is_not_mqtt_utf8_is_malformed(tmp_path: Path, username: bytes) -> None:
    # MQTT-1.5.4-1, -2: refused as malformed before any password check.
    pw = _password_file(tmp_path / "passwd", alice="s3cret")
    with BrokerThread(password_file=str(pw)) as b:
        body = b"\x00\x04MQTT\x04\xc2\x00\x1e\x00\x01c"  # 3.1.1, user name and password
        body += len(username).to_bytes(2, "big") + username + b"\x00\x02pw"
        with socket.create_connection(("127.0.0.1", b.port), timeout=WAIT) as sock:
            sock.sendall(b"\x10" + bytes([len(body)]) + body)
            answer = _answer_and_close(sock)
        assert answer in (b"", b"\x20\x02\x00\x02")  # closed (3.1.1 has no code for it)
        assert b.call(lambda: len(b.broker.sessions.sessions)) == 0


def test_no_password_is_not_an_empty_password(tmp_path: Path) -> None:
    pw = _password_file(tmp_path / "passwd", guest="")
    with BrokerThread(password_file=str(pw)) as b:
        with pytest.raises(NotAuthorized) as refused:
            Client("127.0.0.1", b.port, username="guest").connect(timeout=WAIT)
        assert refused.value.reason_code == 0x86
        ok = Client("127.0.0.1", b.port, username="guest", password=b"")
        ok.connect(timeout=WAIT)
        ok.disconnect()


def test_a_shared_subscription_does_not_get_round_the_acl(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("user admin\ntopic read #\ntopic deny secret/#\nuser root\ntopic write #\n")
    with BrokerThread(acl_file=str(acl)) as b:
        admin = Client("127.0.0.1", b.port, client_id="admin", username="admin")
        admin.connect(timeout=WAIT)
        codes = admin.subscribe(
            [Subscription("$share/g/secret/#"), Subscription("$share/g/+/x", qos=1)]
        )
        assert codes == [NOT_AUTHORIZED, 1]
        root = Client("127.0.0.1", b.port, client_id="root", username="root")
        root.connect(timeout=WAIT)
        root.publish("secret/x", b"no", qos=1)
        root.publish("public/x", b"yes", qos=1)
        assert admin.recv(timeout=WAIT).payload == b"yes"  # secret/x went to no one
        root.disconnect()
        admin.disconnect()


def test_a_password_or_acl_file_others_may_change_or_read_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Whoever may write the ACL or password file may let themselves in at the next
    # reload; whoever may read the password file may attack its hashes offline.
    pw = _password_file(tmp_path / "passwd", alice="s3cret")  # 0600, as passwd writes
    acl = tmp_path / "acl"
    acl.write_text("topic read #\n")
    acl.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="fieldline.broker"):
        Passwords.load(pw)
        Acl.load(acl)
    assert caplog.records == []
    pw.chmod(0o644)
    acl.chmod(0o664)
    with caplog.at_level(logging.WARNING, logger="fieldline.broker"):
        Passwords.load(pw)
        Acl.load(acl)
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [
        f"{pw}: the password file is readable by every user (chmod 600 it)",
        f"{acl}: the ACL file is writable by other users (chmod 600 it)",
    ]
