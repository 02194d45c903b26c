"""The blocking Client against a real Mosquitto, with paho-mqtt as the peer.

Every test runs in MQTT 3.1.1 and 5.0 unless the feature is 5.0-only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FakeBrokerFactory, Mosquitto, MosquittoFactory, ProxyFactory
from fakebroker import CONNECT, PUBLISH, connack, prop, recv, send
from paho_peer import PahoPeer

from fieldline.mqtt import (
    Client,
    ConnectionLost,
    ConnectionRefused,
    MQTTError,
    MQTTTimeout,
    NotAuthorized,
    PacketTooLarge,
    Publish,
    QueueFull,
    Subscription,
    Will,
)

REPO = Path(__file__).resolve().parent.parent
WAIT = 10.0


@pytest.fixture
def peer(mosquitto: Mosquitto, version: int) -> Iterator[PahoPeer]:
    p = PahoPeer(mosquitto.host, mosquitto.port, version)
    yield p
    p.close()


def client(broker: Mosquitto, version: int, **kwargs: object) -> Client:
    kwargs.setdefault("timeout", WAIT)
    return Client(broker.host, broker.port, version=version, **kwargs)  # type: ignore[arg-type]


def test_qos_0_1_2_both_ways_with_paho(mosquitto: Mosquitto, version: int, peer: PahoPeer) -> None:
    peer.subscribe("to-paho/#", 2)
    with client(mosquitto, version, client_id="ours") as c:
        assert c.connack is not None and c.connack.reason_code == 0
        assert c.subscribe("to-us/#", qos=2) == [2]
        for qos in (0, 1, 2):
            ack = c.publish(f"to-paho/{qos}", b"\x00\xffours %d" % qos, qos=qos)
            assert (ack is None) == (qos == 0)
            if ack is not None:
                assert ack.reason_code == 0
            peer.publish(f"to-us/{qos}", b"paho\x00%d" % qos, qos=qos)
            got = c.recv()
            assert (got.topic, got.payload, got.qos) == (f"to-us/{qos}", b"paho\x00%d" % qos, qos)
        seen = sorted((m.topic, m.payload, m.qos) for m in peer.expect(3))
        assert seen == [(f"to-paho/{q}", b"\x00\xffours %d" % q, q) for q in (0, 1, 2)]


def test_retained_message(mosquitto: Mosquitto, version: int) -> None:
    with client(mosquitto, version) as c:
        c.publish("state/lamp", "on", qos=1, retain=True)
    with client(mosquitto, version) as c:
        c.subscribe("state/#", qos=1)
        m = c.recv()
        assert (m.topic, m.payload, m.retain) == ("state/lamp", b"on", True)


def test_callbacks_per_filter_and_on_message(mosquitto: Mosquitto, version: int) -> None:
    with client(mosquitto, version) as c:
        temps: list[Publish] = []
        others: list[Publish] = []
        c.on_message = others.append
        c.subscribe("temp/#", qos=1, callback=temps.append)
        c.subscribe("hum/#", qos=1)
        c.publish("temp/a", b"1", qos=1)
        c.publish("hum/a", b"2", qos=1)
        while len(temps) + len(others) < 2:
            c.loop(WAIT)
        assert [m.payload for m in temps] == [b"1"]
        assert [m.payload for m in others] == [b"2"]


def test_unsubscribe(mosquitto: Mosquitto, version: int) -> None:
    with client(mosquitto, version) as c:
        c.subscribe([("x/1", 1), Subscription("x/2", 1)])
        codes = c.unsubscribe("x/1")
        assert codes == ([] if version == 4 else [0])
        c.publish("x/1", b"gone", qos=1)
        c.publish("x/2", b"kept", qos=1)
        assert c.recv().payload == b"kept"  # x/1 would have come first


def test_recv_timeout_is_a_timeout_error(mosquitto: Mosquitto, version: int) -> None:
    with client(mosquitto, version) as c:
        with pytest.raises(MQTTTimeout) as e:
            c.recv(timeout=0.2)
        assert isinstance(e.value, TimeoutError) and isinstance(e.value, MQTTError)


def test_persistent_session_gets_messages_sent_while_offline(
    mosquitto: Mosquitto, version: int, peer: PahoPeer
) -> None:
    opts = {"client_id": "durable", "clean_start": version == 5, "session_expiry": 3600}
    with client(mosquitto, version, **opts) as c:
        assert not c.connack.session_present
        c.subscribe("offline/#", qos=1)
    for i in range(5):
        peer.publish("offline/x", b"%d" % i, qos=1)
    with client(mosquitto, version, **{**opts, "clean_start": False}) as c:
        assert c.connack.session_present
        assert [c.recv().payload for _ in range(5)] == [b"%d" % i for i in range(5)]


def test_will_is_published_when_the_device_process_dies(
    mosquitto: Mosquitto, version: int, peer: PahoPeer
) -> None:
    peer.subscribe("status/#", 1)
    script = (
        "import sys, os\n"
        "from fieldline.mqtt import Client, Will\n"
        "c = Client(sys.argv[1], int(sys.argv[2]), version=int(sys.argv[3]), client_id='dying',\n"
        "           will=Will('status/dying', b'offline', qos=1, retain=False))\n"
        "c.connect()\n"
        "c.publish('status/dying', b'online', qos=1)\n"
        "print('up', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, mosquitto.host, str(mosquitto.port), str(version)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        assert peer.expect(1)[0].payload == b"online"
        proc.send_signal(signal.SIGKILL)
        assert peer.expect(1)[0].payload == b"offline"
    finally:
        proc.kill()
        proc.wait()


def test_clean_disconnect_sends_no_will(mosquitto: Mosquitto, version: int, peer: PahoPeer) -> None:
    peer.subscribe("bye/#", 1)
    with client(mosquitto, version, will=Will("bye/will", b"will", qos=1)):
        pass
    peer.publish("bye/marker", b"marker", qos=1)  # arrives after a will would have
    assert peer.expect(1)[0].payload == b"marker"


def test_wrong_credentials_raise_not_authorized(
    mosquitto_factory: MosquittoFactory, version: int, tmp_path: Path
) -> None:
    pwfile = tmp_path / "passwd"
    pwfile.write_text("")
    subprocess.run(
        ["mosquitto_passwd", "-b", str(pwfile), "alice", "secret"], check=True, env=_path_env()
    )
    broker = mosquitto_factory(extra_config=["allow_anonymous false", f"password_file {pwfile}"])
    with pytest.raises(NotAuthorized) as e:
        client(broker, version, username="alice", password=b"wrong").connect()
    assert e.value.reason_code in (0x86, 0x87)
    assert isinstance(e.value, ConnectionRefused)
    with pytest.raises(NotAuthorized):
        client(broker, version).connect()
    with client(broker, version, username="alice", password=b"secret") as c:
        assert c.publish("ok", b"1", qos=1).reason_code in (0, 0x10)  # 0x10: no subscribers


def _path_env() -> dict[str, str]:
    return {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/bin:/usr/sbin"}


def test_connection_refused_by_a_closed_port(version: int) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OSError):
        Client("127.0.0.1", port, version=version, timeout=WAIT).connect()


def test_queue_policy_raise(mosquitto: Mosquitto, version: int) -> None:
    with client(mosquitto, version, max_queued=3, queue_policy="raise") as c:
        for i in range(3):
            c.publish("q", b"%d" % i, qos=1, timeout=0)
        with pytest.raises(QueueFull):
            c.publish("q", b"x", qos=1, timeout=0)
        while c.session.inflight:
            c.loop(WAIT)
        c.publish("q", b"after", qos=1)


def test_queue_policy_block_waits_for_acks(mosquitto: Mosquitto, version: int) -> None:
    with client(mosquitto, version, max_queued=2) as c:
        for i in range(10):
            c.publish("q", b"%d" % i, qos=1, timeout=0)
            assert c.session.inflight <= 2


@pytest.mark.parametrize(
    "version,fault",
    [(4, "broker-restart"), (4, "connection-drop"), (5, "connection-drop")],
    ids=["3.1.1-broker-restart", "3.1.1-connection-drop", "5.0-connection-drop"],
)
def test_faults_mid_stream_lose_nothing(
    mosquitto_factory: MosquittoFactory, tcp_proxy: ProxyFactory, version: int, fault: str
) -> None:
    # Persistent sessions on both ends, both through a TCP proxy. QoS 1 and 2
    # messages are published while the broker is killed (SIGTERM) and started
    # again, or while every connection is reset. Each message arrives, QoS 2
    # ones exactly once. (Not SIGKILL: Mosquitto acknowledges messages before
    # its autosave writes them, so a SIGKILL may lose some on the broker's
    # side, which no client can help. Mosquitto 2.0 loses MQTT 5.0 sessions when it
    # restarts -- eclipse-mosquitto/mosquitto#2610 -- so 5.0 faces the
    # connection drop only; and before 2.0.13 its inflight quota leaks on a
    # resume, stranding queued messages, hence no inflight limit here.)
    broker = mosquitto_factory(extra_config=["max_inflight_messages 0"])
    proxy = tcp_proxy(broker)
    opts = {
        "clean_start": version == 5,
        "session_expiry": 3600,
        "backoff_min": 0.05,
        "backoff_max": 0.2,
        "timeout": WAIT,
        "version": version,
    }
    sub = Client(proxy.host, proxy.port, client_id="sub", **opts)  # type: ignore[arg-type]
    pub = Client(proxy.host, proxy.port, client_id="pub", **opts)  # type: ignore[arg-type]
    sub.connect()
    sub.subscribe("chaos/#", qos=2)
    pub.connect()
    got: list[Publish] = []
    try:
        for i in range(60):
            if i == 20:
                if fault == "broker-restart":
                    broker.stop()
                    broker.start()
                else:
                    proxy.drop()
            pub.publish("chaos/x", b"%d" % i, qos=1 + i % 2, timeout=0)
            pub.loop(0)
            sub.loop(0)
        while pub.session.inflight:
            pub.loop(0.05)
            sub.loop(0.05)
        while len({m.payload for m in got}) < 60:
            got.append(sub.recv())
        # Mosquitto may deliver queued messages out of order after a resume, so
        # the marker only bounds the wait for late duplicates.
        pub.publish("chaos/x", b"end", qos=1)
        while got[-1].payload != b"end":
            got.append(sub.recv())
    finally:
        sub.disconnect()
        pub.disconnect()
    assert proxy.established.value >= 4, "the fault did not break the connections"
    payloads = [m.payload for m in got if m.payload != b"end"]
    assert sorted(set(payloads), key=int) == [b"%d" % i for i in range(60)]
    qos2 = [p for p in payloads if int(p) % 2]
    assert len(qos2) == len(set(qos2)) == 30, "QoS 2 duplicates"


def test_reconnect_off_raises_connection_lost(mosquitto: Mosquitto, version: int) -> None:
    c = client(mosquitto, version, reconnect=False)
    c.connect()
    mosquitto.stop()
    with pytest.raises(ConnectionLost):
        c.recv()
    with pytest.raises(ConnectionLost):
        c.publish("x", b"1", qos=1)


def test_on_connect_and_on_disconnect_events(mosquitto: Mosquitto, version: int) -> None:
    events: list[str] = []
    c = client(mosquitto, version, backoff_min=0.05, backoff_max=0.1)
    c.on_connect = lambda ack: events.append("connect")
    c.on_disconnect = lambda err: events.append("disconnect")
    c.connect()
    mosquitto.restart()
    while events != ["connect", "disconnect", "connect"]:
        c.loop(WAIT)
    c.disconnect()


def test_loop_start_thread_with_slow_callback_and_publish_inside(
    mosquitto: Mosquitto, version: int
) -> None:
    # keepalive 1 s; a callback that blocks for 2.5 s must not get the connection
    # dropped, and a callback that publishes at QoS 1 and waits must not deadlock.
    c = client(mosquitto, version, keepalive=1)
    done = threading.Event()
    lost: list[object] = []
    c.on_disconnect = lost.append

    def slow(msg: Publish) -> None:
        done.wait(2.5)  # stands in for slow user work; nothing sets it
        c.publish("reply", b"from callback", qos=1)

    c.connect()
    c.loop_start()
    try:
        c.subscribe("slow", qos=1, callback=slow)
        c.subscribe("reply", qos=1)
        c.publish("slow", b"go", qos=1)
        assert c.recv(WAIT).payload == b"from callback"
        assert lost == []
    finally:
        c.disconnect()


def test_packet_too_large_for_the_broker(mosquitto_factory: MosquittoFactory) -> None:
    broker = mosquitto_factory(extra_config=["max_packet_size 1000"])
    with client(broker, 5) as c:
        assert c.connack.properties["maximum_packet_size"] == 1000
        with pytest.raises(PacketTooLarge) as e:
            c.publish("big", b"x" * 2000, qos=1)
        assert e.value.reason_code == 0x95
        assert c.publish("small", b"x" * 100, qos=1).reason_code in (0, 0x10)


def test_v5_properties_reach_paho(mosquitto: Mosquitto) -> None:
    peer = PahoPeer(mosquitto.host, mosquitto.port, 5)
    try:
        peer.subscribe("props/#", 1)
        with client(mosquitto, 5) as c:
            c.publish(
                "props/x",
                b"{}",
                qos=1,
                properties={
                    "content_type": "application/json",
                    "payload_format_indicator": 1,
                    "message_expiry_interval": 60,
                    "response_topic": "replies/1",
                    "correlation_data": b"\x01\x02",
                    "user_property": [("k", "v"), ("k", "w")],
                },
            )
        m = peer.expect(1)[0]
        p = vars(m.properties)  # paho sets the properties as attributes
        assert p["ContentType"] == "application/json"
        assert p["PayloadFormatIndicator"] == 1
        assert p["ResponseTopic"] == "replies/1"
        assert p["CorrelationData"] == b"\x01\x02"
        assert p["UserProperty"] == [("k", "v"), ("k", "w")]
        assert 0 < p["MessageExpiryInterval"] <= 60
    finally:
        peer.close()


def test_v5_properties_from_paho(mosquitto: Mosquitto) -> None:
    peer = PahoPeer(mosquitto.host, mosquitto.port, 5)
    try:
        with client(mosquitto, 5) as c:
            c.subscribe("props/#", qos=1, properties={"subscription_identifier": 7})
            peer.publish(
                "props/y",
                b"p",
                qos=1,
                ContentType="text/plain",
                UserProperty=[("a", "b")],
                CorrelationData=b"id",
            )
            m = c.recv()
            assert m.properties["content_type"] == "text/plain"
            assert m.properties["user_property"] == [("a", "b")]
            assert m.properties["correlation_data"] == b"id"
            assert m.properties["subscription_identifier"] == [7]
    finally:
        peer.close()


def test_v5_no_local_and_retain_handling(mosquitto: Mosquitto) -> None:
    with client(mosquitto, 5) as c:
        c.publish("nl/retained", b"old", qos=1, retain=True)
        c.subscribe(Subscription("nl/#", qos=1, no_local=True, retain_handling=2))
        c.publish("nl/own", b"own", qos=1)  # no-local: not sent back to us
        with client(mosquitto, 5) as other:
            other.publish("nl/other", b"other", qos=1)
        m = c.recv()
        assert m.payload == b"other"  # neither the retained message nor our own


def test_v5_shared_subscription_splits_messages(mosquitto: Mosquitto) -> None:
    with client(mosquitto, 5) as a, client(mosquitto, 5) as b, client(mosquitto, 5) as p:
        a.subscribe("$share/g/jobs/#", qos=1)
        b.subscribe("$share/g/jobs/#", qos=1)
        for i in range(20):
            p.publish("jobs/x", b"%d" % i, qos=1)
        got: list[bytes] = []
        while len(got) < 20:
            for c in (a, b):
                c.loop(0.01)
                while c._inbox:
                    got.append(c.recv().payload)
        assert sorted(got, key=int) == [b"%d" % i for i in range(20)]
        assert a._inbox == b._inbox == []


def test_v5_topic_aliases_are_automatic(mosquitto: Mosquitto) -> None:
    with client(mosquitto, 5, topic_alias_maximum=5) as c:
        assert c.connack.properties.get("topic_alias_maximum", 0) > 0
        c.subscribe("alias/long/topic/name", qos=1)
        for i in range(5):
            c.publish("alias/long/topic/name", b"%d" % i, qos=1)
        assert [c.recv().topic for _ in range(5)] == ["alias/long/topic/name"] * 5


def test_v5_broker_disconnect_reason_code_and_string(fake_broker: FakeBrokerFactory) -> None:
    props = prop(0x1F, b"going away") + prop(0x1C, b"other:1883")
    disconnect = b"\xe0" + bytes([2 + len(props), 0x9C, len(props)]) + props
    broker = fake_broker([recv(CONNECT), send(connack(0, properties=b"")), send(disconnect)])
    lost: list[BaseException] = []
    c = Client(broker.host, broker.port, version=5, reconnect=False, timeout=WAIT)
    c.on_disconnect = lost.append
    c.connect()
    with pytest.raises(ConnectionLost) as e:
        c.recv()
    assert e.value.reason_code == 0x9C  # use another server
    assert e.value.message == "going away"
    assert e.value.server_reference == "other:1883"
    assert lost == [e.value]
    assert c.disconnect_reason.properties["reason_string"] == "going away"


def test_v5_request_and_respond(mosquitto: Mosquitto) -> None:
    with client(mosquitto, 5) as server, client(mosquitto, 5) as caller:

        def answer(m: Publish) -> None:
            server.respond(m, b"pong:" + m.payload, timeout=0)

        server.subscribe("rpc/ping", qos=1, callback=answer)
        server.loop_start()
        try:
            for i in range(3):
                reply = caller.request("rpc/ping", b"%d" % i)
                assert reply.payload == b"pong:%d" % i
                assert reply.properties["correlation_data"] == b"%d" % (i + 1)
        finally:
            server.loop_stop()


def test_queue_policy_drop_oldest(
    mosquitto: Mosquitto, tcp_proxy: ProxyFactory, version: int, peer: PahoPeer
) -> None:
    # Offline, the queue fills and each new message pushes out the oldest
    # unsent one; back online, the newest three reach the subscriber.
    peer.subscribe("drop", 1)
    proxy = tcp_proxy(mosquitto)
    lost: list[BaseException] = []
    c = Client(
        proxy.host,
        proxy.port,
        version=version,
        max_queued=3,
        queue_policy="drop_oldest",
        backoff_min=0.05,
        backoff_max=0.1,
        timeout=WAIT,
    )
    c.on_disconnect = lost.append
    c.connect()
    proxy.refuse()
    proxy.drop()
    while not lost:
        c.loop(WAIT)
    for i in range(6):
        c.publish("drop", b"%d" % i, qos=1, timeout=0)
    assert c.session.inflight == 3
    proxy.accept()
    while c.session.inflight:
        c.loop(WAIT)
    assert [m.payload for m in peer.expect(3)] == [b"3", b"4", b"5"]
    c.disconnect()


@pytest.mark.parametrize("version", [5], ids=["5.0"])
def test_v5_will_properties_and_delay(mosquitto: Mosquitto, peer: PahoPeer) -> None:
    peer.subscribe("wd/#", 1)
    will = Will(
        "wd/will",
        b"gone",
        qos=1,
        properties={"will_delay_interval": 1, "content_type": "text/plain"},
    )
    c = client(mosquitto, 5, will=will, session_expiry=10)
    c.connect()
    c.disconnect(0x04)  # "disconnect with will message": the broker sends it
    m = peer.expect(1)[0]
    assert m.payload == b"gone"
    assert vars(m.properties)["ContentType"] == "text/plain"


class FileStore:
    """The ``persistence`` contract on a real file: one JSON line per event."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.next_key = max((k for k, _ in self.pending()), default=0)

    def _append(self, record: dict[str, object]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def put(
        self, topic: str, payload: bytes, qos: int, retain: bool, properties: object, pid: int
    ) -> int:
        self.next_key += 1
        self._append({"put": self.next_key, "m": [topic, payload.hex(), qos, retain, pid]})
        return self.next_key

    def done(self, key: int) -> None:
        self._append({"done": key})

    def pending(self) -> list[tuple[int, tuple[str, bytes, int, bool, None, int]]]:
        if not self.path.exists():
            return []
        live: dict[int, tuple[str, bytes, int, bool, None, int]] = {}
        for line in self.path.read_text().splitlines():
            r = json.loads(line)
            if "put" in r:
                t, p, q, retain, pid = r["m"]
                live[r["put"]] = (t, bytes.fromhex(p), q, retain, None, pid)
            else:
                live.pop(r["done"], None)
        return sorted(live.items())


def test_persistence_hook_carries_messages_across_a_crash(
    mosquitto: Mosquitto, tcp_proxy: ProxyFactory, version: int, peer: PahoPeer, tmp_path: Path
) -> None:
    peer.subscribe("kept/#", 1)
    store = FileStore(tmp_path / "queue.jsonl")
    proxy = tcp_proxy(mosquitto)
    first = Client(proxy.host, proxy.port, version=version, persistence=store, timeout=WAIT)
    first.connect()
    first.publish("kept/a", b"acked", qos=1)
    proxy.refuse()
    proxy.drop()
    for i in range(3):
        first.publish("kept/b", b"%d" % i, qos=1 + i % 2, timeout=0)
    del first  # the program dies here: nothing more runs, no DISCONNECT
    assert [m[1] for _, m in store.pending()][-3:] == [b"0", b"1", b"2"]
    assert peer.expect(1)[0].payload == b"acked"
    with Client(mosquitto.host, mosquitto.port, version=version, persistence=store) as second:
        while store.pending():
            second.loop(WAIT)
    assert sorted(m.payload for m in peer.expect(3)) == [b"0", b"1", b"2"]


def test_oversized_incoming_packet(mosquitto: Mosquitto, version: int, peer: PahoPeer) -> None:
    # 5.0: the broker learns our Maximum Packet Size and drops larger messages
    # for us (MQTT-3.1.2-25); 3.1.1 has no way to say it, so the oversized packet
    # ends the connection with 0x95 and the client reconnects.
    lost: list[BaseException] = []
    with client(mosquitto, version, max_packet_size=200, backoff_min=0.05) as c:
        c.on_disconnect = lost.append
        c.subscribe("big/#", qos=1)
        peer.publish("big/1", b"x" * 1000, qos=1)
        peer.publish("big/2", b"small", qos=1)
        if version == 4:
            while not lost:
                c.loop(WAIT)
            assert isinstance(lost[0], MQTTError) and lost[0].reason_code == 0x95
            c.subscribe("big/#", qos=1)  # returns once reconnected and subscribed
            peer.publish("big/3", b"small", qos=1)
            assert c.recv().payload == b"small"
        else:
            assert c.recv().payload == b"small"  # big/1 was dropped by the broker
            assert lost == []


def test_loop_start_survives_a_burst_of_publishes(mosquitto: Mosquitto, version: int) -> None:
    # Thousands of publishes from the user thread while the I/O thread runs: the
    # wake-up socket once filled up and blocked the publisher holding the lock.
    c = client(mosquitto, version, max_queued=500)
    c.connect()
    c.loop_start()
    done = threading.Event()

    def burst() -> None:
        for i in range(20000):
            c.publish("burst", b"%d" % i, qos=i % 2, timeout=0)
        done.set()

    t = threading.Thread(target=burst, daemon=True)
    t.start()
    try:
        assert done.wait(WAIT * 3), "publisher stuck"
        c.publish("burst", b"last", qos=1)  # waits for its PUBACK, so the rest went out
    finally:
        c.disconnect()


def test_loop_start_before_connect(mosquitto: Mosquitto, version: int) -> None:
    # The I/O thread once found nothing to drive and ended with "not
    # connected"; every later wait then failed.
    c = client(mosquitto, version)
    c.loop_start()
    try:
        c.connect()
        c.subscribe("early", qos=1)
        assert c.publish("early", b"1", qos=1) is not None
        assert c.recv(WAIT).payload == b"1"
    finally:
        c.disconnect()


def test_disconnect_from_a_callback_under_loop_start(mosquitto: Mosquitto, version: int) -> None:
    # stop() cleared the callback queue under the callback thread's feet:
    # it crashed with AttributeError after the callback returned.
    errors: list[BaseException | None] = []
    old_hook = threading.excepthook
    threading.excepthook = lambda a: errors.append(a.exc_value)
    c = client(mosquitto, version)
    c.connect()
    c.loop_start()
    call_thread = c._call_thread
    try:
        c.subscribe("bye", qos=1, callback=lambda m: c.disconnect())
        c.publish("bye", b"x", qos=1, timeout=0)
        call_thread.join(WAIT)
        assert not call_thread.is_alive()
        assert errors == []
        assert not c.is_connected
    finally:
        threading.excepthook = old_hook
        c.disconnect()


@pytest.mark.parametrize("call", ["recv", "publish", "messages"])
def test_disconnect_wakes_a_waiting_thread(
    fake_broker: FakeBrokerFactory, version: int, call: str
) -> None:
    # A thread waiting on the loop_start() thread slept out its whole timeout
    # (messages(): forever) when another thread called disconnect(). The
    # broker here never acks and never sends a message.
    published = threading.Event()
    ok = connack(0, properties=b"" if version == 5 else None)
    broker = fake_broker(
        [recv(CONNECT), send(ok), recv(PUBLISH, timeout=WAIT), lambda conn: published.set()]
    )
    c = Client(broker.host, broker.port, version=version, timeout=60)
    c.connect()
    c.loop_start()
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            if call == "recv":
                c.recv(60)
            elif call == "publish":
                c.publish("quiet", b"x", qos=1, timeout=60)
            else:
                for _ in c.messages():
                    pass
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    if call == "publish":
        assert published.wait(WAIT)  # so it waits for the PUBACK now
    c.disconnect(timeout=1)
    t.join(WAIT)
    assert not t.is_alive(), "the waiter was not woken"
    if call == "messages":  # the iteration ends, as the async streams do
        assert outcome == []
    else:
        assert len(outcome) == 1 and isinstance(outcome[0], ConnectionLost)
