"""The ACL file (``acl.py``): parsing, precedence and substitution, then enforcement by
the broker with our clients (5.0) and paho-mqtt (3.1.1) as peers: denied PUBLISH,
SUBSCRIBE, deliveries, retained messages and Wills."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from test_broker import WAIT, Raw, running

from fieldline.broker import BrokerConfig, BrokerThread, ConfigError
from fieldline.broker.acl import Acl, covers
from fieldline.broker.configfile import apply_flags, config_from_dict
from fieldline.mqtt import Client, PublishRefused, Subscription, Will

ROOT = Path(__file__).resolve().parent.parent
NOT_AUTHORIZED = 0x87
V3_FAILURE = 0x80

# No password file: user names are taken as sent, which keeps these tests free of hashes
# (test_broker_auth.py checks them; a real deployment sets both files).
ACL = """\
# everyone, anonymous included
topic read public/#
topic readwrite clients/%c/#

user alice
topic readwrite tenants/%u/#

user bob
topic readwrite tenants/%u/#

user admin
topic read #
topic deny secret/#

user root
topic write #

user auditor
topic read #

client will-*
topic write wills/ok/#
"""


@pytest.fixture(scope="module")
def aclfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("acl") / "acl"
    path.write_text(ACL)
    return path


@pytest.fixture(scope="module")
def broker(aclfile: Path) -> Iterator[BrokerThread]:
    yield from running(acl_file=str(aclfile))


def client(b: BrokerThread, user: str | None, client_id: str = "", version: int = 5) -> Client:
    c = Client("127.0.0.1", b.port, client_id=client_id, username=user, version=version)
    c.connect(timeout=WAIT)
    return c


# -- the file ----------------------------------------------------------------------------


def test_rules_apply_by_section_with_substitution() -> None:
    acl = Acl.parse(ACL)
    alice = acl.permissions("alice", "laptop")
    assert alice.can_read("tenants/alice/x") and alice.can_write("tenants/alice/x")
    assert not alice.can_read("tenants/bob/x") and not alice.can_write("tenants/bob/x")
    assert alice.can_read("public/news") and not alice.can_write("public/news")
    assert alice.can_write("clients/laptop/status")  # %c
    anonymous = acl.permissions(None, "c1")
    assert anonymous.can_read("public/a") and not anonymous.can_read("tenants/alice/x")
    admin = acl.permissions("admin", "a")
    assert admin.can_read("anything/at/all")
    assert not admin.can_read("secret/x") and not admin.can_read("secret")  # deny wins
    assert not admin.can_read("$SYS/x")  # '#' never matches a $ topic (MQTT-4.7.2-1)
    assert not admin.can_write("anything")  # no rule: denied
    assert acl.permissions(None, "will-7").can_write("wills/ok/7")
    assert not acl.permissions(None, "xwill-7").can_write("wills/ok/7")  # whole id matches


def test_a_value_that_would_be_a_wildcard_is_not_substituted() -> None:
    acl = Acl.parse("topic readwrite tenants/%u/#\n")
    assert acl.permissions("alice", "c").can_read("tenants/alice/x")
    for user in ("+", "#", "a/b", "", None):
        p = acl.permissions(user, "c")
        assert p.read == [] and not p.can_read("tenants/a/b/x")


def test_subscribe_needs_a_read_rule_covering_the_filter() -> None:
    admin = Acl.parse(ACL).permissions("admin", "a")
    assert admin.can_subscribe("#")  # allowed; secret/# is filtered at delivery
    assert not admin.can_subscribe("secret/#") and not admin.can_subscribe("secret/+/x")
    alice = Acl.parse(ACL).permissions("alice", "a")
    assert alice.can_subscribe("tenants/alice/#") and alice.can_subscribe(
        "$share/g/tenants/alice/x"
    )
    assert not alice.can_subscribe("tenants/+/x") and not alice.can_subscribe("#")


@pytest.mark.parametrize(
    ("outer", "inner", "expected"),
    [
        ("#", "a/b", True),
        ("a/#", "a", True),
        ("a/#", "a/+/c", True),
        ("a/+", "a/b", True),
        ("a/+", "a/+", True),
        ("a/+", "a/#", False),
        ("a/b", "a/+", False),
        ("a/+", "a/b/c", False),
        ("+/b", "$SYS/b", False),
        ("#", "$SYS/#", False),
        ("$SYS/#", "$SYS/x", True),
    ],
)
def test_covers(outer: str, inner: str, expected: bool) -> None:
    assert covers(outer, inner) is expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("topic read a\nwrite a/b\n", "2: unknown keyword 'write'"),
        ("topic a/b\n", "1: expected 'topic read|write|readwrite|deny FILTER'"),
        ("topic read\n", "1: expected"),
        ("\n\ntopic read a/#/b\n", "3: not a topic filter"),
        ("topic read $share/g/a\n", "1: a rule's filter cannot be a shared one"),
        ("user\n", "1: 'user' needs a name"),
    ],
)
def test_malformed_file_is_a_config_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "acl"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        Acl.load(path)
    assert str(e.value).startswith(f"{path}:")  # the file and the line
    with pytest.raises(ConfigError, match=message):
        BrokerThread("127.0.0.1", 0, acl_file=str(path)).start()


def test_config_key_and_flag(tmp_path: Path) -> None:
    cfg = config_from_dict({"acl_file": "acl"}, "f.toml", tmp_path)
    assert cfg.acl_file == str(tmp_path / "acl")  # relative to the file
    with pytest.raises(ConfigError, match="'acl_file' must be a string"):
        config_from_dict({"acl_file": 1})
    assert apply_flags(BrokerConfig(), acl_file="/etc/acl").acl_file == "/etc/acl"
    with pytest.raises(ConfigError, match="the ACL file does not exist"):
        BrokerThread("127.0.0.1", 0, acl_file=str(tmp_path / "missing")).start()


def test_broker_command_refuses_a_bad_acl_file(tmp_path: Path) -> None:
    path = tmp_path / "acl"
    path.write_text("topic readonly a\n")
    r = subprocess.run(
        [sys.executable, "-m", "fieldline.cli", "broker", "--port", "0", "--acl-file", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=WAIT,
    )
    assert r.returncode == 2
    assert f"{path}:1: expected 'topic read|write|readwrite|deny FILTER'" in r.stderr


# -- enforcement, MQTT 5.0 ---------------------------------------------------------------


@pytest.mark.parametrize("qos", [1, 2])
def test_denied_publish_is_refused_with_0x87(broker: BrokerThread, qos: int) -> None:
    sub = client(broker, "admin", f"sub-{qos}")
    pub = client(broker, "alice", f"alice-pub-{qos}")
    try:
        assert sub.subscribe("secret/#", qos=qos) == [NOT_AUTHORIZED]
        assert sub.subscribe("clients/#", qos=qos) == [qos]
        with pytest.raises(PublishRefused) as e:
            pub.publish(f"clients/someone-else/{qos}", b"no", qos=qos)
        assert e.value.reason_code == NOT_AUTHORIZED
        pub.publish(f"clients/alice-pub-{qos}/x", b"yes", qos=qos)  # %c
        m = sub.recv(timeout=WAIT)
        assert (m.topic, m.payload) == (f"clients/alice-pub-{qos}/x", b"yes")
    finally:
        sub.disconnect()
        pub.disconnect()


def test_tenants_cannot_read_each_other(broker: BrokerThread) -> None:
    alice = client(broker, "alice", "alice-1")
    bob = client(broker, "bob", "bob-1")
    try:
        # One SUBSCRIBE: the denied filter fails, the others still work.
        codes = alice.subscribe([("tenants/bob/#", 1), ("tenants/alice/#", 1), ("tenants/+", 1)])
        assert codes == [NOT_AUTHORIZED, 1, NOT_AUTHORIZED]
        assert bob.subscribe("tenants/bob/#", qos=1) == [1]
        with pytest.raises(PublishRefused):
            bob.publish("tenants/alice/inbox", b"sneaky", qos=1)
        bob.publish("tenants/bob/inbox", b"own", qos=1)
        alice.publish("tenants/alice/inbox", b"hers", qos=1)
        m = alice.recv(timeout=WAIT)
        assert (m.topic, m.payload) == ("tenants/alice/inbox", b"hers")
        m = bob.recv(timeout=WAIT)
        assert (m.topic, m.payload) == ("tenants/bob/inbox", b"own")
    finally:
        alice.disconnect()
        bob.disconnect()


def test_wildcard_subscriber_gets_no_denied_topic(
    broker: BrokerThread, caplog: pytest.LogCaptureFixture
) -> None:
    root = client(broker, "root", "root-1")
    root.publish("secret/retained", b"hidden", qos=1, retain=True)
    admin = client(broker, "admin", "admin-1")
    try:
        assert admin.subscribe("#", qos=1) == [1]  # the retained secret is not sent
        assert admin.subscribe("secret/#", qos=1) == [NOT_AUTHORIZED]
        root.publish("secret/plans", b"hidden", qos=1)
        root.publish("secret/plans", b"hidden", qos=0)
        root.publish("ops/status", b"visible", qos=1)
        m = admin.recv(timeout=WAIT)
        assert (m.topic, m.payload) == ("ops/status", b"visible")
        # A QoS 0 PUBLISH that is denied is dropped and logged.
        with caplog.at_level("INFO", logger="fieldline.broker"):
            admin.publish("ops/status", b"nope", qos=0)
            admin.publish("clients/admin-1/ok", b"ok", qos=1)
        m = admin.recv(timeout=WAIT)
        assert m.topic == "clients/admin-1/ok"
        assert "'admin-1': PUBLISH to 'ops/status' denied by the ACL" in caplog.text
    finally:
        root.publish("secret/retained", b"", qos=1, retain=True)
        root.disconnect()
        admin.disconnect()


def test_shared_group_picks_a_member_that_may_read(broker: BrokerThread) -> None:
    admin = client(broker, "admin", "admin-shared")
    auditor = client(broker, "auditor", "auditor-shared")
    root = client(broker, "root", "root-shared")
    try:
        assert admin.subscribe("$share/audit/#", qos=1) == [1]
        assert auditor.subscribe("$share/audit/#", qos=1) == [1]
        for i in range(4):  # in turn, but admin may not read secret/...
            root.publish("secret/log", str(i).encode(), qos=1)
        got = [auditor.recv(timeout=WAIT).payload for _ in range(4)]
        assert got == [b"0", b"1", b"2", b"3"]
    finally:
        for c in (admin, auditor, root):
            c.disconnect()


def test_will_obeys_the_write_rules(broker: BrokerThread) -> None:
    admin = client(broker, "admin", "admin-wills")
    try:
        admin.subscribe("wills/#", qos=1)
        denied = Raw(broker.port, "will-no", 5, will=Will("wills/no/x", b"denied", 1))
        denied.close()
        _wait_sessions(broker, "will-no")  # its Will is decided by now
        allowed = Raw(broker.port, "will-ok", 5, will=Will("wills/ok/x", b"allowed", 1))
        allowed.close()
        m = admin.recv(timeout=WAIT)
        assert (m.topic, m.payload) == ("wills/ok/x", b"allowed")
    finally:
        admin.disconnect()


def _wait_sessions(b: BrokerThread, gone: str) -> None:
    deadline = time.monotonic() + WAIT
    while b.call(b.broker.sessions.get, gone) is not None:
        assert time.monotonic() < deadline, f"session {gone!r} did not end"
        time.sleep(0.01)


# -- enforcement, MQTT 3.1.1 with paho ---------------------------------------------------


class Paho:
    """A paho 3.1.1 client with its loop running: SUBACK codes, acked mids, messages."""

    def __init__(self, port: int, user: str, client_id: str) -> None:
        self.c = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311
        )
        self.c.username_pw_set(user)
        self.messages: queue.Queue[Any] = queue.Queue()
        self.acked: queue.Queue[int] = queue.Queue()
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self.up = threading.Event()
        self.c.on_connect = lambda *a: self.up.set()
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_publish = lambda c, u, mid, *a: self.acked.put(mid)
        self.c.on_subscribe = lambda c, u, mid, codes, *a: self.subacks.put(
            [rc.value for rc in codes]
        )
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        assert self.up.wait(WAIT), "no CONNACK"

    def subscribe(self, *filters: str) -> list[int]:
        self.c.subscribe([(f, 1) for f in filters])
        return self.subacks.get(timeout=WAIT)

    def publish(self, topic: str, payload: bytes) -> None:
        mid = self.c.publish(topic, payload, qos=1).mid
        assert self.acked.get(timeout=WAIT) == mid

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_paho_v311(broker: BrokerThread) -> None:
    alice = Paho(broker.port, "alice", "alice-paho")
    bob = Paho(broker.port, "bob", "bob-paho")
    try:
        assert alice.subscribe("tenants/bob/#", "tenants/alice/#") == [V3_FAILURE, 1]
        assert bob.subscribe("tenants/bob/#") == [1]
        # 3.1.1 has no reason code: a denied QoS 1 PUBLISH is acknowledged and dropped,
        # and the connection stays up.
        bob.publish("tenants/alice/inbox", b"sneaky")
        bob.publish("tenants/bob/inbox", b"own")
        alice.publish("tenants/alice/inbox", b"hers")
        assert alice.messages.get(timeout=WAIT).payload == b"hers"
        assert bob.messages.get(timeout=WAIT).payload == b"own"
        assert bob.c.is_connected()
    finally:
        alice.close()
        bob.close()


# -- a session that changes hands, an ACL that changes ------------------------------------


def _drain_to_marker(c: Raw, marker: str) -> list[str]:
    """Topics ``c`` receives up to its own message on ``marker`` (it may read it)."""
    c.publish(marker, b"", 1)
    topics: list[str] = []
    while True:
        (m,) = c.messages(1)
        if m.topic == marker:
            return topics
        topics.append(m.topic)


def test_another_user_resuming_a_session_gets_none_of_its_unreadable_messages(
    broker: BrokerThread,
) -> None:
    expiry = {"session_expiry_interval": 300}
    alice = Raw(broker.port, "handed-over", 5, clean_start=False, properties=expiry,
                auto_flush=False, username="alice")  # fmt: skip
    alice.subscribe(Subscription("tenants/alice/#", 1))
    pub = Raw(broker.port, "alice-pub", 5, username="alice")
    pub.publish("tenants/alice/in-flight", b"1", 1)
    (m,) = alice.messages(1)  # received, never acknowledged: in flight
    assert m.topic == "tenants/alice/in-flight"
    alice.close()
    pub.publish("tenants/alice/queued", b"2", 1)  # queued for the offline session
    # bob takes the client id: he may not read tenants/alice/#.
    bob = Raw(broker.port, "handed-over", 5, clean_start=False, properties=expiry,
              username="bob")  # fmt: skip
    assert bob.connack.session_present
    bob.subscribe(Subscription("clients/handed-over/#", 1))
    assert _drain_to_marker(bob, "clients/handed-over/marker") == []
    # alice back on it: what bob could not read was dropped, not kept for her.
    bob.close()
    alice = Raw(broker.port, "handed-over", 5, clean_start=False, properties=expiry,
                username="alice")  # fmt: skip
    alice.subscribe(Subscription("tenants/alice/marker", 1))
    assert _drain_to_marker(alice, "tenants/alice/marker") == []
    alice.close()
    pub.close()


def test_a_reloaded_acl_applies_to_what_is_already_queued(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    expiry = {"session_expiry_interval": 300}
    for b in running(acl_file=str(acl)):
        sub = Raw(b.port, "subscriber", 5, clean_start=False, properties=expiry,
                  username="alice")  # fmt: skip
        sub.subscribe(Subscription("tenants/alice/#", 1))
        sub.close()
        pub = Raw(b.port, "p", 5, username="alice")
        pub.publish("tenants/alice/before", b"x", 1)
        acl.write_text(ACL.replace("topic readwrite tenants/%u/#", "topic write tenants/%u/#"))
        assert b.call(b.broker.reload) is True
        sub = Raw(b.port, "subscriber", 5, clean_start=False, properties=expiry,
                  username="alice")  # fmt: skip
        sub.subscribe(Subscription("clients/subscriber/#", 1))
        assert _drain_to_marker(sub, "clients/subscriber/m") == []
        assert b.call(b.broker.stats)["dropped"] == 1
        sub.close()
        pub.close()
