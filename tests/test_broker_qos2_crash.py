"""QoS 2 is exactly once across ``kill -9`` with ``--durability full``.

The broker runs as a process (``python -m fieldline broker`` from the repository
root) on a fixed port, a QoS 2 publisher streams uniquely numbered messages to a QoS 2
subscriber, both with persistent sessions, and the broker is SIGKILLed at random
moments of the stream and started again on the same file and port; the clients resume
their sessions. The subscriber must get every message the publisher had its PUBCOMP
for, and none twice. Two clients: paho (3.1.1), killed from its callbacks, and a
sans-IO ``Session(CLIENT)`` (3.1.1 and 5.0) that answers within microseconds, killed
at a random event or read, its answer sent or not. Two windows made duplicates
before: a PUBLISH routed before the commit recording its packet id (the resend was new
to the restarted broker), and a PUBREL sent before the commit recording the message
released (the subscriber completed; the restarted broker sent the PUBLISH again). A
third lost messages: a PUBCOMP sent before the commit recording the publisher's PUBREL
(the restarted broker still held the id, and dropped the next message sent under it
as a resend). paho's own reconnection is not used: see ``client``.
"""

from __future__ import annotations

import random
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
import pytest
from test_broker_persistence import BrokerProc, brokers  # noqa: F401  (the fixture)

from fieldline.mqtt import (
    CLIENT,
    ConnAck,
    Connect,
    PubAck,
    PubComp,
    Publish,
    Session,
    SubAck,
    Subscription,
)

AHEAD = 100  # messages published and not yet complete, at most
KILLS = 12
WAIT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def client(client_id: str) -> paho.Client:
    # No automatic reconnection: paho 2.2 puts its in-flight messages back to be sent
    # again (_messages_reconnect_reset_out) at every attempt, before it connects, and
    # a second pass without a CONNACK between turns a QoS 2 message whose PUBREL went
    # out (RESEND_PUBREL after the first) back into a PUBLISH: it sends the message
    # again after its PUBREL, against MQTT 4.3.3, and the broker, which released the
    # id, takes it as new. While the broker restarts, attempts fail, so the test
    # reconnects its clients itself, once the broker is up (Reconnect).
    c = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=False,
        protocol=paho.MQTTv311,
        reconnect_on_failure=False,
    )
    c.max_inflight_messages_set(AHEAD // 2)
    return c


class Reconnect:
    """Reconnects paho client ``c`` (its loop thread ends with its connection) when
    asked, holding ``gate`` (no publish() meanwhile) until the CONNACK is in."""

    def __init__(self, c: paho.Client, gate: threading.Lock) -> None:
        self.c = c
        self.gate = gate
        self.up = threading.Event()
        self.down = threading.Event()

    def connected(self) -> None:  # from on_connect
        self.up.set()

    def disconnected(self) -> None:  # from on_disconnect
        self.down.set()

    def again(self) -> None:
        assert self.down.wait(WAIT), "the connection did not end"
        self.down.clear()
        self.up.clear()
        with self.gate:
            self.c.loop_stop()
            self.c.reconnect()
            self.c.loop_start()
            assert self.up.wait(WAIT), "no CONNACK"


def test_qos2_stream_is_exactly_once_across_kill_9(
    brokers: Callable[..., BrokerProc],  # noqa: F811
) -> None:
    port = free_port()
    b = brokers("--port", str(port), "--durability", "full").start()
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    lock = threading.Condition()
    got: Counter[bytes] = Counter()
    completed: set[int] = set()  # packet ids (mids) of the PUBCOMPs
    payloads: dict[int, bytes] = {}
    subscribed = threading.Event()

    # The kill comes from the client's own thread, as it handles the delivery (its
    # PUBREL just came) or the PUBCOMP numbered ``kill_at``: the moments around a
    # commit, which a sleep of the test's thread would hardly ever hit.
    kill_at = [0, 0]  # [deliveries, PUBCOMPs]; 0: not now
    killed = threading.Event()

    def kill_if(i: int, count: int) -> None:
        if kill_at[i] and count >= kill_at[i]:
            kill_at[i] = 0
            assert b.proc is not None
            b.proc.kill()
            killed.set()

    def on_message(c: Any, u: Any, m: Any) -> None:
        with lock:
            got[m.payload] += 1
            kill_if(0, got.total())
            lock.notify_all()

    def on_publish(c: Any, u: Any, mid: int, rc: Any, p: Any) -> None:
        with lock:
            completed.add(mid)  # QoS 2: called on PUBCOMP
            kill_if(1, len(completed))
            lock.notify_all()

    gate = threading.Lock()  # held by the publisher thread while it calls publish()
    sub = client("crash-sub")
    sub_again = Reconnect(sub, gate)
    sub.on_message = on_message

    def sub_connected(c: Any, *a: Any) -> None:
        c.subscribe("crash/#", 2)  # at every (re)connection
        sub_again.connected()

    sub.on_connect = sub_connected
    sub.on_disconnect = lambda *a: sub_again.disconnected()
    sub.on_subscribe = lambda *a: subscribed.set()
    pub = client("crash-pub")
    pub_again = Reconnect(pub, gate)
    pub.on_publish = on_publish
    pub.on_connect = lambda *a: pub_again.connected()
    pub.on_disconnect = lambda *a: pub_again.disconnected()
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    assert subscribed.wait(WAIT)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    stop = threading.Event()

    def publish() -> None:
        # A stream, AHEAD messages at most on their way (far below max_queued_messages).
        i = 0
        while not stop.is_set():

            def room(i: int = i) -> bool:
                return i - len(completed) < AHEAD or stop.is_set()

            with lock:
                lock.wait_for(room, WAIT)
            if stop.is_set():
                return
            # Not under the lock: paho calls on_publish holding a lock of its own.
            with gate:
                mid = pub.publish("crash/x", b"%d" % i, qos=2).mid
            assert mid not in payloads  # fewer than 65535: no mid is used twice
            payloads[mid] = b"%d" % i
            i += 1

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        for k in range(KILLS):
            with lock:
                i = k % 2
                kill_at[i] = (got.total(), len(completed))[i] + rng.randint(1, 40)
            assert killed.wait(WAIT), f"seed {seed}: the stream stopped"
            killed.clear()
            b.kill()  # reaped
            b.start()
            assert b.port == port
            # Both, before the next kill is set: one that came before a CONNACK would
            # make paho's reconnection pass twice too.
            sub_again.again()
            pub_again.again()
    finally:
        stop.set()
        with lock:
            lock.notify_all()
        publisher.join()
    with lock:
        must = {payloads[mid] for mid in completed}
    # Whatever is in flight or queued for the subscriber comes before a last
    # message (one publisher, one topic, one QoS: in order, MQTT 4.6).
    pub.publish("crash/x", b"end", qos=2)
    with lock:
        done = lock.wait_for(lambda: b"end" in got and must <= set(got), WAIT)
    pub.disconnect()
    sub.disconnect()
    pub.loop_stop()
    sub.loop_stop()
    b.stop()
    twice = sorted(int(p) for p, n in got.items() if n > 1 and p != b"end")
    lost = sorted(int(p) for p in must - set(got))
    print(f"seed {seed}: {len(must)} messages complete, {len(twice)} delivered twice")
    assert not twice, f"seed {seed}: {len(twice)} messages delivered twice: {twice[:20]}"
    assert not lost, f"seed {seed}: {len(lost)} acknowledged messages lost: {lost[:20]}"
    assert done, f"seed {seed}: the last message did not come"


class Fast:
    """A ``Session(CLIENT)`` kept across connections (a persistent session, resumed
    with its in-flight messages) over a plain socket: it answers within microseconds,
    where paho's thread takes milliseconds, so it completes exchanges inside the
    broker's commit windows."""

    def __init__(self, port: int, client_id: str, version: int) -> None:
        self.port = port
        self.client_id = client_id
        self.version = version
        self.session = Session(CLIENT)
        self.sock: socket.socket | None = None

    def connect(self) -> None:
        self.session.connection_lost()
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)
        props = {"session_expiry_interval": 0xFFFFFFFF} if self.version == 5 else None
        c = Connect(self.client_id, False, 60, protocol_level=self.version, properties=props)
        self.session.connect(c, time.monotonic())
        self.flush()
        while not isinstance(ev := self.next(), ConnAck):
            raise AssertionError(f"{ev!r} before CONNACK")
        self.flush()  # what the session sends again

    def flush(self) -> None:
        data = self.session.data_to_send()
        if data and self.sock is not None:
            try:
                self.sock.sendall(data)
            except OSError:
                pass  # the broker is gone; the session sends it again

    def next(self, block: bool = True) -> Any:
        """The next event; None if none is there without reading (``block`` False)
        or once the connection is closed. Blocking, it sends what the session
        queued before it reads."""
        assert self.sock is not None
        while True:
            ev = self.session.next_event()
            if ev is not None or not block:
                return ev
            self.flush()  # an answer the session queued (a PUBREL) before waiting
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                return None
            self.session.receive_data(data, time.monotonic())

    def read(self) -> bool:
        """Read what the socket has (it is readable); False once it is closed."""
        assert self.sock is not None
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if data:
            self.session.receive_data(data, time.monotonic())
        return bool(data)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


@pytest.mark.parametrize("version", [4, 5])
def test_qos2_exactly_once_when_killed_inside_an_exchange(
    brokers: Callable[..., BrokerProc],  # noqa: F811
    version: int,
) -> None:
    # The broker is killed right as one of the clients sees a step of a QoS 2
    # exchange (a delivery, the PUBREL that releases it, the publisher's PUBCOMP),
    # its answer sent or not: the moments a commit may still be running.
    port = free_port()
    b = brokers("--port", str(port), "--durability", "full").start()
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    sub = Fast(port, "fast-sub", version)
    sub.connect()
    sub.session.subscribe([Subscription("fast/#", 2)])
    sub.flush()
    assert isinstance(sub.next(), SubAck)
    sub.session.publish("sync", b"", 1)  # its PUBACK comes once the subscription is on disk
    sub.flush()
    assert isinstance(sub.next(), PubAck)
    pub = Fast(port, "fast-pub", version)
    pub.connect()
    other = Fast(port, "fast-other", version)  # its session kept: no packet id reused soon
    got: Counter[bytes] = Counter()
    completed: set[bytes] = set()
    pending: dict[int, bytes] = {}  # packet id -> payload, until PUBCOMP
    n = 0
    steps = 0
    kills = 0

    def handle(c: Fast, ev: Any) -> None:
        if isinstance(ev, Publish):
            got[ev.payload] += 1  # delivered: the session drops a resend it has seen
        elif isinstance(ev, PubComp):
            completed.add(pending.pop(ev.packet_id))

    def wait_readable() -> None:
        assert pub.sock is not None and sub.sock is not None
        readable, _, _ = select.select([pub.sock, sub.sock], [], [], WAIT)
        twice = len([k for k in got.values() if k > 1])
        assert readable, (
            f"seed {seed}: nothing comes, {sorted(pending.values())[:5]} not complete, "
            f"{twice} delivered twice so far, subscriber holds {sub.session._rx2}"
        )
        for c in (sub, pub):
            if c.sock in readable:
                assert c.read(), f"seed {seed}: the broker closed the connection"

    for _ in range(KILLS):
        kill_at = steps + rng.randint(1, 60)
        answer_first = rng.random() < 0.5  # the client's answer sent before the kill
        while steps < kill_at:
            if not pending:  # a burst, then quiet until it is complete
                for _ in range(rng.randint(1, 20)):
                    pid = pub.session.publish("fast/x", b"%d" % n, 2)
                    pending[pid] = b"%d" % n
                    n += 1
                pub.flush()
            for c in (sub, pub):
                # Each event is a moment to die at, and so is the end of each read
                # (a PUBREL makes no event: the subscriber's session answers it).
                while steps < kill_at:
                    ev = c.next(block=False)
                    if ev is not None:
                        handle(c, ev)
                    steps += 1
                    if answer_first or steps < kill_at:
                        c.flush()
                    if ev is None:
                        break
            if steps < kill_at and pending:
                wait_readable()
        b.kill()
        b.start()
        assert b.port == port
        sub.close()
        sub.connect()
        # Another client's message first: the subscriber gets it under the next
        # packet id, before the publisher's resends. (A resend routed again would
        # come under another id than the first time, and be delivered twice; and the
        # first one, still unreleased at the subscriber, would make it drop this one.)
        other.close()
        other.connect()
        other.session.publish("fast/o", b"o%d" % kills, 2)
        other.flush()
        assert isinstance(other.next(), PubComp)  # its PUBREL was sent on the PUBREC
        completed.add(b"o%d" % kills)
        kills += 1
        pub.close()
        pub.connect()
    # Everything in flight or queued comes before a last message (in order, 4.6).
    pid = pub.session.publish("fast/x", b"end", 2)
    pending[pid] = b"end"
    pub.flush()
    deadline = time.monotonic() + WAIT
    while b"end" not in got or pending:
        assert time.monotonic() < deadline, (
            f"seed {seed}: the stream did not finish: {sorted(pending.values())[:10]} not "
            f"complete, {len([k for k in got.values() if k > 1])} delivered twice so far"
        )
        seen = False
        for c in (sub, pub):
            while (ev := c.next(block=False)) is not None:
                seen = True
                handle(c, ev)
            c.flush()
        if not seen:
            wait_readable()
    sub.close()
    pub.close()
    other.close()
    b.stop()
    twice = sorted(p.decode() for p, k in got.items() if k > 1 and p != b"end")
    lost = sorted(p.decode() for p in completed - set(got) if p != b"end")
    print(f"seed {seed}: {len(completed)} messages complete, {len(twice)} delivered twice")
    assert not twice, f"seed {seed}: {len(twice)} messages delivered twice: {twice[:20]}"
    assert not lost, f"seed {seed}: {len(lost)} acknowledged messages lost: {lost[:20]}"


@pytest.mark.parametrize("version", [4, 5])
def test_qos2_packet_id_reused_at_once_after_pubcomp_across_kill_9(
    brokers: Callable[..., BrokerProc],  # noqa: F811
    version: int,
) -> None:
    # A publisher that has its PUBCOMP may send a new message under the same packet
    # id at once (MQTT-4.3.3-12). The broker is killed right after each PUBCOMP, and
    # the persist interval is an hour, so no commit but those the exchange asks for
    # runs: a PUBCOMP sent before the commit recording the release would leave the
    # restarted broker holding the id as unreleased, and the new message sent under
    # it would be taken for a resend of the old one and dropped.
    port = free_port()
    b = brokers("--port", str(port), "--durability", "full", "--persist-interval", "3600000")
    b.start()
    sub = Fast(port, "reuse-sub", version)
    sub.connect()
    sub.session.subscribe([Subscription("reuse/#", 2)])
    sub.flush()
    assert isinstance(sub.next(), SubAck)
    sub.session.publish("sync", b"", 1)  # its PUBACK comes once the subscription is on disk
    sub.flush()
    assert isinstance(sub.next(), PubAck)
    sub.close()  # offline: what is published queues for it, in order
    pub = Fast(port, "reuse-pub", version)
    pub.connect()
    sent = [b"%d" % k for k in range(3)] + [b"end"]
    for payload in sent:
        pub.session.publish("reuse/x", payload, 2, packet_id=1)
        pub.flush()
        assert isinstance(ev := pub.next(), PubComp), ev  # next() sends the PUBREL
        b.kill()
        b.start()
        pub.close()
        pub.connect()
    pub.close()
    sub.connect()
    got: list[bytes] = []
    while b"end" not in got:
        ev = sub.next()
        assert ev is not None, f"nothing more came after {got}"
        if isinstance(ev, Publish):
            got.append(ev.payload)
    sub.close()
    b.stop()
    assert got == sent
