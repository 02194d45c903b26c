"""Plug-in hooks (``hooks.py``): authenticate, authorize_publish, authorize_subscribe,
on_connect, on_disconnect, on_message, start and stop, plain and ``async``, over real
sockets with our clients and paho-mqtt (3.1.1 and 5.0) as peers; the hook timeout;
plug-ins named in the TOML file. The broker runs in a thread: the hooks run there, so
the tests wait for them with threading events, never with sleeps."""

from __future__ import annotations

import asyncio
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_broker import WAIT, Raw, running
from test_broker_auth import paho_connect, password_file

from fieldline.broker import BrokerConfig, BrokerThread, ConfigError
from fieldline.broker.configfile import config_from_dict, load_config
from fieldline.broker.hooks import Plugins
from fieldline.broker.server import MAX_HOOK_HOPS
from fieldline.mqtt import Client, ConnectionRefused, PubAck, SubAck, Subscription, Will

OK, UNSPECIFIED, BAD_CREDENTIALS, NOT_AUTHORIZED, SERVER_UNAVAILABLE = 0, 0x80, 0x86, 0x87, 0x88
BANNED, QUOTA_EXCEEDED = 0x8A, 0x97


def connect(port: int, version: int, username: str | None, password: str | None = None) -> int:
    """Connect our client; returns 0 or the refusal's reason code (5.0 numbering: a
    3.1.1 return code comes back as its 5.0 equivalent)."""
    pw = None if password is None else password.encode()
    c = Client("127.0.0.1", port, version=version, username=username, password=pw)
    try:
        c.connect(timeout=WAIT)
    except ConnectionRefused as e:
        return int(e.reason_code)
    c.disconnect()
    return OK


class Calls:
    """What hooks were called with, in order; ``wait(n)`` until ``n`` calls of a hook."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._changed = threading.Condition()

    def add(self, name: str, *args: Any) -> None:
        with self._changed:
            self.calls.append((name, args))
            self._changed.notify_all()

    def of(self, name: str) -> list[tuple[Any, ...]]:
        with self._changed:
            return [args for n, args in self.calls if n == name]

    def wait(self, name: str, n: int = 1) -> list[tuple[Any, ...]]:
        with self._changed:
            ok = self._changed.wait_for(lambda: len(self.of(name)) >= n, WAIT)
        assert ok, f"{name} called {len(self.of(name))} times, expected {n}: {self.calls}"
        return self.of(name)


# -- the plug-ins the tests use: each decision hook in a plain and an async flavour -------

AUTH_ANSWERS: dict[str, Any] = {
    "yes": True,
    "no": False,
    "banned": BANNED,
    "zero": 0,
    "odd": "yes please",  # not a verdict: refused with 0x88
    "bad-code": 0x42,  # no CONNACK refusal code: refused with 0x88
}


class SyncGate:
    """Decides on user names in AUTH_ANSWERS, topics under deny/ and quota/ and
    filters starting with secret or quota; no opinion on anything else."""

    def __init__(self) -> None:
        self.calls = Calls()

    def authenticate(
        self, client_id: str, username: str | None, password: bytes | None, peer: str
    ) -> Any:
        self.calls.add("authenticate", client_id, username, password, peer)
        return AUTH_ANSWERS.get(username or "")

    def authorize_publish(
        self, client_id: str, username: str | None, topic: str, qos: int, retain: bool
    ) -> bool | int | None:
        self.calls.add("authorize_publish", client_id, username, topic, qos, retain)
        if topic.startswith("deny/"):
            return False
        if topic.startswith("quota/"):
            return QUOTA_EXCEEDED
        return None

    def authorize_subscribe(
        self, client_id: str, username: str | None, topic_filter: str, qos: int
    ) -> bool | int | None:
        self.calls.add("authorize_subscribe", client_id, username, topic_filter, qos)
        if topic_filter.startswith("secret"):
            return False
        if topic_filter.startswith("quota"):
            return QUOTA_EXCEEDED
        return None


class AsyncGate(SyncGate):
    """SyncGate's answers, given after a pause on the broker's loop."""

    async def authenticate(  # type: ignore[override]
        self, client_id: str, username: str | None, password: bytes | None, peer: str
    ) -> Any:
        await asyncio.sleep(0.01)
        return super().authenticate(client_id, username, password, peer)

    async def authorize_publish(  # type: ignore[override]
        self, client_id: str, username: str | None, topic: str, qos: int, retain: bool
    ) -> bool | int | None:
        await asyncio.sleep(0.01)
        return super().authorize_publish(client_id, username, topic, qos, retain)

    async def authorize_subscribe(  # type: ignore[override]
        self, client_id: str, username: str | None, topic_filter: str, qos: int
    ) -> bool | int | None:
        await asyncio.sleep(0.01)
        return super().authorize_subscribe(client_id, username, topic_filter, qos)


GATES = [SyncGate, AsyncGate]


@pytest.fixture(scope="module")
def pwfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return password_file(tmp_path_factory.mktemp("hooks") / "passwd", alice="s3cret")


@pytest.fixture(scope="module", params=GATES, ids=["sync", "async"])
def gated(request: pytest.FixtureRequest, pwfile: Path) -> Iterator[tuple[BrokerThread, Any]]:
    """A broker with a password file (alice), anonymous access allowed, and one gate
    plug-in, plain or async."""
    gate = request.param()
    for broker in running(password_file=str(pwfile), allow_anonymous=True, plugins=[gate]):
        yield broker, gate


# -- authenticate --------------------------------------------------------------------------

AUTH_CASES = [
    ("yes", None, OK, OK),  # accepted by the plug-in: the password file is not asked
    ("zero", None, OK, OK),  # 0 accepts too
    ("no", "s3cret", BAD_CREDENTIALS, BAD_CREDENTIALS),  # False: 0x86; 3.1.1: 4
    ("banned", None, BANNED, NOT_AUTHORIZED),  # its own code; 3.1.1 has none: 5
    ("odd", None, SERVER_UNAVAILABLE, SERVER_UNAVAILABLE),  # no verdict: 0x88; 3.1.1: 3
    ("bad-code", None, SERVER_UNAVAILABLE, SERVER_UNAVAILABLE),
    ("alice", "s3cret", OK, OK),  # no opinion: the password file decides...
    ("alice", "wrong", BAD_CREDENTIALS, BAD_CREDENTIALS),
    (None, None, OK, OK),  # ...and the anonymous rule (allowed here)
]


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize(("username", "password", "v5", "v311"), AUTH_CASES)
def test_authenticate(
    gated: tuple[BrokerThread, Any],
    version: int,
    username: str | None,
    password: str | None,
    v5: int,
    v311: int,
) -> None:
    broker, _ = gated
    assert connect(broker.port, version, username, password) == (v5 if version == 5 else v311)


@pytest.mark.parametrize("gate", GATES)
def test_no_opinion_falls_through_to_anonymous_refused(pwfile: Path, gate: type[SyncGate]) -> None:
    for broker in running(password_file=str(pwfile), plugins=[gate()]):
        assert connect(broker.port, 5, None) == NOT_AUTHORIZED
        assert connect(broker.port, 4, None) == NOT_AUTHORIZED  # 3.1.1: 5
        assert connect(broker.port, 5, "yes") == OK  # no password needed: the plug-in says


@pytest.mark.parametrize("version", [4, 5])
def test_authenticate_with_paho(gated: tuple[BrokerThread, Any], version: int) -> None:
    broker, _ = gated
    assert paho_connect(broker.port, version, "yes", "anything") == OK
    assert paho_connect(broker.port, version, "no", "anything") == BAD_CREDENTIALS
    assert paho_connect(broker.port, version, "alice", "s3cret") == OK


def test_authenticate_gets_the_connect(gated: tuple[BrokerThread, Any]) -> None:
    broker, gate = gated
    c = Client("127.0.0.1", broker.port, client_id="dev-7", username="yes", password=b"key")
    c.connect(timeout=WAIT)
    c.disconnect()
    client_id, username, password, peer = gate.calls.of("authenticate")[-1]
    assert (client_id, username, password) == ("dev-7", "yes", b"key")
    assert peer.startswith("127.0.0.1:") and int(peer.rsplit(":", 1)[1]) > 0


def test_a_refused_client_gets_no_session_and_no_on_connect() -> None:
    calls = Calls()

    class Refuse:
        def authenticate(self, *args: Any) -> bool:
            return False

        def on_connect(self, *args: Any) -> None:
            calls.add("on_connect", *args)

    for broker in running(plugins=[Refuse()]):  # no password file: only the plug-in refuses
        assert connect(broker.port, 5, None) == BAD_CREDENTIALS
        assert broker.call(broker.broker.stats)["sessions"] == 0
    assert calls.of("on_connect") == []


def test_plugins_are_asked_in_order_until_one_has_an_opinion() -> None:
    asked: list[str] = []

    class NoOpinion:
        def authenticate(self, *args: Any) -> None:
            asked.append("first")

    class AsyncYes:
        async def authenticate(self, *args: Any) -> bool:
            asked.append("second")
            return True

    class NeverAsked:
        def authenticate(self, *args: Any) -> bool:
            asked.append("third")
            return False

    for broker in running(plugins=[NoOpinion(), AsyncYes(), NeverAsked()]):
        assert connect(broker.port, 5, "anyone") == OK
    assert asked == ["first", "second"]


def test_plugins_chain_without_a_broker() -> None:
    """Plugins.decide: plain hooks answer at once; once one is async the rest are asked
    in a coroutine, plain or async; the first opinion wins."""

    class NoneSync:
        def authenticate(self, *args: Any) -> None:
            return None

    class NoneAsync:
        async def authenticate(self, *args: Any) -> None:
            return None

    class No:
        def authenticate(self, *args: Any) -> bool:
            return False

    class Code:
        async def authenticate(self, *args: Any) -> int:
            return BANNED

    args = ("c", "u", b"p", "127.0.0.1:1")
    assert Plugins().authenticate(*args) is None
    assert Plugins([NoneSync()]).authenticate(*args) is None
    assert Plugins([NoneSync(), No(), Code()]).authenticate(*args) == BAD_CREDENTIALS

    async def decide(*plugins: object) -> Any:
        pending = Plugins(plugins).authenticate(*args)
        assert asyncio.iscoroutine(pending)
        return await pending

    assert asyncio.run(decide(NoneAsync(), NoneSync())) is None
    assert asyncio.run(decide(NoneAsync(), No(), Code())) == BAD_CREDENTIALS
    assert asyncio.run(decide(NoneSync(), NoneAsync(), Code(), No())) == BANNED


# -- authorize_publish and authorize_subscribe ---------------------------------------------


def test_authorize_publish_v5(gated: tuple[BrokerThread, Any]) -> None:
    broker, gate = gated
    sub = Raw(broker.port, "pub-sub")
    assert sub.subscribe(Subscription("#", 1)).reason_codes == [1]
    pub = Raw(broker.port, "pub-5")
    for qos in (1, 2):
        refused = pub.publish("deny/x", b"no", qos)
        assert refused.reason_code == NOT_AUTHORIZED  # in PUBACK, or in PUBREC for QoS 2
        assert pub.publish("quota/x", b"no", qos).reason_code == QUOTA_EXCEEDED
    pub.publish("deny/x", b"no", 0)
    ack = pub.publish("fine/x", b"yes", 1)
    assert isinstance(ack, PubAck) and ack.reason_code == 0
    assert [m.topic for m in sub.messages(1)] == ["fine/x"]  # none of the refused ones
    assert sub.quiet()
    assert ("pub-5", None, "deny/x", 2, False) in gate.calls.of("authorize_publish")
    for c in (sub, pub):
        c.close()


def test_authorize_publish_v311_acks_and_drops(gated: tuple[BrokerThread, Any]) -> None:
    broker, _ = gated
    sub = Raw(broker.port, "pub-sub4")
    assert sub.subscribe(Subscription("#", 1)).reason_codes == [1]
    pub = Raw(broker.port, "pub-4", version=4)
    # 3.1.1 has no code: a plain ack (MQTT-3.3.5-2), the message dropped, the
    # connection kept.
    assert isinstance(pub.publish("deny/x", b"no", 1), PubAck)
    assert isinstance(pub.publish("quota/x", b"no", 1), PubAck)
    assert isinstance(pub.publish("fine/x", b"yes", 1), PubAck)
    assert [m.topic for m in sub.messages(1)] == ["fine/x"]
    assert sub.quiet()
    for c in (sub, pub):
        c.close()


def test_a_refused_retained_message_is_not_kept(gated: tuple[BrokerThread, Any]) -> None:
    broker, _ = gated
    pub = Raw(broker.port, "retainer")
    assert pub.publish("deny/kept", b"no", 1, retain=True).reason_code == NOT_AUTHORIZED
    sub = Raw(broker.port, "late")
    assert sub.subscribe(Subscription("deny/#", 1)).reason_codes == [1]
    assert sub.quiet()
    for c in (sub, pub):
        c.close()


@pytest.mark.parametrize(("version", "codes"), [(5, [1, 0x87, 0x97, 0]), (4, [1, 0x80, 0x80, 0])])
def test_authorize_subscribe_per_filter(
    gated: tuple[BrokerThread, Any], version: int, codes: list[int]
) -> None:
    broker, gate = gated
    c = Raw(broker.port, f"subs-{version}", version=version)
    filters = ["fine/#", "secret/#", "quota/+", "other"]
    subs = [Subscription(f, 1 if i == 0 else 0) for i, f in enumerate(filters)]
    suback = c.subscribe(*subs)
    assert isinstance(suback, SubAck) and suback.reason_codes == codes
    asked = [args for args in gate.calls.of("authorize_subscribe") if args[0] == f"subs-{version}"]
    expected = [(f"subs-{version}", None, s.topic_filter, s.qos) for s in subs]
    assert asked == expected
    # Only the granted filters deliver.
    pub = Raw(broker.port, f"subs-pub-{version}")
    for topic in ("secret/x", "other", "fine/y"):
        pub.publish(topic, b"m", 1)
    assert [m.topic for m in c.messages(2)] == ["other", "fine/y"]
    assert c.quiet()
    for x in (c, pub):
        x.close()


def test_plugins_and_the_acl_file_must_both_allow(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic read #\ntopic write ok/#\n")

    class AllowAllButOkSecret:
        def authorize_publish(self, client_id: str, username: Any, topic: str, *a: Any) -> bool:
            return topic != "ok/secret"

        def authorize_subscribe(self, client_id: str, username: Any, f: str, qos: int) -> bool:
            return f != "ok/secret"

    for broker in running(acl_file=str(acl), plugins=[AllowAllButOkSecret()]):
        c = Raw(broker.port, "both")
        assert c.subscribe(Subscription("ok/#", 1), Subscription("ok/secret", 1)).reason_codes == [
            1,
            NOT_AUTHORIZED,  # the ACL allows it, the plug-in does not
        ]
        assert c.publish("other/x", b"x", 1).reason_code == NOT_AUTHORIZED  # the ACL does not
        assert c.publish("ok/secret", b"x", 1).reason_code == NOT_AUTHORIZED  # the plug-in
        assert c.publish("ok/fine", b"x", 1).reason_code == 0
        assert [m.topic for m in c.messages(1)] == ["ok/fine"]
        assert c.quiet()
        c.close()


def test_a_slow_authorize_keeps_the_clients_packets_in_order() -> None:
    """While an async authorize_publish runs, that client's later packets wait; other
    clients go on."""
    release = threading.Event()
    started = threading.Event()

    class Slow:
        async def authorize_publish(self, client_id: str, *args: Any) -> None:
            if client_id == "slow":
                started.set()
                while not release.is_set():
                    await asyncio.sleep(0.01)

    for broker in running(plugins=[Slow()]):
        sub = Raw(broker.port, "watcher")
        sub.subscribe(Subscription("#", 1))
        slow = Raw(broker.port, "slow")
        slow.session.publish("slow/1", b"1", 1)
        slow.session.publish("slow/2", b"2", 0)
        slow.flush()
        assert started.wait(WAIT)
        fast = Raw(broker.port, "fast")
        assert fast.publish("fast/1", b"f", 1).reason_code == 0
        assert [m.topic for m in sub.messages(1)] == ["fast/1"]
        release.set()
        assert [m.topic for m in sub.messages(2)] == ["slow/1", "slow/2"]
        for c in (sub, slow, fast):
            c.close()


# -- notifications -------------------------------------------------------------------------


class Notes:
    def __init__(self) -> None:
        self.calls = Calls()

    def on_connect(self, client_id: str, username: str | None, peer: str) -> None:
        self.calls.add("on_connect", client_id, username, peer)

    def on_disconnect(self, client_id: str, reason: int | None) -> None:
        self.calls.add("on_disconnect", client_id, reason)

    def on_message(
        self,
        client_id: str,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: dict[str, Any] | None,
    ) -> None:
        self.calls.add("on_message", client_id, topic, payload, qos, retain, properties)


class AsyncNotes(Notes):
    async def on_connect(self, client_id: str, username: str | None, peer: str) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        super().on_connect(client_id, username, peer)

    async def on_disconnect(self, client_id: str, reason: int | None) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        super().on_disconnect(client_id, reason)

    async def on_message(self, *args: Any) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        super().on_message(*args)


@pytest.mark.parametrize("notes_class", [Notes, AsyncNotes], ids=["sync", "async"])
def test_notifications(notes_class: type[Notes]) -> None:
    notes = notes_class()
    calls = notes.calls
    for broker in running(plugins=[notes]):
        c = Raw(broker.port, "n1", properties={"session_expiry_interval": 60})
        (client_id, username, peer), *_ = calls.wait("on_connect")
        assert (client_id, username) == ("n1", None) and peer.startswith("127.0.0.1:")
        props = {"user_property": [("k", "v")], "content_type": "text/plain"}
        c.publish("n/t", b"payload", 1, retain=True, properties=props)
        assert calls.wait("on_message") == [("n1", "n/t", b"payload", 1, True, props)]
        broker.call(broker.broker.publish, "n/in-process", b"x")  # the broker's own: ""
        assert calls.wait("on_message", 2)[1] == ("", "n/in-process", b"x", 0, False, None)
        c.session.disconnect()
        c.flush()
        assert calls.wait("on_disconnect") == [("n1", 0)]  # the client's DISCONNECT code
        c.close()

        lost = Raw(broker.port, "n2")
        lost.close()  # no DISCONNECT either way: None
        assert calls.wait("on_disconnect", 2)[1] == ("n2", None)

        first = Raw(broker.port, "n3")
        second = Raw(broker.port, "n3")  # takes over: 0x8E Session taken over
        assert calls.wait("on_disconnect", 3)[2] == ("n3", 0x8E)
        assert [args[0] for args in calls.wait("on_connect", 4)] == ["n1", "n2", "n3", "n3"]
        assert first.next().reason_code == 0x8E  # first told with DISCONNECT
        first.close()
    # The broker's stop ends the last connection (0x8B Server shutting down), and waits
    # for the notification.
    assert calls.of("on_disconnect")[-1] == ("n3", 0x8B)
    second.close()


class Relay:
    """A plug-in that republishes: ``in/X`` goes on as ``out/X`` (a bridge, say), and
    ``loop/X`` as ``loop/X`` again with a ``+`` added (a bug: it hears itself)."""

    def start(self, broker: Any) -> None:
        self.broker = broker

    def on_message(self, client_id: str, topic: str, payload: bytes, qos: int, *a: Any) -> None:
        if topic.startswith("in/"):
            self.broker.publish("out/" + topic[3:], payload, qos, properties={"user_property":
                                [("relayed-from", topic)]})  # fmt: skip
        elif topic.startswith("loop/"):
            self.broker.publish(topic, payload + b"+", qos)


class AsyncRelay(Relay):
    async def on_message(self, *args: Any) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        super().on_message(*args)


@pytest.mark.parametrize("relay_class", [Relay, AsyncRelay], ids=["sync", "async"])
def test_a_plugin_publishing_from_on_message(relay_class: type[Relay]) -> None:
    # broker.publish() from on_message is routed after the message notified, not
    # inside it: a loop of republishes neither recurses (RecursionError) nor runs on
    # forever, but stops after MAX_HOOK_HOPS republishes (plain and async hooks).
    for broker in running(plugins=[relay_class()]):
        sub = Raw(broker.port, "sub")
        sub.subscribe(Subscription("in/#", 1), Subscription("out/#", 1), "loop/#")
        pub = Raw(broker.port, "pub")
        assert pub.publish("in/a", b"1", 1).reason_code == OK
        got = sub.messages(2)
        assert [(m.topic, m.payload, m.qos) for m in got] == [("in/a", b"1", 1), ("out/a", b"1", 1)]
        assert got[1].properties == {"user_property": [("relayed-from", "in/a")]}
        pub.publish("loop/x", b"x", 0)
        got = sub.messages(1 + MAX_HOOK_HOPS)
        assert [m.payload for m in got] == [b"x" + b"+" * i for i in range(1 + MAX_HOOK_HOPS)]
        assert sub.quiet()  # the chain was cut
        assert broker.call(broker.broker.stats)["plugin_errors"] == {}
        assert pub.publish("in/b", b"2", 1).reason_code == OK  # all still works
        assert [m.topic for m in sub.messages(2)] == ["in/b", "out/b"]
        sub.close()
        pub.close()


def test_a_will_is_a_message_too() -> None:
    notes = Notes()
    for broker in running(plugins=[notes]):
        c = Raw(broker.port, "willing", will=Will("wills/willing", b"gone", 1))
        c.close()
        (sender, topic, payload, qos, retain, _), *_ = notes.calls.wait("on_message")
        assert (sender, topic, payload, qos, retain) == (
            "willing",
            "wills/willing",
            b"gone",
            1,
            False,
        )


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_will_asks_authorize_publish_too(asynchronous: bool) -> None:
    class NoSecure:
        def authorize_publish(self, client_id: str, user: Any, topic: str, *a: Any) -> Any:
            verdict = False if topic.startswith("secure/") else None
            if not asynchronous:
                return verdict

            async def later() -> Any:
                return verdict

            return later()

    for broker in running(plugins=[NoSecure()]):
        watcher = Raw(broker.port, "watcher")
        watcher.subscribe(Subscription("#", 1))
        for topic in ("secure/cmd", "open/cmd"):
            c = Raw(broker.port, f"dies-{topic}", will=Will(topic, b"OPEN", 1, retain=True))
            c.close()  # no DISCONNECT: the Will is due
        (m,) = watcher.messages(1)
        assert m.topic == "open/cmd"  # secure/cmd's came first, and was refused
        assert broker.call(broker.broker.router.retained.copy).keys() == {"open/cmd"}
        assert broker.call(broker.broker.stats)["denied"] == 1
        watcher.close()


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_on_reload_is_called_after_a_reload(asynchronous: bool) -> None:
    class Keys:
        def __init__(self) -> None:
            self.reloads = threading.Event()

        def on_reload(self) -> Any:
            if not asynchronous:
                self.reloads.set()
                return None

            async def later() -> None:
                self.reloads.set()

            return later()

    keys = Keys()
    for broker in running(plugins=[keys]):
        assert broker.call(broker.broker.reload) is True
        assert keys.reloads.wait(WAIT)


# -- errors and timeouts -------------------------------------------------------------------


class Boom:
    def authenticate(self, client_id: str, username: str | None, *args: Any) -> None:
        if username == "boom":
            raise RuntimeError("authenticate broke")

    def authorize_publish(self, client_id: str, username: Any, topic: str, *a: Any) -> None:
        if topic == "boom":
            raise RuntimeError("authorize_publish broke")

    async def authorize_subscribe(self, client_id: str, username: Any, f: str, qos: int) -> None:
        if f == "boom":
            raise RuntimeError("authorize_subscribe broke")

    def on_connect(self, *args: Any) -> None:
        raise RuntimeError("on_connect broke")

    async def on_message(self, *args: Any) -> None:
        raise RuntimeError("on_message broke")

    def on_disconnect(self, *args: Any) -> None:
        raise RuntimeError("on_disconnect broke")


def test_a_hook_that_raises_is_logged_and_the_client_keeps_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notes = Notes()
    with caplog.at_level("INFO", logger="fieldline.broker"):
        for broker in running(plugins=[Boom(), notes]):
            # Decisions fail closed: authenticate 0x88 (3.1.1: 3), the others 0x80.
            assert connect(broker.port, 5, "boom") == SERVER_UNAVAILABLE
            assert connect(broker.port, 4, "boom") == SERVER_UNAVAILABLE
            c = Raw(broker.port, "survivor")  # on_connect raised: connected all the same
            notes.calls.wait("on_connect")  # and the next plug-in was told
            assert c.subscribe(Subscription("boom", 1), Subscription("b/#", 1)).reason_codes == [
                UNSPECIFIED,
                1,
            ]
            assert c.publish("boom", b"x", 1).reason_code == UNSPECIFIED
            assert c.publish("b/ok", b"x", 1).reason_code == 0  # on_message raises, later
            assert [m.topic for m in c.messages(1)] == ["b/ok"]
            notes.calls.wait("on_message")
            c.close()
            notes.calls.wait("on_disconnect")
            assert connect(broker.port, 5, "fine") == OK  # the broker is fine too
            errors = broker.call(broker.broker.stats)["plugin_errors"]
            # on_connect and on_disconnect raise for "fine" too; counted once each so far.
            assert errors["Boom.authenticate"] == 2
            assert errors["Boom.authorize_publish"] == errors["Boom.authorize_subscribe"] == 1
            assert errors["Boom.on_connect"] >= 2 and errors["Boom.on_message"] == 1
            assert "Notes.on_connect" not in errors
    text = caplog.text
    for hook in ("authenticate", "authorize_publish", "authorize_subscribe", "on_connect"):
        assert f"plug-in Boom.{hook} raised" in text
        assert f"{hook} broke" in text  # with the traceback
    assert "plug-in Boom.on_message raised" in text
    assert "plug-in Boom.on_disconnect raised" in text


def test_a_hanging_authenticate_is_refused_0x88_after_hook_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = threading.Event()

    class Hang:
        async def authenticate(self, client_id: str, username: str | None, *a: Any) -> None:
            if username == "hang":
                started.set()
                await asyncio.Event().wait()  # forever

    timeout = 1.0
    with caplog.at_level("WARNING", logger="fieldline.broker"):
        for broker in running(plugins=[Hang()], hook_timeout=timeout):
            for version in (5, 4):
                started.clear()
                result: list[int] = []
                t0 = time.monotonic()
                hung = threading.Thread(
                    target=lambda port, v, out: out.append(connect(port, v, "hang")),
                    args=(broker.port, version, result),
                )
                hung.start()
                assert started.wait(WAIT)
                # Meanwhile, another client connects at once.
                assert connect(broker.port, version, "other") == OK
                assert not result, "the hanging one was answered before the other"
                hung.join(WAIT)
                assert result == [SERVER_UNAVAILABLE]  # 3.1.1: return code 3, the same
                assert time.monotonic() - t0 >= timeout
            stats = broker.call(broker.broker.stats)
            assert stats["plugin_timeouts"] == {"Hang.authenticate": 2}
            assert stats["plugin_errors"] == {}
    assert "plug-in Hang.authenticate took over 1s: refused" in caplog.text
    assert "user 'hang': refused, server unavailable" in caplog.text


def test_a_hanging_notification_is_cancelled_and_stop_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Sleepy:
        async def on_disconnect(self, *args: Any) -> None:
            await asyncio.Event().wait()

    with caplog.at_level("WARNING", logger="fieldline.broker"):
        for broker in running(plugins=[Sleepy()], hook_timeout=0.2):
            c = Raw(broker.port, "zz")
        # stop() ended the connection and waited for its on_disconnect, no longer than
        # hook_timeout.
        c.close()
    assert "plug-in Sleepy.on_disconnect took over 0.2s: cancelled" in caplog.text


# -- configuration -------------------------------------------------------------------------

PLUGIN_MODULE = '''
class KeyAuth:
    """Accepts a client whose password is one of ``keys``; refuses every other."""

    instances = []

    def __init__(self, keys=(), refusal=False):
        self.keys = {k.encode() for k in keys}
        self.refusal = refusal
        KeyAuth.instances.append(self)

    def authenticate(self, client_id, username, password, peer):
        return True if password in self.keys else self.refusal


class Broken:
    def __init__(self):
        raise ValueError("no licence")
'''


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"hookplug_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(PLUGIN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_plugin_from_the_toml_file(tmp_path: Path, plugin_module: str) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            hook_timeout = 2.5
            plugins = ["{plugin_module}:KeyAuth"]

            [plugin.KeyAuth]
            keys = ["k-1", "k-2"]
            refusal = 0x8A
            """
        )
    )
    cfg = load_config(path)
    assert (cfg.plugins, cfg.plugin, cfg.hook_timeout) == (
        [f"{plugin_module}:KeyAuth"],
        {"KeyAuth": {"keys": ["k-1", "k-2"], "refusal": 0x8A}},
        2.5,
    )
    for broker in running(config=cfg):
        for version in (5, 4):
            assert connect(broker.port, version, "device", "k-2") == OK
            assert connect(broker.port, version, "device", "k-3") == (
                BANNED if version == 5 else NOT_AUTHORIZED
            )
        assert broker.broker.auth_summary() == "no password file, plug-ins KeyAuth"


def test_plugin_without_a_table_gets_no_arguments(plugin_module: str) -> None:
    cfg = config_from_dict({"plugins": [f"{plugin_module}:KeyAuth"]})
    for broker in running(config=cfg):
        assert connect(broker.port, 5, "device", "anything") == BAD_CREDENTIALS


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"plugins": "a:B"}, "'plugins' must be an array of strings"),
        ({"plugins": ["no_colon"]}, "must be written 'package.module:ClassName'"),
        ({"plugins": ["a:B"], "plugin": {"C": {}}}, r"\[plugin.C\] names no plug-in"),
        ({"plugins": ["a:B"], "plugin": {"B": 1}}, "write \\[plugin.ClassName\\]"),
        ({"hook_timeout": 0}, "hook_timeout must be more than 0"),
        ({"hook_timout": 1}, "did you mean 'hook_timeout'"),
    ],
)
def test_plugin_config_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data, "broker.toml")


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("no_such_module_here:X", {}, "cannot import no_such_module_here"),
        ("{m}:Missing", {}, "has no 'Missing'"),
        ("{m}:Broken", {}, "Broken\\(...\\) raised ValueError\\('no licence'\\)"),
        ("{m}:KeyAuth", {"KeyAuth": {"bogus": 1}}, "unexpected keyword argument 'bogus'"),
    ],
)
def test_a_plugin_that_cannot_be_loaded_stops_the_start(
    plugin_module: str, spec: str, options: dict[str, Any], message: str
) -> None:
    cfg = BrokerConfig(plugins=[spec.format(m=plugin_module)], plugin=options)
    with pytest.raises(ConfigError, match=message):
        BrokerThread(config=cfg).start()


def test_plugin_objects_and_keyword() -> None:
    """``Broker(config=..., plugins=[...])`` (and BrokerThread) take objects directly;
    a class without hooks is fine, and an object is never instantiated again."""

    class Nothing:
        pass

    gate = SyncGate()
    for broker in running(config=BrokerConfig(), plugins=[Nothing(), gate]):
        assert broker.broker.plugins.plugins[1] is gate
        assert connect(broker.port, 5, "no") == BAD_CREDENTIALS
    assert not Plugins([Nothing()]).has("authenticate")


# -- start and stop ------------------------------------------------------------------------


class Hub:
    """What the hub's plug-in will do: open its database in ``start``, publish from it
    (retained), authenticate against it, and close it in ``stop``."""

    def __init__(self, log: list[str], name: str = "hub") -> None:
        self.log = log
        self.name = name
        self.db: dict[str, str] | None = None
        self.broker: Any = None

    async def start(self, broker: Any) -> None:
        await asyncio.sleep(0)  # opening a database, say
        self.db = {"sensor-1": "k-1"}
        self.broker = broker
        assert broker.listening  # the ports are not open yet, but known
        broker.publish(f"{self.name}/status", b"up", 1, True)
        self.log.append(f"start {self.name}")

    async def authenticate(
        self, client_id: str, username: str | None, password: bytes | None, peer: str
    ) -> bool | None:
        assert self.db is not None, "authenticate before start"
        if username not in self.db:
            return None
        return password == self.db[username].encode()

    async def stop(self) -> None:
        self.broker.publish(f"{self.name}/status", b"down", 1, True)  # still possible
        self.db = None
        self.log.append(f"stop {self.name}")


class PlainLifecycle:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def start(self, broker: Any) -> None:
        self.log.append("start plain")

    def stop(self) -> None:
        self.log.append("stop plain")


def test_start_and_stop(tmp_path: Path) -> None:
    log: list[str] = []
    hub = Hub(log)
    db = str(tmp_path / "broker.db")
    for broker in running(plugins=[hub, PlainLifecycle(log)], persistence=db, durability="full"):
        assert log == ["start hub", "start plain"]  # in order, before start() returned
        with Client(broker.host, broker.port, username="sensor-1", password=b"k-1") as c:
            c.subscribe("hub/status", qos=1)
            assert c.recv(timeout=WAIT).payload == b"up"  # published from start()
        assert connect(broker.port, 5, "sensor-1", "wrong") == BAD_CREDENTIALS
    assert log == ["start hub", "start plain", "stop plain", "stop hub"]  # reverse order
    # What stop() published is in the persistence file, closed after it.
    for broker in running(persistence=db):
        with Client(broker.host, broker.port) as c:
            c.subscribe("hub/status", qos=1)
            assert c.recv(timeout=WAIT).payload == b"down"


def test_a_start_that_fails_stops_the_start(caplog: pytest.LogCaptureFixture) -> None:
    log: list[str] = []

    class NoDatabase:
        async def start(self, broker: Any) -> None:
            raise OSError("connection refused")

        def stop(self) -> None:
            log.append("stop NoDatabase")  # never: it did not start

    class Hangs:
        async def start(self, broker: Any) -> None:
            await asyncio.Event().wait()

    first = Hub(log, "first")
    b = BrokerThread("127.0.0.1", 0, plugins=[first, NoDatabase(), Hub(log, "never")])
    with pytest.raises(ConfigError, match=r"plug-in NoDatabase: start\(\) raised OSError"):
        b.start()
    assert log == ["start first", "stop first"]  # the one started before is stopped again
    b.stop()
    b = BrokerThread("127.0.0.1", 0, plugins=[Hangs()], hook_timeout=0.2)
    with pytest.raises(ConfigError, match=r"plug-in Hangs: start\(\) took over 0.2s"):
        b.start()
    b.stop()

    class BadStop:
        def stop(self) -> None:
            raise RuntimeError("cannot close")

    class SlowStop:
        async def stop(self) -> None:
            await asyncio.Event().wait()

    log.clear()
    with caplog.at_level("WARNING", logger="fieldline.broker"):
        for _ in running(plugins=[Hub(log), BadStop(), SlowStop()], hook_timeout=0.2):
            pass
    assert log == ["start hub", "stop hub"]  # the others' errors stop no one
    assert "plug-in SlowStop.stop took over 0.2s: cancelled" in caplog.text
    assert "plug-in BadStop.stop raised" in caplog.text
