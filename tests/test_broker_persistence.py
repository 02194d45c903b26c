"""Persistence (``--persist FILE``): retained messages, persistent sessions, their queued
and in-flight messages and QoS 2 state survive a clean restart and ``kill -9``.

The broker runs as a real process (``python -m fieldline broker``) so that it can be
SIGKILLed; clients are ``Raw`` sans-IO sessions over sockets (to see single packets and
the DUP flag) and paho-mqtt. Both MQTT versions where the session rules differ.
"""

from __future__ import annotations

import os
import queue
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from test_broker import WAIT, Raw

from fieldline.broker import BrokerThread
from fieldline.mqtt import PubComp, Publish, PubRel, Subscription

ROOT = Path(__file__).resolve().parent.parent
NEVER = 0xFFFFFFFF


class Peer(Raw):
    """``Raw`` that sends what its session queues after every read (so a QoS 2 PUBREL
    follows the PUBREC at once), and whose subscribe() keeps deliveries that come before
    the SUBACK for messages()."""

    def next(self, timeout: float = WAIT) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            ev = self.session.next_event()
            if self.auto_flush:
                self.flush()
            if ev is not None:
                return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no event")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise TimeoutError("no event") from None
            if not data:
                raise ConnectionError("closed by the broker")
            self.session.receive_data(data, time.monotonic())

    def subscribe(self, *subs: Any, properties: dict[str, Any] | None = None) -> Any:
        self.session.subscribe(list(subs), properties)
        self.flush()
        while isinstance(ev := self.next(), Publish):
            self.early.append(ev)
        return ev


class BrokerProc:
    """``python -m fieldline broker --port 0 --persist DB ARGS`` as a child process;
    ``start()`` again after ``stop()`` or ``kill()`` reopens the same file (on a new
    port: read ``port``)."""

    def __init__(self, db: Path, args: tuple[str, ...], log: Path) -> None:
        self.db = db
        self.args = args
        self.log = log
        self.port = 0
        self.summary = ""
        self.proc: subprocess.Popen[str] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "fieldline", "broker", "--port", "0",
                "--persist", str(self.db), *self.args]  # fmt: skip

    def start(self) -> BrokerProc:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with self.log.open("a") as err:
            self.proc = proc = subprocess.Popen(
                self.command(), stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT
            )
        lines: queue.Queue[str] = queue.Queue()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put("")

        threading.Thread(target=read, daemon=True).start()
        first = lines.get(timeout=WAIT)
        m = re.search(r"mqtt://127\.0\.0\.1:(\d+)", first)
        assert m is not None, f"no listener line: {first!r}\n{self.log.read_text()}"
        self.port = int(m.group(1))
        self.summary = lines.get(timeout=WAIT)
        assert "Ctrl-C" in self.summary, self.summary
        return self

    def stop(self) -> None:
        """SIGTERM: a clean stop, which writes everything."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(WAIT) == 0, self.log.read_text()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: nothing more is written."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(WAIT)
        self.proc = None


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[Callable[..., BrokerProc]]:
    """``brokers(*args)``: a BrokerProc (not started) on ``tmp_path/broker.db``; killed
    at teardown if still running."""
    made: list[BrokerProc] = []

    def make(*args: str) -> BrokerProc:
        made.append(BrokerProc(tmp_path / "broker.db", args, tmp_path / "broker.log"))
        return made[-1]

    yield make
    for b in made:
        if b.proc is not None:
            b.kill()


# What stats() says of the state a restart brings back (the rest, such as $SYS-style
# totals since the start, begins again at 0).
KEPT = (
    "sessions", "connected", "queued", "queued_bytes", "dropped", "expired", "rate_limited",
    "connections", "connections_refused", "subscriptions", "retained",
)  # fmt: skip


def kept(stats: dict[str, Any]) -> dict[str, Any]:
    return {key: stats[key] for key in KEPT}


def props(version: int, expiry: int = NEVER) -> dict[str, Any] | None:
    """CONNECT properties of a persistent session (3.1.1: clean session 0 says it)."""
    return {"session_expiry_interval": expiry} if version == 5 else None


def offline_subscriber(
    port: int, client_id: str, version: int, topic_filter: str, qos: int
) -> None:
    """Make a persistent session subscribed to ``topic_filter``, then leave it offline."""
    sub = Peer(port, client_id, version, clean_start=False, properties=props(version))
    sub.subscribe(Subscription(topic_filter, qos))
    sub.session.disconnect()
    sub.flush()
    sub.close()


def until_marker(client: Peer, marker: str) -> list[Publish]:
    """Messages ``client`` receives before one on topic ``marker``, which it publishes
    itself (it must be subscribed to it): everything queued earlier comes first."""
    client.publish(marker, b"", 1)
    out: list[Publish] = []
    for m in client.early:
        if m.topic == marker:
            client.early = []
            return out
        out.append(m)
    client.early = []
    while True:
        (m,) = client.messages(1)
        if m.topic == marker:
            return out
        out.append(m)


def wait_pubrec(client: Peer, packet_id: int) -> None:
    """Read until our QoS 2 message ``packet_id`` got its PUBREC (the session then holds
    a PUBREL for it); with ``auto_flush=False`` that PUBREL is not sent."""
    read_until(client, lambda: isinstance(client.session._msgs[packet_id], PubRel))


def read_until(client: Peer, done: Callable[[], bool]) -> None:
    """Read and handle packets (events are dropped) until ``done()``."""
    deadline = time.monotonic() + WAIT
    while not done():
        assert time.monotonic() < deadline, "not in time"
        client.sock.settimeout(deadline - time.monotonic())
        data = client.sock.recv(65536)
        assert data, "the broker closed the connection"
        client.session.receive_data(data, time.monotonic())
        while client.session.next_event() is not None:
            pass


# -- 1. retained messages ------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("ending", ["stop", "kill"])
def test_retained_messages_survive_a_restart_and_expired_ones_do_not(
    brokers: Callable[..., BrokerProc], ending: str, version: int
) -> None:
    b = brokers("--durability", "full").start()
    pub = Peer(b.port, "retainer", 5)
    pub.publish("r/keep", b"kept", 1, retain=True)
    pub.publish("r/long", b"an hour", 1, retain=True,
                properties={"message_expiry_interval": 3600})  # fmt: skip
    short_deadline = time.time() + 1
    pub.publish("r/short", b"a second", 1, retain=True, properties={"message_expiry_interval": 1})
    pub.publish("r/cleared", b"x", 1, retain=True)
    pub.publish("r/cleared", b"", 1, retain=True)  # an empty payload removes it
    pub.close()
    getattr(b, ending)()
    # r/short expires while the broker is down: its deadline is stored, not its interval.
    time.sleep(max(0.0, short_deadline + 0.2 - time.time()))
    b.start()
    assert "loaded 0 sessions, 2 retained messages" in b.summary
    sub = Peer(b.port, "reader", version)
    sub.subscribe(Subscription("r/#", 1))
    got = {m.topic: m for m in until_marker(sub, "r/marker")}
    assert sorted(got) == ["r/keep", "r/long"]
    assert (got["r/keep"].payload, got["r/keep"].retain, got["r/keep"].qos) == (b"kept", True, 1)
    if version == 5:
        left = got["r/long"].properties["message_expiry_interval"]
        assert 3590 < left <= 3600  # the time spent, down included, counts
    sub.close()
    b.stop()


# -- 2, 3, 4. sessions, kill -9 ------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 5])
def test_queued_messages_of_an_offline_session_survive_kill_9(
    brokers: Callable[..., BrokerProc], version: int
) -> None:
    b = brokers("--durability", "full").start()
    offline_subscriber(b.port, "keeper", version, "q/#", 1)
    pub = Peer(b.port, "pub", version)
    n = 50
    for i in range(n):
        assert pub.publish(f"q/{i}", b"%d" % i, 1).reason_code in (0, 0x10)
    b.kill()  # right after the last PUBACK
    pub.close()
    b.start()
    assert "loaded 1 sessions" in b.summary
    sub = Peer(b.port, "keeper", version, clean_start=False, properties=props(version))
    assert sub.connack.session_present
    got = sub.messages(n)
    assert [m.payload for m in got] == [b"%d" % i for i in range(n)]
    # The subscription came back too: a message published now arrives.
    pub = Peer(b.port, "pub", version)
    pub.publish("q/after", b"after", 1)
    assert [m.payload for m in sub.messages(1)] == [b"after"]
    sub.close()
    pub.close()
    b.stop()


@pytest.mark.parametrize("version", [4, 5])
def test_kill_9_mid_stream_loses_no_acknowledged_message(
    brokers: Callable[..., BrokerProc], version: int
) -> None:
    b = brokers("--durability", "full").start()
    offline_subscriber(b.port, "stream-sub", version, "s/#", 1)
    seed = random.randrange(1 << 30)
    enough = random.Random(seed).randint(20, 400)  # kill after this many PUBACKs
    lock = threading.Lock()
    acked: set[int] = set()
    reached = threading.Event()

    def on_publish(c: Any, u: Any, mid: int, rc: Any, p: Any) -> None:
        with lock:
            acked.add(mid)
            if len(acked) >= enough:
                reached.set()

    protocol = paho.MQTTv5 if version == 5 else paho.MQTTv311
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="stream-pub", protocol=protocol)
    pub.max_inflight_messages_set(100)
    pub.on_publish = on_publish
    pub.connect("127.0.0.1", b.port)
    pub.loop_start()
    payloads = {}
    for i in range(800):  # fewer than max_queued_messages: none is dropped for the limit
        payloads[pub.publish("s/x", b"%d" % i, qos=1).mid] = b"%d" % i
    assert reached.wait(WAIT), f"only {len(acked)} PUBACKs"
    b.kill()
    pub.disconnect()
    pub.loop_stop()
    with lock:
        must = {payloads[mid] for mid in acked}  # every PUBACK the client ever saw
    b.start()
    sub = Peer(b.port, "stream-sub", version, clean_start=False, properties=props(version))
    assert sub.connack.session_present
    got: set[bytes] = set()
    while not must <= got:
        try:
            got.update(m.payload for m in sub.messages(1))
        except TimeoutError:
            missing = sorted(int(p) for p in must - got)
            pytest.fail(f"seed {seed}: {len(missing)} acknowledged messages lost: {missing[:20]}")
    sub.close()
    b.stop()


@pytest.mark.parametrize("version", [4, 5])
def test_qos2_message_pubreced_before_kill_9_is_delivered_exactly_once(
    brokers: Callable[..., BrokerProc], version: int
) -> None:
    b = brokers("--durability", "full").start()
    offline_subscriber(b.port, "once-sub", version, "x/#", 2)
    pub = Peer(b.port, "once-pub", version, clean_start=False, properties=props(version),
              auto_flush=False)  # fmt: skip
    pid = pub.session.publish("x/once", b"once", 2)
    pub.flush()
    wait_pubrec(pub, pid)  # PUBREC came; our PUBREL is never sent
    b.kill()
    pub.close()
    b.start()
    # The publisher is back with its session and sends the message again under the
    # same packet id, as a client that missed the PUBREC would: the broker knows the
    # id (MQTT-4.3.3-9), answers PUBREC without routing it, then PUBCOMP for the PUBREL.
    pub = Peer(b.port, "once-pub", version, clean_start=False, properties=props(version))
    assert pub.connack.session_present
    assert pub.session.publish("x/once", b"once", 2) == pid
    pub.flush()
    wait_pubrec(pub, pid)
    pub.flush()  # the PUBREL
    ev = pub.next()
    assert isinstance(ev, PubComp) and ev.packet_id == pid and ev.reason_code == 0
    pub.close()
    sub = Peer(b.port, "once-sub", version, clean_start=False, properties=props(version))
    got = until_marker_after_subscribe(sub)
    assert [(m.topic, m.payload, m.qos) for m in got] == [("x/once", b"once", 2)]
    sub.close()
    b.stop()


def until_marker_after_subscribe(sub: Peer) -> list[Publish]:
    sub.subscribe(Subscription("marker", 1))
    return until_marker(sub, "marker")


@pytest.mark.parametrize("version", [4, 5])
def test_qos2_message_pubrecd_by_the_subscriber_is_not_sent_again_after_kill_9(
    brokers: Callable[..., BrokerProc], version: int
) -> None:
    b = brokers("--durability", "full").start()
    sub = Peer(b.port, "rel-sub", version, clean_start=False, properties=props(version))
    sub.subscribe(Subscription("rel/#", 2))
    pub = Peer(b.port, "rel-pub", version)
    pub.publish("rel/once", b"once", 2)
    sub.auto_flush = False
    (m,) = sub.messages(1)
    sub.flush()  # our PUBREC; the PUBREL that answers it gets no PUBCOMP
    read_until(sub, lambda: not sub.session._rx2)  # the broker's PUBREL came
    sub.close()
    # The broker holds a PUBREL for rel-sub now; the PUBACK of this next message says
    # that state is committed too (one commit holds everything changed before it).
    pub.publish("rel/marker", b"", 1)
    b.kill()
    pub.close()
    b.start()
    sent: list[bytes] = []
    sub = Peer(b.port, "rel-sub", version, clean_start=False, properties=props(version),
               auto_flush=False)  # fmt: skip
    assert sub.connack.session_present
    (m,) = sub.messages(1)
    assert m.topic == "rel/marker"  # rel/once is not delivered again (MQTT-4.3.3-12, 4.4.0-1)
    sent.append(sub.session.data_to_send())
    assert sent[0][0] >> 4 == 7  # the first packet we answer is a PUBCOMP, for the PUBREL
    sub.close()
    b.stop()


def test_message_in_flight_at_kill_9_is_resent_with_dup(
    brokers: Callable[..., BrokerProc],
) -> None:
    b = brokers("--durability", "full").start()
    sub = Peer(b.port, "dup-sub", 5, clean_start=False, properties=props(5), auto_flush=False)
    sub.subscribe(Subscription("d/#", 1))
    sub.flush()
    pub = Peer(b.port, "dup-pub", 5)
    pub.publish("d/1", b"unacked", 1)  # PUBACKed once committed: in flight to dup-sub
    (m,) = sub.messages(1)  # received; our PUBACK is never sent
    assert not m.dup
    b.kill()
    pub.close()
    sub.close()
    b.start()
    sub = Peer(b.port, "dup-sub", 5, clean_start=False, properties=props(5))
    (m,) = sub.messages(1)
    assert (m.topic, m.payload, m.dup, m.packet_id) == ("d/1", b"unacked", True, 1)  # MQTT-4.4.0-1
    sub.close()
    b.stop()


# -- 5. durability "batched" -----------------------------------------------------------------


def test_batched_clean_stop_writes_everything(brokers: Callable[..., BrokerProc]) -> None:
    b = brokers("--durability", "batched", "--persist-interval", "3600000").start()
    offline_subscriber(b.port, "bsub", 5, "b/#", 1)
    pub = Peer(b.port, "bpub", 5)
    pub.publish("b/retained", b"r", 1, retain=True)
    pub.publish("b/queued", b"q", 1)
    pub.close()
    b.stop()  # an hour before the next batch: the stop writes it
    b.start()
    assert "loaded 1 sessions, 1 retained messages" in b.summary
    sub = Peer(b.port, "bsub", 5, clean_start=False, properties=props(5))
    assert [m.payload for m in sub.messages(2)] == [b"r", b"q"]  # b/queued; b/retained
    sub.close()
    b.stop()


def committed(db: Path, folder: Path, query: str) -> list[Any] | None:
    """The rows of ``query`` as a restart on ``db`` would read them now: committed
    transactions only. A running broker holds its file locked (locking_mode
    EXCLUSIVE, so no reader gets in), so this reads a copy of the file and its WAL, which
    SQLite opens as after a crash: a transaction counts only if its commit record was
    written. None if the copy cannot be read (taken while a checkpoint wrote the file)."""
    folder.mkdir(exist_ok=True)
    copy = folder / db.name
    for suffix in ("", "-wal"):
        src, dst = Path(str(db) + suffix), Path(str(copy) + suffix)
        dst.unlink(missing_ok=True)
        if src.exists():
            shutil.copyfile(src, dst)
    Path(str(copy) + "-shm").unlink(missing_ok=True)
    try:
        conn = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        return conn.execute(query).fetchall()
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def test_batched_kill_9_loses_only_the_last_interval(
    brokers: Callable[..., BrokerProc], tmp_path: Path
) -> None:
    # An interval of an hour: nothing after the start is written before the kill.
    b = brokers("--durability", "batched", "--persist-interval", "3600000").start()
    pub = Peer(b.port, "bpub", 5)
    pub.publish("b/lost", b"in the window", 1, retain=True)
    pub.close()
    b.kill()
    b.args = ("--durability", "batched", "--persist-interval", "50")
    b.start()
    assert "0 retained messages" in b.summary
    # 50 ms: what was published is written within the interval. Wait until the row is
    # committed (a change of the WAL file is not enough: it changes as the transaction's
    # pages are written, before the commit record that makes them count).
    pub = Peer(b.port, "bpub", 5)
    pub.publish("b/kept", b"written", 1, retain=True)
    pub.close()
    deadline = time.monotonic() + WAIT
    while committed(b.db, tmp_path / "copy", "SELECT payload FROM retained") != [(b"written",)]:
        assert time.monotonic() < deadline, "not committed"
        time.sleep(0.005)  # the next look, not a wait for the commit
    b.kill()
    b.start()
    assert "1 retained messages" in b.summary
    sub = Peer(b.port, "reader", 5)
    sub.subscribe(Subscription("b/#", 1))
    assert [m.payload for m in until_marker(sub, "b/marker")] == [b"written"]
    sub.close()
    b.stop()


# -- 6. a file that cannot be used ---------------------------------------------------------


def run_once(db: Path, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fieldline", "broker", "--port", "0", "--persist", str(db)],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )  # fmt: skip


def test_a_file_that_is_not_a_database_stops_the_start(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    db.write_bytes(b"these are not the bytes of an SQLite database\n" * 100)
    r = run_once(db)
    assert r.returncode == 3
    assert f"cannot use {db}: file is not a database" in r.stderr, r.stderr
    assert "not started" in r.stderr and r.stdout == ""
    assert db.read_bytes().startswith(b"these are not")  # left as it was


def test_a_damaged_database_stops_the_start(
    brokers: Callable[..., BrokerProc], tmp_path: Path
) -> None:
    b = brokers().start()
    pub = Peer(b.port, "p", 5)
    for i in range(200):
        pub.publish(f"dmg/{i}", b"x" * 500, 1, retain=True)
    pub.close()
    b.stop()
    db = tmp_path / "broker.db"
    data = bytearray(db.read_bytes())
    assert len(data) > 8 * 4096
    data[2 * 4096 : 6 * 4096] = b"\xa5" * (4 * 4096)  # garbage over four pages
    db.write_bytes(bytes(data))
    r = run_once(db)
    assert r.returncode == 3
    assert f"cannot use {db}" in r.stderr, r.stderr
    assert "malformed" in r.stderr or "damaged" in r.stderr, r.stderr


def test_an_unreachable_file_or_one_in_use_stops_the_start(
    brokers: Callable[..., BrokerProc], tmp_path: Path
) -> None:
    r = run_once(tmp_path / "no" / "such" / "dir" / "broker.db")
    assert r.returncode == 3
    assert "cannot open" in r.stderr or "unable to open database file" in r.stderr, r.stderr
    b = brokers().start()
    r = run_once(tmp_path / "broker.db")  # another broker holds it
    assert r.returncode == 3 and "database is locked" in r.stderr, r.stderr
    b.stop()


# -- 7. session expiry ---------------------------------------------------------------------


def test_a_session_that_expired_while_the_broker_was_down_is_gone(
    brokers: Callable[..., BrokerProc],
) -> None:
    b = brokers("--durability", "full").start()
    for cid, expiry in (("brief", 1), ("lasting", 3600)):
        sub = Peer(b.port, cid, 5, clean_start=False, properties=props(5, expiry))
        sub.subscribe(Subscription(f"{cid}/#", 1))
        sub.session.disconnect()
        sub.flush()
        sub.close()
    gone_at = time.time() + 1
    b.stop()
    time.sleep(max(0.0, gone_at + 0.2 - time.time()))  # brief's deadline passes
    b.start()
    assert "loaded 1 sessions" in b.summary
    brief = Peer(b.port, "brief", 5, clean_start=False, properties=props(5, 60))
    lasting = Peer(b.port, "lasting", 5, clean_start=False, properties=props(5, 60))
    assert not brief.connack.session_present
    assert lasting.connack.session_present
    brief.close()
    lasting.close()
    b.stop()


# -- stats, and the file's contents --------------------------------------------------------


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_new"])
def test_stats_are_the_same_after_a_restart(tmp_path: Path, policy: str) -> None:
    db = str(tmp_path / "broker.db")
    options: dict[str, Any] = {"persistence": db, "durability": "full",
                               "max_queued_messages": 3, "queue_policy": policy}  # fmt: skip
    with BrokerThread(**options) as b:
        for version in (4, 5):
            offline_subscriber(b.port, f"s{version}", version, "st/#", 2)
        transient = Peer(b.port, "transient", 5)  # a clean session: not kept
        transient.subscribe(Subscription("st/#", 1))
        pub = Peer(b.port, "pub", 5)
        for i in range(5):  # three queued per session, two dropped
            pub.publish(f"st/{i}", b"%d" % i, 1 + i % 2, retain=i < 2)
        pub.close()
        transient.close()
        deadline = time.monotonic() + WAIT
        while b.call(b.broker.stats)["connected"]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        before = kept(b.call(b.broker.stats))
    assert before["sessions"] == 2 and before["queued"] == 6 and before["dropped"] == 4
    with BrokerThread(**options) as b:
        assert kept(b.call(b.broker.stats)) == before
        # ...and the queues hold the three newest messages (drop_oldest) or the three
        # oldest (drop_new), in order.
        first = 2 if policy == "drop_oldest" else 0
        for version in (4, 5):
            sub = Peer(b.port, f"s{version}", version, clean_start=False, properties=props(version))
            got = [(m.topic, m.qos) for m in sub.messages(3)]
            assert got == [(f"st/{i}", 1 + i % 2) for i in range(first, first + 3)]
            sub.close()


def test_the_file_holds_no_rows_of_ended_sessions(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    with BrokerThread(persistence=str(db), durability="full") as b:
        sub = Peer(b.port, "short", 5, clean_start=False, properties=props(5))
        sub.subscribe(Subscription("t/#", 1))
        sub.close()
        Peer(b.port, "short", 5, clean_start=True).close()  # clean start ends it
        deadline = time.monotonic() + WAIT
        while b.call(b.broker.stats)["sessions"]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    with sqlite3.connect(db) as conn:
        for table in ("sessions", "subscriptions", "queue", "inflight", "rx2"):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table


# -- settings ------------------------------------------------------------------------------


def test_settings_from_the_file_and_their_errors(tmp_path: Path) -> None:
    from fieldline.broker.config import BrokerConfig, ConfigError
    from fieldline.broker.configfile import apply_flags, config_from_dict

    cfg = config_from_dict({"persistence": "state/broker.db"}, "broker.toml", tmp_path)
    assert cfg.persistence == str(tmp_path / "state/broker.db")  # relative to the file
    assert (cfg.persist_level, cfg.persist_interval) == ("batched", 100)
    assert BrokerConfig().persist_level == "none"
    cfg = apply_flags(cfg, durability="full", persist_interval=20)
    assert (cfg.persist_level, cfg.persist_interval) == ("full", 20)
    with pytest.raises(ConfigError, match="durability 'full' needs a persistence file"):
        BrokerConfig(durability="full")
    with pytest.raises(ConfigError, match="unknown durability 'fsync'"):
        BrokerConfig(persistence="x.db", durability="fsync")
    with pytest.raises(ConfigError, match="persist_interval must be"):
        config_from_dict({"persistence": "x.db", "persist_interval": 0})
    with pytest.raises(ConfigError, match="'persist_interval' must be an integer"):
        config_from_dict({"persistence": "x.db", "persist_interval": 0.5})


@pytest.mark.parametrize("version", [4, 5])
def test_a_failed_commit_refuses_the_publish_and_the_next_rewrites_all(
    tmp_path: Path, version: int
) -> None:
    # durability "full" acknowledges only what is on disk: a commit that fails (disk
    # full, I/O error) refuses the PUBLISHes waiting for it, and the broker goes on;
    # the next commit writes the whole state again, what the failed one held included.
    options: dict[str, Any] = {"persistence": str(tmp_path / "broker.db"), "durability": "full"}
    with BrokerThread(**options) as b:
        store = b.broker.persist
        assert store is not None
        failing = threading.Event()
        commit = store._commit
        store._commit = lambda db, ops: False if failing.is_set() else commit(db, ops)  # type: ignore[method-assign]
        offline_subscriber(b.port, "fsub", version, "f/#", 1)
        pub = Peer(b.port, "p", version)
        assert pub.publish("f/1", b"kept", 1, retain=True).reason_code == 0
        failing.set()
        if version == 5:
            assert pub.publish("f/2", b"refused", 1, retain=True).reason_code == 0x80
        else:
            pub.session.publish("f/2", b"refused", 1, retain=True)
            pub.flush()
            with pytest.raises(ConnectionError):  # 3.1.1 has no code: closed (MQTT-3.3.5-2)
                pub.next()
        pub.close()
        failing.clear()
        pub = Peer(b.port, "p2", version)
        assert pub.publish("f/3", b"kept", 1, retain=True).reason_code == 0
        pub.close()
        deadline = time.monotonic() + WAIT
        while b.call(b.broker.stats)["connected"]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        before = kept(b.call(b.broker.stats))
    # f/2 was routed before its commit failed: memory holds it, and so does the file.
    assert (before["retained"], before["queued"]) == (3, 3)
    with BrokerThread(**options) as b:
        assert kept(b.call(b.broker.stats)) == before


def test_a_failed_commit_does_not_make_a_qos2_message_come_twice(tmp_path: Path) -> None:
    # Routed before its commit failed: refusing it would make the publisher's resend a
    # second delivery. It is accepted; the next commit writes it.
    options: dict[str, Any] = {"persistence": str(tmp_path / "broker.db"), "durability": "full"}
    with BrokerThread(**options) as b:
        store = b.broker.persist
        assert store is not None
        failing = threading.Event()
        commit = store._commit
        store._commit = lambda db, ops: False if failing.is_set() else commit(db, ops)  # type: ignore[method-assign]
        sub = Peer(b.port, "s", 5)
        sub.subscribe(Subscription("q2/#", 2), Subscription("marker", 1))
        pub = Peer(b.port, "p", 5)
        failing.set()
        assert pub.publish("q2/once", b"x", 2).reason_code == 0
        failing.clear()
        got = [m.topic for m in until_marker(sub, "marker")]
        assert got == ["q2/once"]
        sub.close()
        pub.close()


def test_the_toml_keys_through_the_command(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    config = tmp_path / "conf" / "broker.toml"
    config.write_text('persistence = "state.db"\ndurability = "full"\npersist_interval = 20\n')
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fieldline", "broker", "--config", str(config), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        summary = proc.stdout.readline()
        db = tmp_path / "conf" / "state.db"  # relative to the file
        assert f"persistence {db} (durability full; loaded 0 sessions" in summary, summary
        assert db.exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_subscription_options_and_message_expiry_survive_a_restart(tmp_path: Path) -> None:
    options: dict[str, Any] = {"persistence": str(tmp_path / "broker.db")}  # batched
    with BrokerThread(**options) as b:
        sub = Peer(b.port, "opts", 5, clean_start=False, properties=props(5))
        sub.subscribe(
            Subscription("o/#", 2, no_local=True, retain_as_published=True),
            properties={"subscription_identifier": 7},
        )
        sub.close()
        pub = Peer(b.port, "pub", 5)
        deadline = time.time() + 1
        pub.publish("o/short", b"a second", 1, properties={"message_expiry_interval": 1})
        pub.publish("o/long", b"an hour", 1, properties={"message_expiry_interval": 3600})
        pub.close()
    time.sleep(max(0.0, deadline + 0.2 - time.time()))  # o/short expires in the queue
    with BrokerThread(**options) as b:
        sub = Peer(b.port, "opts", 5, clean_start=False, properties=props(5))
        (m,) = sub.messages(1)
        assert (m.topic, m.qos) == ("o/long", 1)
        assert m.properties["subscription_identifier"] == [7]
        assert 3590 < m.properties["message_expiry_interval"] < 3600
        sub.publish("o/own", b"not to myself", 1)  # no-local
        pub = Peer(b.port, "pub", 5)
        pub.publish("o/retained", b"r", 2, retain=True)  # retain-as-published, QoS 2
        (m,) = sub.messages(1)
        assert (m.topic, m.qos, m.retain) == ("o/retained", 2, True)
        assert b.call(b.broker.stats)["expired"] == 1
        sub.close()
        pub.close()
