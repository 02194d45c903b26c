"""Resource-exhaustion limits, second round, over real sockets: a connection closed by
its client while the broker decides on its CONNECT ends at once and costs no password
hash, while what a client sent behind a packet being decided is still handled in
order; one connect_timeout from the TCP accept covers the TLS handshake and the
CONNECT; max_sessions and max_retained."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_broker import WAIT, Raw, running
from test_broker_sessions import wait_for
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request

from fieldline.broker import BrokerConfig, BrokerThread, ConfigError, Listener
from fieldline.broker.configfile import apply_flags, load_config
from fieldline.broker.passwords import Passwords, hash_password
from fieldline.mqtt import CLIENT, Connect, Session, Subscription, Will

pytestmark = pytest.mark.usefixtures("both_event_loops")


def _password_file(path: Path, **users: str) -> Path:
    fast = {"n": 1024, "r": 8, "p": 1}  # the tests check the logic, not the cost
    Passwords({u: hash_password(pw.encode(), **fast) for u, pw in users.items()}).save(path)
    return path


def _client_bytes(username: str | None, password: bytes | None, *then: Any) -> bytes:
    """A 5.0 CONNECT, then each of ``then`` (("publish", topic, payload) or
    ("disconnect",)) as the client would send them without waiting for the CONNACK."""
    s = Session(CLIENT)
    s.connect(Connect("", True, 30, username, password, protocol_level=5), 0.0)
    out = s.data_to_send()
    if then:
        s.receive_data(b"\x20\x03\x00\x00\x00", 0.0)  # the CONNACK, to let it send more
        s.next_event()
        for what in then:
            if what[0] == "publish":
                s.publish(what[1], what[2], 0)
            else:
                s.disconnect()
            out += s.data_to_send()
    return out


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST rather than a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Gated:
    """Passwords.verify, counted, and held while ``gate`` is closed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gate = threading.Event()
        self.calls: list[str] = []
        verify = Passwords.verify

        def counted(passwords: Passwords, username: str, password: bytes) -> bool:
            self.calls.append(username)
            self.gate.wait(WAIT)
            return verify(passwords, username, password)

        monkeypatch.setattr(Passwords, "verify", counted)


# -- a connection closed while held --------------------------------------------------------


def _websocket(port: int, data: bytes) -> socket.socket:
    """A WebSocket connection, upgraded, that sent ``data`` in a binary frame."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host="localhost", target="/mqtt", subprotocols=["mqtt"])))
    while True:
        chunk = sock.recv(65536)
        assert chunk, "closed before the upgrade"
        ws.receive_data(chunk)
        if any(isinstance(ev, AcceptConnection) for ev in ws.events()):
            sock.sendall(ws.send(BytesMessage(data=data)))
            return sock


@pytest.mark.parametrize("close", ["fin", "rst", "ws"])
def test_a_connect_abandoned_while_decided_ends_at_once_and_costs_no_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, close: str
) -> None:
    # Reading stopped while the broker decided on a CONNECT, so a client that gave up
    # went unnoticed until connect_timeout, and each such CONNECT still cost a hash.
    gated = _Gated(monkeypatch)
    pw = _password_file(tmp_path / "passwd", alice="s3cret")
    listeners = [Listener("mqtt", port=0), Listener("ws", port=0)]
    for b in running(password_file=str(pw), connect_timeout=60, listeners=listeners):
        for _ in range(12):
            data = _client_bytes("alice", b"guess")
            if close == "ws":
                sock = _websocket(b.listening[1].port, data)
            else:
                sock = socket.create_connection(("127.0.0.1", b.port), timeout=WAIT)
                sock.sendall(data)
            time.sleep(0.02)  # read by the broker, its check queued or started
            if close == "rst":
                _reset(sock)
            else:
                sock.close()
        wait_for(b, "connections", 0)  # noticed at once, not after connect_timeout
        gated.gate.set()
        ok = Raw(b.port, "ok", username="alice", password=b"s3cret")
        assert ok.connack.reason_code == 0
        ok.close()
        # The four checks running when their clients left (the worker threads), and
        # the last client's; the queued ones were skipped.
        assert len(gated.calls) <= 5


@pytest.mark.parametrize("transport", ["tcp", "ws"])
def test_packets_sent_behind_a_connect_being_decided_are_still_handled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    # MQTT 3.1.4: a client may send packets behind its CONNECT without waiting for
    # the CONNACK, and close after DISCONNECT: they are owed, not abandoned. (Over
    # WebSocket the connection cannot stay half open: it ends once they are handled.)
    gated = _Gated(monkeypatch)
    pw = _password_file(tmp_path / "passwd", alice="s3cret")
    listeners = [Listener("mqtt", port=0), Listener("ws", port=0)]
    for b in running(password_file=str(pw), listeners=listeners):
        gated.gate.set()
        sub = Raw(b.port, "sub", username="alice", password=b"s3cret")
        sub.subscribe(Subscription("fire/#", 0))
        gated.gate.clear()
        data = _client_bytes(
            "alice", b"s3cret", ("publish", "fire/1", b"one"), ("publish", "fire/2", b"two"),
            ("disconnect",),
        )  # fmt: skip
        if transport == "ws":
            sock = _websocket(b.listening[1].port, data)
        else:
            sock = socket.create_connection(("127.0.0.1", b.port), timeout=WAIT)
            sock.sendall(data)
        time.sleep(0.1)
        sock.close()
        time.sleep(0.1)
        gated.gate.set()
        assert [(m.topic, m.payload) for m in sub.messages(2)] == [
            ("fire/1", b"one"),
            ("fire/2", b"two"),
        ]
        sub.close()


class _HeldPublish:
    """An async authorize_publish that decides (no opinion) once ``gate`` opens."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.asked = threading.Event()

    async def authorize_publish(
        self, client_id: str, username: str | None, topic: str, qos: int, retain: bool
    ) -> None:
        if client_id == "held":
            self.asked.set()
            await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, WAIT)


def test_a_publish_being_decided_goes_before_the_will_of_a_client_that_left() -> None:
    # A PUBLISH held for an async hook: the client resets its connection. The message
    # still goes, and before the Will, as it would have without the hook.
    plugin = _HeldPublish()
    for b in running(plugins=[plugin], hook_timeout=WAIT):
        sub = Raw(b.port, "sub")
        sub.subscribe(Subscription("status/#", 0))
        c = Raw(b.port, "held", will=Will("status/held", b"offline", 0, False))
        c.session.publish("status/held", b"online", 0)
        c.flush()
        assert plugin.asked.wait(WAIT)
        _reset(c.sock)
        time.sleep(0.2)
        plugin.gate.set()
        got = [m.payload for m in sub.messages(2)]
        assert got == [b"online", b"offline"]
        wait_for(b, "connections", 1)
        sub.close()


def test_what_waits_while_held_stays_bounded() -> None:
    # Reading goes on while held (to see the client leave), but only up to one
    # packet of max_packet_size waiting: then it stops until the decision.
    plugin = _HeldPublish()
    for b in running(plugins=[plugin], hook_timeout=WAIT, max_packet_size=4096):
        c = Raw(b.port, "held")
        c.session.publish("first", b"x", 0)
        c.flush()
        assert plugin.asked.wait(WAIT)
        before = b.call(b.broker.stats)["bytes_in"]
        s = Session(CLIENT)  # the same PUBLISH, encoded apart (no state to keep)
        s.connect(Connect("", True, 30, protocol_level=5), 0.0)
        s.receive_data(b"\x20\x03\x00\x00\x00", 0.0)
        s.next_event()
        s.data_to_send()
        s.publish("bulk", b"b" * 1000, 0)
        one = s.data_to_send()
        n = 8 * 1024 * 1024 // len(one)
        c.sock.settimeout(1.0)
        sent = 0
        try:
            for _ in range(n // 64):
                c.sock.sendall(one * 64)
                sent += 64
        except TimeoutError:
            pass
        read = b.call(b.broker.stats)["bytes_in"] - before
        assert read < 4096 + 2 * 256 * 1024  # one packet's worth, and a read or two
        assert sent < n  # the rest waited in the network, not in the broker
        plugin.gate.set()
        c.sock.settimeout(WAIT)
        c.close()


# -- one connect_timeout for the TLS handshake and the CONNECT ------------------------------


def test_one_connect_timeout_covers_the_tls_handshake_and_the_connect(tls_files: Any) -> None:
    # The handshake had connect_timeout, then the CONNECT had it again from the end of
    # the handshake: a client could hold a connection twice as long as configured.
    cfg: dict[str, Any] = {"cert": str(tls_files.server_cert), "key": str(tls_files.server_key)}
    timeout = 1.5
    for b in running(listeners=[Listener("mqtts", port=0, **cfg)], connect_timeout=timeout):
        ctx = ssl.create_default_context(cafile=str(tls_files.ca_cert))
        start = time.monotonic()
        raw = socket.create_connection(("127.0.0.1", b.port), timeout=WAIT)
        time.sleep(timeout * 2 / 3)  # most of the time goes before the handshake
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            try:
                assert tls.recv(16) == b""  # no CONNECT: closed
            except (ssl.SSLError, ConnectionError):
                pass
        elapsed = time.monotonic() - start
        assert timeout - 0.1 < elapsed < timeout + 0.7, elapsed  # twice: 2.5 s


# -- max_sessions and max_retained ----------------------------------------------------------

QUOTA_EXCEEDED = 0x97
PERSISTENT = {"session_expiry_interval": 600}


def _offline(b: BrokerThread, client_id: str) -> None:
    c = Raw(b.port, client_id, clean_start=False, properties=PERSISTENT)
    assert c.connack.reason_code == 0
    c.session.disconnect()
    c.flush()
    c.close()


def _metric(b: BrokerThread, name: str) -> float:
    from fieldline.broker.metrics import BrokerCollector

    families = b.call(lambda: list(BrokerCollector(b.broker).collect()))
    for family in families:
        for sample in family.samples:
            if sample.name == "fieldline_broker_" + name:
                return float(sample.value)
    raise AssertionError(f"no metric {name}")


def test_a_connect_that_would_make_a_session_beyond_max_sessions_is_refused() -> None:
    # One client making new client ids with a Session Expiry Interval could make the
    # broker keep offline sessions without end.
    for b in running(max_sessions=2):
        _offline(b, "a")
        _offline(b, "b")
        wait_for(b, "connected", 0)
        for version, code in ((5, QUOTA_EXCEEDED), (4, 3)):  # 3.1.1: Server unavailable
            props = PERSISTENT if version == 5 else None
            extra = Raw(b.port, f"new{version}", version, clean_start=False, properties=props)
            assert extra.connack.reason_code == code
            extra.close()
        anonymous = Raw(b.port, "")  # an id to assign is a new session too
        assert anonymous.connack.reason_code == QUOTA_EXCEEDED
        anonymous.close()
        back = Raw(b.port, "a", clean_start=False, properties=PERSISTENT)  # its own: fine
        assert (back.connack.reason_code, back.connack.session_present) == (0, True)
        fresh = Raw(b.port, "b")  # clean start replaces b's session: no new one
        assert fresh.connack.reason_code == 0
        stats = b.call(b.broker.stats)
        assert (stats["sessions"], stats["sessions_refused"]) == (2, 3)
        assert stats["refused"] == {QUOTA_EXCEEDED: 3}
        assert _metric(b, "sessions_refused_total") == 3
        fresh.close()
        wait_for(b, "sessions", 1)  # b's clean session ended with its connection
        room = Raw(b.port, "c", clean_start=False, properties=PERSISTENT)
        assert room.connack.reason_code == 0
        for c in (back, room):
            c.close()


def test_a_new_retained_topic_beyond_max_retained_is_routed_but_not_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for b in running(max_retained=2):
        sub = Raw(b.port, "sub")
        sub.subscribe(Subscription("r/#", 1))
        pub = Raw(b.port, "pub")
        for topic in ("r/1", "r/2"):
            assert pub.publish(topic, b"kept", 1, retain=True).reason_code == 0
        # 5.0: 0x97 Quota exceeded, at QoS 1 and 2; the subscriber gets it all the same.
        assert pub.publish("r/3", b"not kept", 1, retain=True).reason_code == QUOTA_EXCEEDED
        assert pub.publish("r/4", b"not kept", 2, retain=True).reason_code == QUOTA_EXCEEDED
        assert [m.topic for m in sub.messages(4)] == ["r/1", "r/2", "r/3", "r/4"]
        assert pub.publish("r/1", b"replaced", 1, retain=True).reason_code == 0  # not new
        old = Raw(b.port, "old", 4)  # 3.1.1 has no code for it: a plain ack, and a log
        with caplog.at_level("WARNING", logger="fieldline.broker"):
            old.publish("r/5", b"not kept", 1, retain=True)
            wait_for(b, "retained_refused", 3)
        assert "max_retained (2) reached" in caplog.text
        stats = b.call(b.broker.stats)
        assert (stats["retained"], stats["retained_refused"]) == (2, 3)
        assert _metric(b, "retained_refused_total") == 3
        assert pub.publish("r/2", b"", 1, retain=True).reason_code == 0  # cleared: room
        assert pub.publish("r/3", b"kept now", 1, retain=True).reason_code == 0
        late = Raw(b.port, "late")
        late.subscribe(Subscription("r/#", 1))
        got = sorted((m.topic, m.payload) for m in late.messages(2))
        assert got == [("r/1", b"replaced"), ("r/3", b"kept now")]
        assert late.quiet()
        for c in (sub, pub, old, late):
            c.close()


def test_max_sessions_and_max_retained_default_to_no_limit_and_are_toml_keys(
    tmp_path: Path,
) -> None:
    cfg = BrokerConfig()
    assert (cfg.max_sessions, cfg.max_retained) == (0, 0)
    path = tmp_path / "broker.toml"
    path.write_text("max_sessions = 500\nmax_retained = 20000\n")
    cfg = load_config(path)
    assert (cfg.max_sessions, cfg.max_retained) == (500, 20000)
    with pytest.raises(ConfigError, match="0 \\(no limit\\)"):
        BrokerConfig(max_sessions=-1)
    with pytest.raises(ConfigError, match="0 \\(no limit\\)"):
        BrokerConfig(max_retained=-1)
    for b in running():  # no limit: as before
        for i in range(5):
            _offline(b, f"s{i}")
        pub = Raw(b.port, "pub")
        for i in range(5):
            assert pub.publish(f"t/{i}", b"x", 1, retain=True).reason_code == 0x10
        stats = b.call(b.broker.stats)
        assert (stats["sessions"], stats["retained"]) == (6, 5)
        pub.close()


def test_max_sessions_and_max_retained_flags() -> None:
    cfg = apply_flags(BrokerConfig(max_sessions=5), max_sessions=7, max_retained=9)
    assert (cfg.max_sessions, cfg.max_retained) == (7, 9)
    assert apply_flags(cfg).max_sessions == 7  # not given: as configured
    with pytest.raises(ConfigError, match="0 \\(no limit\\)"):
        apply_flags(cfg, max_retained=-1)
