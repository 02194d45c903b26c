"""Shared pytest fixtures: a real mosquitto broker and a tool finder.

Missing tools skip the tests that need them on a developer machine, but fail
them when ``CI=true``: CI must never go green by skipping the integration tests.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import pytest

# tests/mpy/ holds MicroPython test modules; they are run by tests/test_micropython.py
# through tests/mpy/runner.py on every runtime, not collected by pytest.
collect_ignore_glob = ["mpy/*"]

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
MOSQUITTO_FALLBACKS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip on a developer machine; fail under CI=true, where the tool is required."""
    if in_ci():
        pytest.fail(f"{reason} (required because CI=true)", pytrace=False)
    pytest.skip(reason)


def find_tool(name: str, *fallbacks: str, hint: str = "") -> str:
    """Return the path of executable ``name`` (PATH first, then ``fallbacks``).

    Skips the test when it is missing, or fails it under CI=true.
    """
    found = shutil.which(name)
    if found is None:
        # Console scripts of this interpreter (pyenv shims may not be rehashed yet).
        found = shutil.which(name, path=sysconfig.get_path("scripts"))
    if found is None:
        found = next((f for f in fallbacks if os.access(f, os.X_OK)), None)
    if found is None:
        skip_or_fail(f"{name} not found" + (f"; {hint}" if hint else ""))
    return found


@pytest.fixture
def need_tool() -> Callable[..., str]:
    """``need_tool("node", hint="...")`` -> path, or skip (fail under CI=true)."""
    return find_tool


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Mosquitto:
    """One mosquitto process on a fixed loopback port with its own config, log and
    persistence directory, so ``restart()`` brings back the same broker state
    (persistent sessions, retained messages, queued QoS 1/2 messages).

    mosquitto writes its persistence file on a clean ``stop()``; after ``kill()``
    only what an autosave already wrote survives (pass
    ``extra_config=["autosave_interval 1", "autosave_on_changes true"]`` to the
    factory to save after every change).
    """

    host = "127.0.0.1"

    def __init__(
        self, executable: str, workdir: Path, port: int, extra_config: Sequence[str] = ()
    ) -> None:
        self.executable = executable
        self.workdir = workdir
        self.port = port
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.output_path = workdir / "mosquitto.out"  # stdout/stderr: config errors land here
        self.persistence_dir = workdir / "persistence"
        self.persistence_dir.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen[bytes] | None = None
        lines = [
            f"listener {port} {self.host}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.persistence_dir}/",
            "persistence_file mosquitto.db",
            f"log_dest file {self.log_path}",
            "log_type all",
            "log_timestamp_format %H:%M:%S",
            "connection_messages true",
            # As root, mosquitto drops to user "mosquitto", who cannot write to tmp_path.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            *extra_config,
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def address(self) -> str:
        """``"HOST:PORT"``, as taken by ``tests/mpy/runner.py --broker``."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        """The broker's log file and captured output, for failure messages."""
        parts = []
        for path in (self.log_path, self.output_path):
            if path.exists():
                text = path.read_text(errors="replace").strip()
                parts.append(f"--- {path.name} ---\n{text or '(empty)'}")
        return "\n".join(parts) or "(no log written)"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the broker and wait until its port accepts TCP connections.

        Raises RuntimeError (with the log) if it exits or is not listening in time.
        """
        if self.running:
            raise RuntimeError(f"mosquitto already running on {self.address}")
        with self.output_path.open("ab") as out:
            self._proc = subprocess.Popen(
                [self.executable, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with status {self._proc.returncode} during start-up "
                    f"on {self.address}\n{self.log()}"
                )
            if _accepts(self.host, self.port):
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(
            f"mosquitto did not accept connections on {self.address} within {timeout:g} s\n"
            f"{self.log()}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop cleanly (SIGTERM; mosquitto saves persistence), SIGKILL if it hangs."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None

    def kill(self) -> None:
        """Kill at once (SIGKILL), as a crash or power cut would; nothing is saved."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._proc = None

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Clean stop, then start again on the same port with the same persistence."""
        self.stop()
        self.start(timeout)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Mosquitto {self.address} {state} in {self.workdir}>"


MosquittoFactory = Callable[..., Mosquitto]


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[MosquittoFactory]:
    """Callable ``(extra_config=(), start=True) -> Mosquitto``; each call makes an
    independent broker with its own port and directory. All are stopped at teardown.
    """
    executable = find_tool(
        "mosquitto",
        *MOSQUITTO_FALLBACKS,
        hint="install the Debian package `mosquitto` (/usr/sbin/mosquitto)",
    )
    brokers: list[Mosquitto] = []

    def make(extra_config: Sequence[str] = (), start: bool = True) -> Mosquitto:
        last_error: RuntimeError | None = None
        # A free port can be taken between probing and binding; try a few.
        for _ in range(3):
            workdir = tmp_path / f"mosquitto{len(brokers)}"
            workdir.mkdir()
            broker = Mosquitto(executable, workdir, _free_port(Mosquitto.host), extra_config)
            brokers.append(broker)
            if not start:
                return broker
            try:
                broker.start()
                return broker
            except RuntimeError as e:
                last_error = e
                if "Address already in use" not in broker.log():
                    break
        pytest.fail(f"could not start mosquitto: {last_error}", pytrace=False)

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def mosquitto(mosquitto_factory: MosquittoFactory) -> Mosquitto:
    """A running mosquitto on a free loopback port (``.host``, ``.port``, ``.address``),
    with ``.stop()``, ``.start()``, ``.restart()`` and ``.kill()``; stopped at teardown.
    """
    return mosquitto_factory()
