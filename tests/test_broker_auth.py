"""Authentication: the password file (``passwords.py``), the broker's CONNECT check with
our clients and paho-mqtt (3.1.1 and 5.0) as peers, and the ``fieldline passwd`` command
run as a subprocess."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from test_broker import WAIT, running

from fieldline.broker import BrokerConfig, BrokerThread, ConfigError, Listener
from fieldline.broker.configfile import apply_flags, config_from_dict
from fieldline.broker.passwords import Passwords, hash_password, parse_hash, verify_password
from fieldline.mqtt import Client, ConnectionRefused, NotAuthorized

ROOT = Path(__file__).resolve().parent.parent
OK, BAD_CREDENTIALS, NOT_AUTHORIZED = 0, 0x86, 0x87
# Cheap hashes for the fixtures: the tests check the logic, not the cost.
FAST = {"n": 1024, "r": 8, "p": 1}


def password_file(path: Path, **users: str) -> Path:
    Passwords({u: hash_password(pw.encode(), **FAST) for u, pw in users.items()}).save(path)
    return path


@pytest.fixture(scope="module")
def pwfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return password_file(tmp_path_factory.mktemp("auth") / "passwd", alice="s3cret", bob="hunter2")


@pytest.fixture(scope="module")
def broker(pwfile: Path) -> Iterator[BrokerThread]:
    yield from running(password_file=str(pwfile))


@pytest.fixture(scope="module")
def open_broker(pwfile: Path) -> Iterator[BrokerThread]:
    yield from running(password_file=str(pwfile), allow_anonymous=True)


# -- the hash and the file ---------------------------------------------------------------


def test_hash_is_salted_scrypt_with_its_parameters() -> None:
    h1, h2 = hash_password(b"pw"), hash_password(b"pw")
    assert h1 != h2  # a new salt each time
    assert h1.startswith("$scrypt$n=16384,r=8,p=1$")
    n, r, p, salt, digest = parse_hash(h1)
    assert (n, r, p, len(salt), len(digest)) == (16384, 8, 1, 16, 32)
    assert verify_password(b"pw", h1)
    assert not verify_password(b"pW", h1)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("alice", "expected 'username:hash'"),
        (":$scrypt$n=1024,r=8,p=1$AAAA$" + "A" * 24, "expected 'username:hash'"),
        ("alice:plaintext", "the hash must look like"),
        ("alice:$scrypt$n=1000,r=8,p=1$AAAA$" + "A" * 24, "out of range"),
        ("alice:$scrypt$n=1024,r=8$AAAA$" + "A" * 24, "n=..,r=..,p=.."),
        ("alice:$scrypt$n=1024,r=8,p=1$!!!!$" + "A" * 24, "base64"),
    ],
)
def test_malformed_line_is_a_config_error(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "passwd"
    path.write_text(f"# users\n\n{line}\n")
    with pytest.raises(ConfigError, match=message) as e:
        Passwords.load(path)
    assert f"{path}:3:" in str(e.value)  # the file and the line


def test_user_twice_is_a_config_error(tmp_path: Path) -> None:
    path = password_file(tmp_path / "passwd", alice="a")
    path.write_text(path.read_text() * 2)
    with pytest.raises(ConfigError, match=r"passwd:2: user 'alice' appears twice"):
        Passwords.load(path)


def test_broker_will_not_start_with_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text("alice:nope\n")
    with pytest.raises(ConfigError, match=r"passwd:1: user 'alice'"):
        BrokerThread("127.0.0.1", 0, password_file=str(path)).start()
    with pytest.raises(ConfigError, match="does not exist"):
        BrokerThread("127.0.0.1", 0, password_file=str(tmp_path / "missing")).start()


# -- configuration -----------------------------------------------------------------------


def test_config_keys_and_flags(tmp_path: Path) -> None:
    cfg = config_from_dict({"password_file": "passwd"}, "f.toml", tmp_path)
    assert cfg.password_file == str(tmp_path / "passwd")  # relative to the file
    assert not cfg.anonymous  # a password file turns anonymous access off...
    assert BrokerConfig().anonymous  # ...which is on without one (the default)
    cfg = config_from_dict({"password_file": "/p", "allow_anonymous": True})
    assert cfg.anonymous
    with pytest.raises(ConfigError, match="'allow_anonymous' must be true or false"):
        config_from_dict({"allow_anonymous": "yes"})
    with pytest.raises(ConfigError, match="allow_anonymous = false needs a password_file"):
        config_from_dict({"allow_anonymous": False})
    cfg = apply_flags(BrokerConfig(), password_file="/etc/passwd", allow_anonymous=True)
    assert (cfg.password_file, cfg.allow_anonymous) == ("/etc/passwd", True)


# -- the CONNECT check -------------------------------------------------------------------


def connect(port: int, version: int, username: str | None, password: str | None) -> int:
    """Connect our client; returns 0 or the refusal's reason code (5.0 numbering)."""
    pw = None if password is None else password.encode()
    c = Client("127.0.0.1", port, version=version, username=username, password=pw)
    try:
        c.connect(timeout=WAIT)
    except ConnectionRefused as e:  # NotAuthorized among them
        return e.reason_code
    c.disconnect()
    return OK


def paho_connect(port: int, version: int, username: str | None, password: str | None) -> int:
    """Connect paho; returns the CONNACK code it reports (5.0 numbering)."""
    protocol = paho.MQTTv5 if version == 5 else paho.MQTTv311
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=protocol)
    if username is not None:
        c.username_pw_set(username, password)
    done = threading.Event()
    codes: list[int] = []

    def on_connect(
        client: paho.Client, userdata: object, flags: object, rc: object, *a: object
    ) -> None:
        codes.append(rc.value)  # type: ignore[attr-defined]  # a ReasonCode, 3.1.1 codes mapped
        done.set()

    c.on_connect = on_connect
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        assert done.wait(WAIT), "no CONNACK"
    finally:
        c.disconnect()
        c.loop_stop()
    return codes[0]


CASES = [
    ("alice", "s3cret", OK),
    ("bob", "hunter2", OK),
    ("alice", "hunter2", BAD_CREDENTIALS),  # another user's password
    ("mallory", "s3cret", BAD_CREDENTIALS),  # unknown user
    ("alice", None, BAD_CREDENTIALS),  # user name without a password
    (None, None, NOT_AUTHORIZED),
]


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize(("username", "password", "expected"), CASES)
def test_our_client(
    broker: BrokerThread, version: int, username: str | None, password: str | None, expected: int
) -> None:
    # 3.1.1 return codes 4 and 5 (MQTT-3.2.2-5) come back as their 5.0 equivalents.
    assert connect(broker.port, version, username, password) == expected


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize(("username", "password", "expected"), CASES)
def test_paho(
    broker: BrokerThread, version: int, username: str | None, password: str | None, expected: int
) -> None:
    assert paho_connect(broker.port, version, username, password) == expected


@pytest.mark.parametrize("version", [4, 5])
def test_anonymous_when_allowed(open_broker: BrokerThread, version: int) -> None:
    assert connect(open_broker.port, version, None, None) == OK
    assert paho_connect(open_broker.port, version, None, None) == OK
    # Credentials that are sent are still checked.
    assert connect(open_broker.port, version, "alice", "wrong") == BAD_CREDENTIALS
    assert connect(open_broker.port, version, "alice", "s3cret") == OK


def test_no_password_file_accepts_anyone() -> None:
    for b in running():
        assert connect(b.port, 5, None, None) == OK
        assert connect(b.port, 5, "anyone", "anything") == OK


def test_over_websocket(pwfile: Path) -> None:
    """The connection is held during the check on every kind of listener."""
    pytest.importorskip("wsproto")
    for b in running(password_file=str(pwfile), listeners=[Listener("ws", port=0)]):
        for password, expected in (("s3cret", OK), ("wrong", BAD_CREDENTIALS)):
            c = Client("127.0.0.1", b.port, transport="websockets", username="alice",
                       password=password.encode())  # fmt: skip
            try:
                c.connect(timeout=WAIT)
                c.subscribe("a/b", qos=1)  # the connection reads again after the check
                c.disconnect()
                rc = OK
            except NotAuthorized as e:
                rc = e.reason_code
            assert rc == expected


def test_packets_after_connect_wait_for_the_check(broker: BrokerThread) -> None:
    """A client may send packets right after CONNECT: they are handled once it is
    accepted, in order (3.1.1 CONNECT and SUBSCRIBE in one write)."""

    def string(s: bytes) -> bytes:
        return len(s).to_bytes(2, "big") + s

    body = string(b"MQTT") + b"\x04\xc2\x00\x3c" + string(b"early") + string(b"alice")
    body += string(b"s3cret")
    sub = b"\x00\x07" + string(b"a/b") + b"\x01"
    data = bytes([0x10, len(body)]) + body + bytes([0x82, len(sub)]) + sub
    with socket.create_connection(("127.0.0.1", broker.port), timeout=WAIT) as sock:
        sock.sendall(data)
        got = b""
        while len(got) < 9:
            chunk = sock.recv(64)
            assert chunk, f"closed after {got!r}"
            got += chunk
    assert got == b"\x20\x02\x00\x00" + b"\x90\x03\x00\x07\x01"  # CONNACK, then SUBACK


# -- fieldline passwd --------------------------------------------------------------------


def passwd(*args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fieldline.cli", "passwd", *args]
    if password is not None:
        cmd.append("--password-stdin")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        cmd, input=(password or "") + "\n", capture_output=True, text=True, env=env, timeout=WAIT
    )


def test_passwd_command(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    assert passwd(str(path), "alice", password="one").returncode == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert passwd(str(path), "bob", password="two").returncode == 0
    users = Passwords.load(path).users
    assert list(users) == ["alice", "bob"]
    assert verify_password(b"one", users["alice"]) and verify_password(b"two", users["bob"])

    old = users["alice"]
    assert passwd(str(path), "alice", password="three").returncode == 0  # a new password
    users = Passwords.load(path).users
    assert users["alice"] != old and verify_password(b"three", users["alice"])
    assert "three" not in path.read_text()

    assert passwd("--delete", str(path), "bob").returncode == 0
    assert list(Passwords.load(path).users) == ["alice"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["passwd"]  # no temporary file left

    r = passwd("--delete", str(path), "bob")
    assert r.returncode == 1 and "no user 'bob'" in r.stderr
    r = passwd(str(path), "a:b", password="x")
    assert r.returncode == 2 and "without ':'" in r.stderr
    r = passwd(str(path), "carol", password="")
    assert r.returncode == 2 and "empty" in r.stderr


def test_broker_command_refuses_a_bad_password_file(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text("alice\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "fieldline.cli",
            "broker",
            "--port",
            "0",
            "--password-file",
            str(path),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=WAIT,
    )
    assert r.returncode == 2
    assert f"{path}:1: expected 'username:hash'" in r.stderr


def test_refusal_is_logged_without_the_password(
    broker: BrokerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="fieldline.broker"):
        assert connect(broker.port, 5, "alice", "not-her-password") == BAD_CREDENTIALS
        assert connect(broker.port, 5, None, None) == NOT_AUTHORIZED
    text = caplog.text
    assert "user 'alice': refused, bad user name or password" in text
    assert "no user name: refused, not authorized" in text
    assert "not-her-password" not in text


def test_anonymous_access_only_on_loopback_by_default() -> None:
    # Without a password file, a broker others can reach is closed until its
    # configuration opens it (as Mosquitto 2): loopback listeners are open.
    assert BrokerConfig().anonymous
    assert BrokerConfig(host="localhost").anonymous and BrokerConfig(host="::1").anonymous
    for host in ("0.0.0.0", "::", "192.0.2.7", "broker.example"):
        assert not BrokerConfig(host=host).anonymous, host
        assert BrokerConfig(host=host, allow_anonymous=True).anonymous
    lan = Listener("mqtt", "0.0.0.0", 0)
    assert not BrokerConfig(listeners=[Listener("mqtt", "127.0.0.1", 0), lan]).anonymous


@pytest.mark.parametrize("version", [4, 5])
def test_a_broker_listening_beyond_loopback_refuses_anonymous_clients(version: int) -> None:
    with BrokerThread("0.0.0.0", 0) as b:
        assert "every client refused" in b.broker.auth_summary()
        c = Client("127.0.0.1", b.port, version=version, timeout=WAIT, reconnect=False)
        with pytest.raises(NotAuthorized):
            c.connect()
    with BrokerThread("0.0.0.0", 0, allow_anonymous=True) as b:
        with Client("127.0.0.1", b.port, version=version, timeout=WAIT) as c:
            c.publish("open/x", b"1", qos=1)
