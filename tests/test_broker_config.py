"""The broker's configuration: the TOML file (every key checked, errors naming the key
and the file), the command-line flags over it, and ``fieldline broker --config FILE``
run as a subprocess with every kind of listener, stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_broker import WAIT, Raw
from tlsfiles import TlsFiles

from fieldline.broker import Broker, BrokerConfig, ConfigError, Listener
from fieldline.broker.configfile import apply_flags, config_from_dict, load_config
from fieldline.mqtt import Client, Subscription

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broker.toml"
    path.write_text(text)
    return path


# -- the file ----------------------------------------------------------------------------


def test_full_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        host = "0.0.0.0"
        max_packet_size = 65536
        queue_policy = "drop_new"
        max_session_expiry = 3600
        connect_timeout = 5          # an integer is a number too

        [[listeners]]
        kind = "mqtt"

        [[listeners]]
        kind = "mqtts"
        host = "127.0.0.1"
        cert = "tls/server.crt"
        key = "/etc/key.pem"
        ca = "tls/ca.crt"
        require_certificate = true

        [[listeners]]
        kind = "ws"
        port = 9001
        path = "*"

        [[listeners]]
        kind = "wss"
        cert = "s.crt"
        key = "s.key"
        """,
    )
    cfg = load_config(path)
    assert (cfg.max_packet_size, cfg.queue_policy, cfg.max_session_expiry) == (
        65536, "drop_new", 3600,
    )  # fmt: skip
    assert cfg.connect_timeout == 5.0 and isinstance(cfg.connect_timeout, float)
    assert cfg.max_keep_alive is None and cfg.receive_maximum == 1024  # defaults
    mqtt, mqtts, ws, wss = cfg.listeners
    assert (mqtt.kind, mqtt.host, mqtt.port) == ("mqtt", "0.0.0.0", 1883)
    assert (mqtts.host, mqtts.port, mqtts.require_certificate) == ("127.0.0.1", 8883, True)
    assert mqtts.cert == str(tmp_path / "tls/server.crt")  # relative to the file
    assert mqtts.key == "/etc/key.pem"
    assert (ws.port, ws.path) == (9001, "*")
    assert (wss.port, wss.path) == (8443, "/mqtt")


def test_empty_file_is_todays_default(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg == BrokerConfig()
    assert [(li.kind, li.host, li.port) for li in cfg.all_listeners()] == [
        ("mqtt", "127.0.0.1", 1883)
    ]
    assert load_config(write(tmp_path, "port = 1884")).all_listeners()[0].port == 1884


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_pakcet_size = 10", "unknown key 'max_pakcet_size'; did you mean 'max_packet_size'?"),
        ("[auth]\nfile = 'x'", "unknown key 'auth'"),
        ("max_inflight = '10'", "'max_inflight' must be an integer, not a string ('10')"),
        ("max_inflight = true", "'max_inflight' must be an integer, not a boolean (True)"),
        ("max_inflight = 1.5", "'max_inflight' must be an integer, not a number (1.5)"),
        ("max_keep_alive = [60]", "'max_keep_alive' must be an integer, not an array ([60])"),
        ("queue_policy = 'drop_all'", "unknown queue_policy 'drop_all'"),
        ("max_inflight = 0", "max_queued_messages and max_inflight must be at least 1"),
        ("[[listeners]]\nport = 1", "[[listeners]] #1: 'kind' is missing"),
        ("[[listeners]]\nkind = 'http'", "[[listeners]] #1: unknown listener kind 'http'"),
        ("[[listeners]]\nkind = 'mqtt'\nprot = 1", "[[listeners]] #1: unknown key 'prot'"),
        ("[[listeners]]\nkind = 'mqtt'\nport = '1883'", "#1: 'port' must be an integer"),
        ("[[listeners]]\nkind = 'mqtt'\nport = 70000", "#1: port 70000 is out of range"),
        ("[[listeners]]\nkind = 'mqtts'", "#1: an mqtts listener needs cert and key"),
        (
            "[[listeners]]\nkind = 'mqtt'\ncert = 'c'",
            "#1: cert, key, ca, crl and require_certificate",
        ),
        ("[[listeners]]\nkind = 'mqtt'\npath = '/'", "#1: 'path' applies to ws and wss"),
        ("[[listeners]]\nkind = 'ws'\npath = 'mqtt'", "#1: path 'mqtt' must start with '/'"),
        (
            "[[listeners]]\nkind = 'wss'\ncert = 'c'\nkey = 'k'\nrequire_certificate = true",
            "#1: require_certificate needs ca",
        ),
        ("[[listeners]]\nkind = 'mqtt'\n[[listeners]]\nkind = 'mqtt'", "two listeners on"),
        ("port = 1\n[[listeners]]\nkind = 'mqtt'", "'port' at the top level"),
        ("listeners = 1", "'listeners' must be tables"),
        ("max_inflight = ", "not valid TOML"),
    ],
)
def test_file_errors_name_the_key_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: ")
    assert message in str(e.value)


def test_the_docs_example_file_is_valid(tmp_path: Path) -> None:
    page = (ROOT / "docs" / "broker.md").read_text()
    text = page.split("```toml\n", 1)[1].split("```", 1)[0]
    cfg = load_config(write(tmp_path, text))
    assert [(li.kind, li.host, li.port) for li in cfg.listeners] == [
        ("mqtt", "0.0.0.0", 1883), ("mqtts", "0.0.0.0", 8883),
        ("ws", "0.0.0.0", 8080), ("wss", "0.0.0.0", 8443),
    ]  # fmt: skip
    # Reachable beyond loopback: without a password file it would refuse every client.
    assert cfg.password_file == str(tmp_path / "passwd")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml: cannot read the configuration file"):
        load_config(tmp_path / "nope.toml")


# -- flags over the file -----------------------------------------------------------------


def test_flags_override_and_add_listeners() -> None:
    base = config_from_dict({"listeners": [{"kind": "mqtt", "port": 1}, {"kind": "ws", "port": 2}]})
    cfg = apply_flags(
        base, host="0.0.0.0", port=11, tls_port=13, cert="c.pem", key="k.pem", ws_path="/x"
    )
    got = [(li.kind, li.host, li.port, li.cert, li.path) for li in cfg.listeners]
    assert got == [
        ("mqtt", "0.0.0.0", 11, None, "/mqtt"),
        ("ws", "0.0.0.0", 2, None, "/x"),
        ("mqtts", "0.0.0.0", 13, "c.pem", "/mqtt"),
    ]
    # No file, no flags: one plain listener, as before; --port alone changes its port.
    assert [li.port for li in apply_flags(BrokerConfig()).all_listeners()] == [1883]
    assert [li.port for li in apply_flags(BrokerConfig(), port=0).all_listeners()] == [0]
    # --wss-port beside the default listener keeps it.
    cfg = apply_flags(
        BrokerConfig(), wss_port=0, cert="c", key="k", ca="ca", require_certificate=True
    )
    assert [(li.kind, li.require_certificate) for li in cfg.listeners] == [
        ("mqtt", False), ("wss", True),
    ]  # fmt: skip


def test_flag_errors() -> None:
    with pytest.raises(ConfigError, match="--cert applies to TLS listeners"):
        apply_flags(BrokerConfig(), cert="c.pem")
    with pytest.raises(ConfigError, match="mqtts listener on port 8883: .*needs cert and key"):
        apply_flags(BrokerConfig(), tls_port=8883)


def test_unusable_tls_file_is_reported_before_listening(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    b = Broker(
        listeners=[Listener("mqtt", port=0), Listener("mqtts", port=0, cert=str(bad), key=str(bad))]
    )
    with pytest.raises(ConfigError, match=f"cannot load cert {bad}"):
        asyncio.run(b.start())
    assert b.listening[0].port == 0  # nothing was bound
    b = Broker(listeners=[Listener("mqtts", port=0, cert="/nope.crt", key="/nope.key")])
    with pytest.raises(ConfigError, match="cannot load cert /nope.crt .*No such file"):
        asyncio.run(b.start())


# -- the command -------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "fieldline", "broker", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip


def test_cli_with_a_toml_file_runs_every_listener(tmp_path: Path, tls_files: TlsFiles) -> None:
    # TLS paths relative to the file; port 0 everywhere, read back from the summary lines.
    (tmp_path / "tls").symlink_to(tls_files.directory)
    path = write(
        tmp_path,
        f"""
        max_inflight = 10
        [[listeners]]
        kind = "mqtt"
        port = 1883                  # --port 0 overrides it
        [[listeners]]
        kind = "mqtts"
        port = 0
        cert = "tls/{tls_files.server_cert.name}"
        key = "tls/{tls_files.server_key.name}"
        [[listeners]]
        kind = "ws"
        port = 0
        [[listeners]]
        kind = "wss"
        port = 0
        cert = "tls/{tls_files.server_cert.name}"
        key = "tls/{tls_files.server_key.name}"
        """,
    )
    proc = run_cli("--config", str(path), "--port", "0")
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(5)]
        urls = [re.search(r" on (\w+)://127\.0\.0\.1:(\d+)", line) for line in lines[:4]]
        ports = {m.group(1): int(m.group(2)) for m in urls if m}
        assert list(ports) == ["mqtt", "mqtts", "ws", "wss"], lines
        assert "(WebSocket; TLS)" in lines[3] and "Ctrl-C" in lines[4]
        ca = str(tls_files.ca_cert)
        with Client("127.0.0.1", ports["mqtt"], client_id="sub", timeout=WAIT) as sub:
            sub.subscribe("cli/#", qos=1)
            for kind, opts in (
                ("mqtts", {"ca_file": ca}),
                ("ws", {"transport": "websockets"}),
                ("wss", {"transport": "websockets", "ca_file": ca}),
            ):
                with Client("localhost", ports[kind], timeout=WAIT, **opts) as p:  # type: ignore[arg-type]
                    p.publish(f"cli/{kind}", b"x", qos=1)
                assert sub.recv(timeout=WAIT).topic == f"cli/{kind}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@contextmanager
def cli_broker(*args: str) -> Iterator[int]:
    """``fieldline broker --port 0 ARGS`` running; yields the port of its mqtt
    listener, then stops it with SIGTERM, which must end it cleanly."""
    proc = run_cli("--port", "0", *args)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        yield int(re.search(r"mqtt://127\.0\.0\.1:(\d+)", line).group(1))  # type: ignore[union-attr]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_limit_flags_are_enforced(tmp_path: Path) -> None:
    # The file says no limits; the flags override it, and the running broker enforces them.
    path = write(tmp_path, "max_connections = 0\nmax_publish_rate = 0\n")
    with cli_broker(
        "--config", str(path), "--max-connections", "1", "--max-publish-rate", "2"
    ) as port:
        first = Raw(port, "first")
        assert first.connack.reason_code == 0
        second = Raw(port, "second")
        assert second.connack.reason_code == 0x97  # Quota exceeded: one connection at most
        second.close()
        # Two PUBLISHes a second, the bucket holding one second's worth: the third is refused.
        codes = [first.publish("lim/x", b"%d" % i, 1).reason_code for i in range(3)]
        assert codes[:2] == [0x10, 0x10] and codes[2] == 0x97, codes
        first.close()


def test_cli_use_username_as_clientid(tmp_path: Path) -> None:
    # With the flag a client's id is its user name: two clients naming the same id
    # under different user names are two sessions, and no user name is refused.
    path = write(tmp_path, "allow_anonymous = true\n")
    with cli_broker("--config", str(path), "--use-username-as-clientid") as port:
        alice = Raw(port, "pump-1", username="alice")
        bob = Raw(port, "pump-1", username="bob")  # not a takeover of alice's session
        assert alice.connack.reason_code == 0 and bob.connack.reason_code == 0
        # Both still connected: each gets its own QoS 1 message back.
        for c, name in ((alice, "alice"), (bob, "bob")):
            c.subscribe(Subscription(f"ids/{name}", 1))
            assert c.publish(f"ids/{name}", b"x", 1).reason_code in (0, 0x10)
            assert [m.topic for m in c.messages(1)] == [f"ids/{name}"]
        nobody = Raw(port, "pump-1")
        assert nobody.connack.reason_code == 0x87  # Not authorized
        for c in (alice, bob, nobody):
            c.close()


def test_cli_limit_flags_must_be_numbers() -> None:
    proc = run_cli("--port", "0", "--max-connections", "many")
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 2 and "--max-connections: invalid int value" in err
    proc = run_cli("--port", "0", "--max-publish-rate", "-1")
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 2 and "max_publish_rate must be 0 (no limit) or more" in err


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        ("max_inflight = 'x'", (), "broker.toml: 'max_inflight' must be an integer"),
        ("[[listeners]]\nkind = 'mqtt'\nbogus = 1", (), "#1: unknown key 'bogus'"),
        ("", ("--cert", "c.pem"), "--cert applies to TLS listeners"),
        ("", ("--tls-port", "0", "--cert", "/nope.crt", "--key", "/nope.key"), "/nope.crt"),
    ],
)
def test_cli_config_errors_exit_2(
    tmp_path: Path, text: str, args: tuple[str, ...], message: str
) -> None:
    proc = run_cli("--config", str(write(tmp_path, text)), "--port", "0", *args)
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 2
    assert err.startswith("fieldline broker: ") and message in err, err
    assert out == ""


@pytest.mark.parametrize("choice", ["auto", "asyncio", "uvloop"])
def test_cli_event_loop(tmp_path: Path, choice: str) -> None:
    # uvloop when installed (auto), or the loop named; the summary line says which.
    try:
        import uvloop  # noqa: F401

        have_uvloop = True
    except ImportError:
        have_uvloop = False
    path = write(tmp_path, "event_loop = 'asyncio'\n")
    args = ["--config", str(path)] if choice == "asyncio" else ["--event-loop", choice]
    proc = run_cli("--port", "0", *args)
    try:
        if choice == "uvloop" and not have_uvloop:
            out, err = proc.communicate(timeout=WAIT)
            assert proc.returncode == 2 and "uvloop, which is not installed" in err
            return
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        port = int(re.search(r"mqtt://127\.0\.0\.1:(\d+)", lines[0]).group(1))  # type: ignore[union-attr]
        expected = "asyncio" if choice == "asyncio" or not have_uvloop else "uvloop"
        assert f", on {expected}; Ctrl-C" in lines[1], lines
        c = Raw(port, "loop")
        assert c.publish("loop/x", b"1", 1).reason_code == 0x10  # works on it
        c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_unknown_event_loop_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown event_loop 'trio'"):
        load_config(write(tmp_path, "event_loop = 'trio'\n"))
