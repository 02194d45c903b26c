"""`fieldline`, `fieldline --help` and `fieldline broker --help`: what a new user reads first.
The examples the help shows are run here, so they stay true."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from fieldline.mqtt import Client, ConnectionRefused

REPO = Path(__file__).resolve().parent.parent
WAIT = 10.0


def fieldline(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fieldline", *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )


def test_no_command_prints_the_usage() -> None:
    out = fieldline()
    assert out.returncode == 0, out
    assert out.stdout.startswith("usage: fieldline"), out.stdout
    for command in ("broker", "passwd"):
        assert re.search(rf"^ +{command} +\S", out.stdout, re.M), out.stdout


def test_help_says_what_fieldline_is_with_examples() -> None:
    out = fieldline("--help").stdout
    assert "Later issues" not in out  # a note to ourselves, not to a user
    assert "MicroPython" in out and "fieldline.mqtt" in out
    assert "fieldline broker --host 0.0.0.0 --password-file passwd" in out


def test_broker_help_groups_every_flag() -> None:
    out = fieldline("broker", "--help").stdout
    options = out[out.index("\noptions:") :]
    groups = re.findall(r"^(\S[^:\n]*):$", options, re.M)
    assert groups == [
        "options",
        "listeners",
        "TLS (mqtts and wss listeners)",
        "who may connect, and to which topics",
        "limits",
        "persistence",
        "logs, metrics and the event loop",
    ], groups
    usage = out[: out.index("\noptions:")]
    flags = set(re.findall(r"\[(--[a-z-]+)", usage))
    for flag in flags:  # each one explained once, in some group
        assert len(re.findall(rf"^  {flag}(?=[ \n])", options, re.M)) == 1, flag
    assert len(flags) == 29, flags


def test_help_fits_a_terminal() -> None:
    # argparse wraps its own parts to $COLUMNS; the texts we lay out ourselves must fit too.
    for args in (["--help"], ["broker", "--help"], ["passwd", "--help"]):
        out = subprocess.run(
            [sys.executable, "-m", "fieldline", *args],
            cwd=REPO,
            env={**os.environ, "COLUMNS": "80"},
            capture_output=True,
            text=True,
            timeout=WAIT,
        ).stdout
        assert max(len(line) for line in out.splitlines()) <= 90, (args, out)


def test_the_help_example_for_devices_works(tmp_path: Path) -> None:
    # `fieldline passwd` then `fieldline broker --host 0.0.0.0 --password-file passwd`,
    # as `fieldline --help` shows: the user logs in, an anonymous client is refused.
    passwd = tmp_path / "passwd"
    made = fieldline("passwd", str(passwd), "esp32-1", "--password-stdin", stdin="s3cret\n")
    assert made.returncode == 0, made
    args = ["broker", "--host", "0.0.0.0", "--port", "0", "--password-file", str(passwd)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fieldline", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = int(re.search(r"mqtt://0\.0\.0\.0:(\d+)", line).group(1))  # type: ignore[union-attr]
        assert "passwords from" in proc.stdout.readline()
        with Client("127.0.0.1", port, username="esp32-1", password=b"s3cret", timeout=WAIT) as c:
            c.publish("boot", b"1", qos=1)
        try:
            Client("127.0.0.1", port, timeout=WAIT).connect()
            raise AssertionError("an anonymous client got in")
        except ConnectionRefused as e:
            assert e.reason_code == 0x87
    finally:
        proc.terminate()
        proc.wait(WAIT)
