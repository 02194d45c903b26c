"""Observability over real sockets: the ``$SYS`` topics (retained, updated every
``sys_interval``, out of reach of ``#`` and of publishers, behind the ACL file), the
Prometheus endpoint (scraped with urllib, parsed with prometheus_client), JSON log
lines, and the command's flags (``fieldline broker`` as a subprocess)."""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_broker import WAIT, Raw, running
from test_broker_config import run_cli

from fieldline.broker import BrokerThread, ConfigError
from fieldline.broker.configfile import apply_flags, config_from_dict
from fieldline.broker.logs import JsonFormatter
from fieldline.mqtt import Client, Publish, PublishRefused, Subscription

prometheus_parser = pytest.importorskip("prometheus_client.parser")

SYS = "$SYS/broker/"


class SysView:
    """What a client subscribed to ``$SYS`` topics has heard: the latest message of
    each topic. ``wait(topic, value)`` returns once ``topic`` holds ``value`` (a value
    that stays the same is not published again, so it may be there already)."""

    def __init__(self, c: Client) -> None:
        self.c = c
        self.latest: dict[str, Publish] = {}

    def next(self) -> Publish:
        m = self.c.recv(timeout=WAIT)
        self.latest[m.topic] = m
        return m

    def wait(self, topic: str, value: bytes | None = None) -> Publish:
        deadline = time.monotonic() + WAIT
        while True:
            m = self.latest.get(topic)
            if m is not None and (value is None or m.payload == value):
                return m
            assert time.monotonic() < deadline, f"{topic}: {m and m.payload!r}, not {value!r}"
            self.next()


# -- $SYS --------------------------------------------------------------------------------


def test_sys_topics_are_retained_and_follow_traffic() -> None:
    with BrokerThread(sys_interval=0.1) as b:
        with Client(b.host, b.port, client_id="sys-sub", timeout=WAIT) as sub:
            sub.subscribe("$SYS/#")
            view = SysView(sub)
            while view.next().retain:  # the retained ones first, all of them, then updates
                pass
            got = dict(view.latest)
            assert len(got) > 25
            version = got[SYS + "version"]
            assert version.retain and version.payload.startswith(b"fieldline version ")
            assert re.fullmatch(rb"\d+ seconds", got[SYS + "uptime"].payload)
            assert SYS + "load/publish/received/1min" in got
            assert SYS + "fieldline/publish/messages/rate_limited" in got
            view.wait(SYS + "clients/connected", b"1")
            view.wait(SYS + "subscriptions/count", b"1")
            with Client(b.host, b.port, client_id="sys-pub", timeout=WAIT) as pub:
                view.wait(SYS + "clients/connected", b"2")
                view.wait(SYS + "clients/maximum", b"2")
                for i in range(3):
                    pub.publish("app/x", b"%d" % i, qos=1)
                view.wait(SYS + "publish/messages/received", b"3")
                view.wait(SYS + "publish/bytes/received", b"3")
                load = SYS + "load/publish/received/1min"
                while float(view.wait(load).payload) == 0:
                    view.next()
            view.wait(SYS + "clients/connected", b"1")
        # A subscriber arriving later gets the latest values, retained.
        with Client(b.host, b.port, client_id="late", timeout=WAIT) as late:
            late.subscribe(SYS + "publish/messages/received")
            m = late.recv(timeout=WAIT)
            assert (m.topic, m.payload, m.retain) == (SYS + "publish/messages/received", b"3", True)
        assert b.call(b.broker.stats)["retained"] == 0  # $SYS is not in the retained store


def test_hash_and_plus_do_not_match_sys() -> None:
    # MQTT-4.7.2-1. sub_sys sees an update published after sub_all subscribed; every
    # message routed before x/2 reaches sub_all before x/2, so x/1 then x/2 proves that
    # no $SYS message went to it (live or retained).
    with BrokerThread(sys_interval=0.05) as b:
        sub_all = Raw(b.port, "all")
        sub_all.subscribe(Subscription("#", 0), Subscription("+/broker/#", 0))
        with Client(b.host, b.port, client_id="sys", timeout=WAIT) as sub_sys:
            sub_sys.subscribe(SYS + "publish/messages/received")
            with Client(b.host, b.port, client_id="pub", timeout=WAIT) as pub:
                pub.publish("x/1", b"1", qos=1)
                SysView(sub_sys).wait(SYS + "publish/messages/received", b"1")
                pub.publish("x/2", b"2", qos=1)
        assert [m.topic for m in sub_all.messages(2)] == ["x/1", "x/2"]
        sub_all.close()


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("topic", ["$SYS/x", "$SYS", SYS + "version"])
def test_clients_cannot_publish_to_sys(version: int, topic: str) -> None:
    with BrokerThread(sys_interval=0) as b:
        sub = Raw(b.port, "sub")
        sub.subscribe(Subscription("$SYS/#", 0), Subscription("$SYS", 0))
        pub = Raw(b.port, "pub", version=version)
        ack = pub.publish(topic, b"forged", 1, retain=True)
        # 5.0: PUBACK 0x87 Not authorized; 3.1.1 has no code: acked and dropped.
        assert ack.reason_code == (0x87 if version == 5 else 0)
        pub.publish(topic, b"forged", 0)
        b.call(b.broker.publish, "$SYS/marker", b"m")
        assert [(m.topic, m.payload) for m in sub.messages(1)] == [("$SYS/marker", b"m")]
        assert sub.quiet()
        stats = b.call(b.broker.stats)
        assert stats["denied"] == 2 and stats["retained"] == 0
        pub.close()
        sub.close()


def test_a_will_on_sys_is_not_published() -> None:
    from fieldline.mqtt import Will

    with BrokerThread(sys_interval=0) as b:
        sub = Raw(b.port, "sub")
        sub.subscribe(Subscription("$SYS/#", 0))
        dying = Raw(b.port, "dying", will=Will("$SYS/broker/version", b"forged"))
        dying.close()  # no DISCONNECT: the Will would go now
        deadline = time.monotonic() + WAIT
        while b.call(b.broker.stats)["sessions"] > 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        b.call(b.broker.publish, "$SYS/marker", b"m")
        assert [m.topic for m in sub.messages(1)] == ["$SYS/marker"]
        sub.close()


def test_sys_off_with_interval_0() -> None:
    with BrokerThread(sys_interval=0) as b:
        assert b.broker.sys is None
        with Client(b.host, b.port, timeout=WAIT) as c:
            c.subscribe("$SYS/#")
            b.call(b.broker.publish, "$SYS/marker", b"m")
            assert c.recv(timeout=WAIT).topic == "$SYS/marker"  # nothing came before it


def test_the_acl_file_decides_who_reads_sys(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite app/#\nuser ops\ntopic read $SYS/broker/clients/#\n")
    with BrokerThread(sys_interval=0.05, acl_file=str(acl)) as b:
        with Client(b.host, b.port, client_id="ops", username="ops", timeout=WAIT) as ops:
            with Client(b.host, b.port, client_id="anyone", timeout=WAIT) as anyone:
                assert anyone.subscribe("$SYS/#") == [0x87]
                assert ops.subscribe([("$SYS/#", 0), (SYS + "clients/+", 0)]) == [0x87, 0]
                view = SysView(ops)
                view.wait(SYS + "clients/connected", b"2")
            view.wait(SYS + "clients/connected", b"1")  # anyone left
            clients = {SYS + f"clients/{k}" for k in ("connected", "disconnected",
                                                       "total", "maximum")}  # fmt: skip
            assert set(view.latest) <= clients


# -- Prometheus --------------------------------------------------------------------------


def scrape(port: int, path: str = "/metrics", **headers: str) -> tuple[str, str]:
    """GET ``path``: the Content-Type and the body."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    with urllib.request.urlopen(req, timeout=WAIT) as r:
        return r.headers["Content-Type"], r.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    out = {}
    for family in prometheus_parser.text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def metrics_broker() -> Iterator[BrokerThread]:
    yield from running(metrics_port=0, sys_interval=0, max_connections=2, max_queued_messages=2)


def test_metrics_after_traffic(metrics_broker: BrokerThread) -> None:
    b = metrics_broker
    assert b.broker.metrics is not None
    port = b.broker.metrics.port
    assert samples(scrape(port)[1])[("fieldline_broker_connections_accepted_total", ())] == 0
    # An offline persistent session with a full queue (one more message: one dropped).
    away = Raw(b.port, "away", clean_start=False, properties={"session_expiry_interval": 60})
    away.subscribe(Subscription("m/#", 1))
    away.close()
    deadline = time.monotonic() + WAIT
    while b.call(b.broker.stats)["connections"]:  # gone, not counted for max_connections
        assert time.monotonic() < deadline
        time.sleep(0.01)
    sub = Raw(b.port, "sub")
    sub.subscribe(Subscription("m/#", 2))
    pub = Client(b.host, b.port, client_id="pub", timeout=WAIT)
    pub.connect()
    refused = Raw(b.port, "third")  # max_connections 2
    assert refused.connack.reason_code == 0x97
    refused.close()
    for qos, n in ((0, 2), (1, 3), (2, 1)):
        for i in range(n):
            pub.publish(f"m/{qos}/{i}", b"12345", qos=qos)
    pub.publish("m/retained", b"r", qos=1, retain=True)
    with pytest.raises(PublishRefused) as e:
        pub.publish("$SYS/forged", b"x", qos=1)
    assert e.value.reason_code == 0x87
    assert len(sub.messages(7)) == 7
    content_type, text = scrape(port)
    assert content_type.startswith("text/plain; version=0.0.4")
    got = samples(text)

    def value(name: str, **labels: str) -> float:
        return got[("fieldline_broker_" + name, tuple(sorted(labels.items())))]

    assert value("connections_accepted_total") == 3
    assert value("connections_refused_total", reason_code="0x97") == 1
    assert value("connections_open") == 2 and value("clients_connected") == 2
    assert value("sessions", state="online") == 2 and value("sessions", state="offline") == 1
    assert value("clients_maximum") == 2
    assert [value("messages_received_total", qos=q) for q in "012"] == [2, 5, 1]
    assert value("publish_received_bytes_total") == 6 * 5 + 1 + 1
    # To "sub" (QoS 2 subscription): 2 at QoS 0, 3 + the retained one at QoS 1, 1 at 2.
    assert [value("messages_sent_total", qos=q) for q in "012"] == [2, 4, 1]
    assert value("publish_sent_bytes_total") == 6 * 5 + 1
    assert value("received_bytes_total") > value("publish_received_bytes_total")
    assert value("sent_bytes_total") > value("publish_sent_bytes_total")
    assert value("publish_denied_total") == 1
    assert value("subscriptions") == 2 and value("retained_messages") == 1
    # "away" holds 2 of the 5 QoS 1/2 messages (QoS 0 ones are not kept offline).
    # Their bytes: payloads and topics ("m/2/0", "m/retained").
    assert value("queued_messages") == 2 and value("queued_bytes") == 5 + 5 + 1 + 10
    assert value("messages_dropped_total") == 3
    assert value("messages_expired_total") == 0 and value("publish_rate_limited_total") == 0
    assert value("inflight_messages") >= 0
    sub.close()
    pub.disconnect()


def test_metrics_count_plugin_failures() -> None:
    class Flaky:
        def authorize_publish(self, client_id: str, username: Any, topic: str, *a: Any) -> None:
            if topic == "boom":
                raise RuntimeError("broke")

    for b in running(metrics_port=0, sys_interval=0, plugins=[Flaky()]):
        assert b.broker.metrics is not None
        c = Raw(b.port, "c")
        assert c.publish("boom", b"", 1).reason_code == 0x80
        assert c.publish("boom", b"", 1).reason_code == 0x80
        assert c.publish("fine", b"", 1).reason_code < 0x80
        got = samples(scrape(b.broker.metrics.port)[1])
        labels = (("hook", "authorize_publish"), ("plugin", "Flaky"))
        assert got[("fieldline_broker_plugin_errors_total", labels)] == 2
        assert not [k for k in got if k[0] == "fieldline_broker_plugin_timeouts_total"]
        c.close()


def test_metrics_http(metrics_broker: BrokerThread) -> None:
    assert metrics_broker.broker.metrics is not None
    port = metrics_broker.broker.metrics.port
    with pytest.raises(urllib.error.HTTPError) as e:
        scrape(port, "/")
    assert e.value.code == 404
    content_type, text = scrape(port, "/metrics", Accept="application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text") and text.endswith("# EOF\n")
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method="HEAD")
    with urllib.request.urlopen(req, timeout=WAIT) as r:
        assert r.status == 200 and r.read() == b""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=WAIT)
    assert e.value.code == 405


# -- logs ----------------------------------------------------------------------------------


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def json_log() -> Iterator[Lines]:
    logger = logging.getLogger("fieldline.broker")
    handler = Lines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_json_log_lines_carry_the_fields(json_log: Lines) -> None:
    with BrokerThread(sys_interval=0, max_connections=1) as b:
        c = Raw(b.port, "json-1")
        assert Raw(b.port, "json-2").connack.reason_code == 0x97
        c.publish("$SYS/x", b"", 1)
        c.session.disconnect()
        c.flush()
        deadline = time.monotonic() + WAIT
        while b.call(b.broker.stats)["sessions"]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        c.close()
    records = [json.loads(line) for line in json_log.lines]
    for r in records:
        assert {"time", "level", "logger", "message"} <= r.keys()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"])
    connect = next(r for r in records if r["message"].endswith("connected (MQTT 5.0)"))
    assert (connect["level"], connect["logger"]) == ("info", "fieldline.broker")
    assert (connect["client_id"], connect["protocol"]) == ("json-1", 5)
    assert re.fullmatch(r"127\.0\.0\.1:\d+", connect["peer"])
    refused = next(r for r in records if r.get("client_id") == "json-2")
    assert (refused["level"], refused["reason_code"]) == ("warning", 0x97)
    denied = next(r for r in records if r.get("topic") == "$SYS/x")
    assert (denied["client_id"], denied["reason_code"]) == ("json-1", 0x87)
    gone = next(r for r in records if "disconnected" in r["message"])
    assert (gone["client_id"], gone["reason_code"]) == ("json-1", 0)


def test_configure_text_and_json() -> None:
    import io

    from fieldline.broker.logs import configure

    logger = logging.getLogger("fieldline")
    saved = (logger.level, logger.propagate)
    out = io.StringIO()
    try:
        handler = configure("json", "info", out)
        log = logging.getLogger("fieldline.broker")
        log.debug("not written")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed", extra={"client_id": "c1", "payload": b"\x00"})
        r = json.loads(out.getvalue())
        assert (r["level"], r["message"], r["client_id"], r["payload"]) == (
            "error", "failed", "c1", "b'\\x00'",
        )  # fmt: skip
        assert "ValueError: boom" in r["exception"]
        out.seek(0)
        out.truncate()
        assert configure("text", "warning", out) is not handler
        assert handler not in logger.handlers  # replaced, not added to
        log.info("not written")
        log.warning("written")
        assert out.getvalue().rstrip().endswith(" WARNING fieldline.broker: written")
    finally:
        for h in list(logger.handlers):
            logger.removeHandler(h)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


# -- configuration and the command ------------------------------------------------------------


def test_config_keys_and_flags() -> None:
    cfg = config_from_dict(
        {"sys_interval": 5, "metrics_port": 9100, "log_format": "json", "log_level": "info"}
    )
    assert (cfg.sys_interval, cfg.metrics_port, cfg.log_format, cfg.log_level) == (
        5.0, 9100, "json", "info",
    )  # fmt: skip
    cfg = apply_flags(cfg, sys_interval=0, metrics_port=0, log_format="text")
    assert (cfg.sys_interval, cfg.metrics_port, cfg.log_format, cfg.log_level) == (
        0.0, 0, "text", "info",
    )  # fmt: skip
    for bad, message in (
        ({"sys_interval": -1}, "sys_interval must be 0"),
        ({"metrics_port": 70000}, "metrics_port 70000 is out of range"),
        ({"log_format": "xml"}, "unknown log_format 'xml'"),
        ({"log_level": "loud"}, "unknown log_level 'loud'"),
        ({"metrics_port": "9100"}, "'metrics_port' must be an integer"),
    ):
        with pytest.raises(ConfigError, match=message):
            config_from_dict(bad)


def test_cli_flags() -> None:
    proc = run_cli("--port", "0", "--sys-interval", "0.1", "--metrics-port", "0",
                   "--log-format", "json", "--log-level", "info")  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        port = int(re.search(r"mqtt://127\.0\.0\.1:(\d+)", lines[0]).group(1))  # type: ignore[union-attr]
        metrics = re.search(r"Prometheus metrics on (http://\S+/metrics)", lines[1])
        assert metrics is not None, lines
        assert "Ctrl-C" in lines[2]
        with Client("127.0.0.1", port, client_id="cli-1", timeout=WAIT) as c:
            c.subscribe(SYS + "clients/connected")
            SysView(c).wait(SYS + "clients/connected", b"1")
            c.publish("cli/x", b"hello", qos=1)
            with urllib.request.urlopen(metrics.group(1), timeout=WAIT) as r:
                got = samples(r.read().decode())
            assert got[("fieldline_broker_messages_received_total", (("qos", "1"),))] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
        records = [json.loads(line) for line in proc.stderr.read().splitlines()]
        connect = [r for r in records if r.get("client_id") == "cli-1" and "connected" in
                   r["message"]]  # fmt: skip
        assert connect and connect[0]["level"] == "info", records
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_metrics_port_in_use() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        proc = run_cli("--port", "0", "--metrics-port", str(taken))
        out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 1 and "fieldline broker: " in err, err


def test_stop_closes_a_scrape_left_half_way() -> None:
    # A scraper that sent half a request must not hold the broker's shutdown.
    b = BrokerThread("127.0.0.1", 0, metrics_port=0, sys_interval=0).start()
    assert b.broker.metrics is not None
    idle = socket.create_connection(("127.0.0.1", b.broker.metrics.port), timeout=WAIT)
    idle.sendall(b"GET /metr")
    b.stop()
    idle.settimeout(3)  # well under the 10 s the server gives a request
    assert idle.recv(100) == b""  # closed by the stop
    idle.close()


def test_clients_maximum_counts_every_peak() -> None:
    for b in running(sys_interval=0):
        clients = [Raw(b.port, f"peak-{i}") for i in range(4)]
        for c in clients[1:]:
            c.close()
        # Wait for the three to go without reading stats(), which once sampled the
        # maximum: it must have counted the peak by itself.
        deadline = time.monotonic() + WAIT
        while b.call(b.broker.connections.__len__) != 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert b.call(b.broker.stats)["clients_maximum"] == 4
        clients[0].close()
