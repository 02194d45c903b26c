"""Re-reading the password and ACL files without a restart: ``Broker.reload()`` in
process, and SIGHUP to a real ``python -m fieldline broker``. Connected clients stay
connected; new passwords apply to the next CONNECT, new rules to every session's next
PUBLISH, SUBSCRIBE and delivery; a file that cannot be parsed keeps the old ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest
from test_broker import WAIT, running
from test_broker_auth import BAD_CREDENTIALS, OK, connect, password_file

from fieldline.broker import BrokerThread
from fieldline.mqtt import Client, PublishRefused

ROOT = Path(__file__).resolve().parent.parent
NOT_AUTHORIZED = 0x87

ACL_BEFORE = """\
user alice
topic readwrite a/#
user watcher
topic read #
"""
ACL_AFTER = """\
user alice
topic readwrite b/#
user watcher
topic read b/#
"""


def client(b: BrokerThread, user: str, client_id: str) -> Client:
    c = Client("127.0.0.1", b.port, client_id=client_id, username=user)
    c.connect(timeout=WAIT)
    return c


def test_new_acl_applies_to_connected_clients(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    acl = tmp_path / "acl"
    acl.write_text(ACL_BEFORE)
    for b in running(acl_file=str(acl)):
        alice = client(b, "alice", "alice-1")
        watcher = client(b, "watcher", "watcher-1")
        try:
            assert watcher.subscribe("#", qos=1) == [1]
            alice.publish("a/x", b"before", qos=1)
            assert watcher.recv(timeout=WAIT).payload == b"before"
            with pytest.raises(PublishRefused):
                alice.publish("b/x", b"not yet", qos=1)

            acl.write_text(ACL_AFTER)
            assert b.call(b.broker.reload) is True
            # The same connections, the new rules: for PUBLISH...
            with pytest.raises(PublishRefused) as e:
                alice.publish("a/x", b"no more", qos=1)
            assert e.value.reason_code == NOT_AUTHORIZED
            alice.publish("b/x", b"now", qos=1)
            # ...for delivery on a subscription made before (a/... is no longer read)...
            b.call(b.broker.publish, "a/y", b"filtered", 1)
            b.call(b.broker.publish, "b/y", b"delivered", 1)
            assert [watcher.recv(timeout=WAIT).payload for _ in range(2)] == [b"now", b"delivered"]
            # ...and for SUBSCRIBE.
            assert alice.subscribe([("a/#", 1), ("b/#", 1)]) == [NOT_AUTHORIZED, 1]

            # A broken file keeps the rules in force, and says why.
            acl.write_text("user alice\ntopic frobnicate a/#\n")
            with caplog.at_level("ERROR", logger="fieldline.broker"):
                assert b.call(b.broker.reload) is False
            assert f"{acl}:2: expected 'topic read|write|readwrite|deny FILTER'" in caplog.text
            with pytest.raises(PublishRefused):
                alice.publish("a/x", b"still no", qos=1)
            alice.publish("b/x", b"still yes", qos=1)
            assert watcher.recv(timeout=WAIT).payload == b"still yes"
            acl.unlink()  # a file that is gone: the same
            assert b.call(b.broker.reload) is False
            with pytest.raises(PublishRefused):
                alice.publish("a/x", b"still no", qos=1)
        finally:
            alice.disconnect()
            watcher.disconnect()


def test_reload_of_passwords_in_process(tmp_path: Path) -> None:
    path = password_file(tmp_path / "passwd", alice="old")
    for b in running(password_file=str(path)):
        with Client("127.0.0.1", b.port, username="alice", password=b"old") as kept:
            password_file(path, alice="new", carol="hers")
            assert b.call(b.broker.reload) is True
            assert connect(b.port, 5, "alice", "new") == OK
            assert connect(b.port, 5, "carol", "hers") == OK
            assert connect(b.port, 5, "alice", "old") == BAD_CREDENTIALS
            path.write_text("alice\n")  # broken: alice:new and carol stay
            assert b.call(b.broker.reload) is False
            assert connect(b.port, 4, "alice", "new") == OK
            assert connect(b.port, 4, "alice", "old") == BAD_CREDENTIALS
            kept.publish("still/connected", b"x", qos=1)  # logged in before: not cut


# -- SIGHUP to `fieldline broker` ---------------------------------------------------------


@contextmanager
def broker_cli(tmp_path: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """``python -m fieldline broker ARGS``, its stdout piped, its stderr in
    ``tmp_path/stderr``; killed on the way out if still running."""
    with (tmp_path / "stderr").open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fieldline", "broker", *args],
            stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
def broker_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, Path]]:
    """``python -m fieldline broker`` with a password file (alice: old) and an ACL file;
    yields the process, the password file and the ACL file."""
    passwd = password_file(tmp_path / "passwd", alice="old")
    acl = tmp_path / "acl"
    acl.write_text(ACL_BEFORE)
    args = ["--port", "0", "--password-file", str(passwd), "--acl-file", str(acl)]
    with broker_cli(tmp_path, *args) as proc:
        yield proc, passwd, acl


def read_until(out: IO[str], text: str) -> str:
    for line in out:
        if text in line:
            return line
    raise AssertionError(f"the broker's output ended before {text!r}")


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_rereads_the_files(
    broker_process: tuple[subprocess.Popen[str], Path, Path], tmp_path: Path
) -> None:
    proc, passwd, acl = broker_process
    assert proc.stdout is not None
    line = read_until(proc.stdout, "mqtt://127.0.0.1:")
    port = int(line.split("mqtt://127.0.0.1:")[1].split()[0])
    read_until(proc.stdout, "Ctrl-C stops it")
    assert connect(port, 5, "alice", "old") == OK

    with Client("127.0.0.1", port, username="alice", password=b"old") as kept:
        password_file(passwd, alice="new")
        acl.write_text(ACL_AFTER)
        proc.send_signal(signal.SIGHUP)
        line = read_until(proc.stdout, "fieldline broker: reload")
        assert "reloaded, passwords from" in line and "(1 user)" in line
        assert connect(port, 5, "alice", "new") == OK
        assert connect(port, 5, "alice", "old") == BAD_CREDENTIALS
        assert connect(port, 4, "alice", "old") == BAD_CREDENTIALS
        # The connection made with the old password stays, under the new ACL.
        kept.publish("b/x", b"allowed now", qos=1)
        with pytest.raises(PublishRefused):
            kept.publish("a/x", b"not any more", qos=1)

    passwd.write_text("alice:not-a-hash\n")
    proc.send_signal(signal.SIGHUP)
    assert "reload failed, old settings kept" in read_until(proc.stdout, "fieldline broker: reload")
    assert connect(port, 5, "alice", "new") == OK
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(WAIT) == 0
    errors = (tmp_path / "stderr").read_text()
    assert f"{passwd}:1: user 'alice'" in errors and "stays in force" in errors


# -- the configuration file -----------------------------------------------------------------

QUOTA_EXCEEDED = 0x97


def anonymous(port: int) -> int:
    """Connect anonymously; 0 or the refusal's reason code."""
    return connect(port, 5, None, None)


def test_reload_with_new_settings_applies_the_limits_and_keeps_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from dataclasses import replace

    with caplog.at_level("INFO", logger="fieldline.broker"):
        for b in running(max_connections=10, hook_timeout=5.0):
            first = Client("127.0.0.1", b.port, client_id="first")
            first.connect(timeout=WAIT)
            new = replace(b.broker.config, max_connections=1, hook_timeout=2.0, port=1)
            assert b.call(b.broker.reload, new) is True
            assert b.broker.config.max_connections == 1 and b.broker.plugins.timeout == 2.0
            assert b.broker.config.port != 1  # listeners stay as they started
            assert anonymous(b.port) == QUOTA_EXCEEDED  # one is connected
            first.disconnect()
    assert "reload: port changed; it takes effect at the next start" in caplog.text
    assert "max_connections = 1" in caplog.text


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_rereads_the_configuration_file(tmp_path: Path) -> None:
    toml = tmp_path / "broker.toml"
    toml.write_text("port = 0\nmax_connections = 10\n")
    with broker_cli(tmp_path, "--config", str(toml)) as proc:
        assert proc.stdout is not None
        line = read_until(proc.stdout, "mqtt://127.0.0.1:")
        port = int(line.split("mqtt://127.0.0.1:")[1].split()[0])
        read_until(proc.stdout, "Ctrl-C stops it")
        with Client("127.0.0.1", port, client_id="one"):
            assert anonymous(port) == OK
            toml.write_text("port = 0\nmax_connections = 1\n")
            proc.send_signal(signal.SIGHUP)
            assert "reloaded" in read_until(proc.stdout, "fieldline broker: reload")
            assert anonymous(port) == QUOTA_EXCEEDED
            toml.write_text("port = 0\nmax_connections = [\n")  # not TOML
            proc.send_signal(signal.SIGHUP)
            line = read_until(proc.stdout, "fieldline broker: reload")
            assert "reload failed, old settings kept" in line
            assert anonymous(port) == QUOTA_EXCEEDED  # still 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    assert "not valid TOML" in (tmp_path / "stderr").read_text()


def test_a_file_the_new_settings_drop_is_dropped(tmp_path: Path) -> None:
    from dataclasses import replace

    acl = tmp_path / "acl"
    acl.write_text("topic read allowed/#\n")
    for b in running(acl_file=str(acl)):
        with Client("127.0.0.1", b.port, client_id="c") as c:
            assert c.subscribe("secret/x", qos=1) == [0x87]
            assert b.call(b.broker.reload, replace(b.broker.config, acl_file=None)) is True
            assert b.broker.acl is None
            assert c.subscribe("secret/x", qos=1) == [1]  # no ACL file: no rules
