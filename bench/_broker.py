"""A Mosquitto broker for the client benchmarks: a free loopback port, a config
in a temporary folder, no persistence, and limits raised so that the broker
never throttles or drops what a benchmark sends (``LIMITS``).
"""

from __future__ import annotations

import os
import pwd
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"
FALLBACKS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
START_TIMEOUT = 10.0

# Per client: QoS 1/2 messages in flight from the broker (its outgoing window;
# for 5.0 clients the Receive Maximum, 65535 being the protocol's largest),
# no limit on queued messages (0 = none), and QoS 0 messages queued for an
# offline persistent session too (the receive-only table relies on it).
LIMITS = (
    "max_inflight_messages 65535",
    "max_queued_messages 0",
    "queue_qos0_messages true",
)


def find_tool(name: str, *fallbacks: str) -> str:
    """Path of executable ``name`` (PATH first, then ``fallbacks``); raises
    RuntimeError when missing."""
    found = shutil.which(name) or next((f for f in fallbacks if os.access(f, os.X_OK)), None)
    if found is None:
        raise RuntimeError(
            f"{name} not found; install the Debian packages mosquitto and mosquitto-clients"
        )
    return found


def more_files() -> None:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit: for a process that
    holds thousands of sockets (a load generator; a broker, as ``preexec_fn``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:  # not allowed for the soft one: the kernel's cap
        hard = int(Path("/proc/sys/fs/nr_open").read_text())
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def vm_rss(pid: int) -> int:
    """Resident memory in KiB of a running process (VmRSS), 0 once it has exited."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process so far (/proc/PID/stat), 0 once
    it has exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def listening(proc: subprocess.Popen[bytes], port: int, timeout: float = START_TIMEOUT) -> bool:
    """Wait until the broker process ``proc`` accepts connections on ``port``:
    True, or False if it exited or took longer than ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


def terminate(proc: subprocess.Popen[bytes] | None, wait: float) -> None:
    """SIGTERM ``proc`` if it runs, SIGKILL after ``wait`` seconds."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Broker:
    """``with Broker() as b:`` runs mosquitto on ``b.port`` until the block ends.

    ``config``: more lines for its configuration file, after the listener's;
    ``many_files``: start it with ``more_files()`` (to hold thousands of connections)."""

    def __init__(self, config: tuple[str, ...] = (), many_files: bool = False) -> None:
        self.executable = find_tool("mosquitto", *FALLBACKS)
        self.config = config
        self.many_files = many_files
        self.port = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The broker's process id (0 when not running): for reading its memory."""
        return self._proc.pid if self._proc is not None else 0

    def version(self) -> str:
        """``"mosquitto 2.0.11"`` or the like."""
        out = subprocess.run(
            [self.executable, "-h"], capture_output=True, text=True, timeout=10
        ).stdout
        words = out.split()
        return f"mosquitto {words[2]}" if len(words) > 2 else "mosquitto"

    def log(self) -> str:
        """What the broker logged (errors, warnings, connections)."""
        if self._tmp is None:
            return ""
        path = Path(self._tmp.name) / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> Broker:
        self._tmp = tempfile.TemporaryDirectory(prefix="fieldline-bench-broker-")
        folder = Path(self._tmp.name)
        # A free port can be taken between probing and binding; try a few.
        for _ in range(3):
            self.port = free_port()
            config = folder / "mosquitto.conf"
            config.write_text(
                "\n".join(
                    [
                        f"listener {self.port} {HOST}",
                        "allow_anonymous true",
                        "persistence false",
                        *LIMITS,
                        *self.config,
                        f"log_dest file {folder / 'mosquitto.log'}",
                        "log_type error",
                        "log_type warning",
                        "log_type notice",
                        # As root, mosquitto would drop to user "mosquitto".
                        f"user {pwd.getpwuid(os.geteuid()).pw_name}",
                    ]
                )
                + "\n"
            )
            self._proc = subprocess.Popen(
                [self.executable, "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=folder,
                preexec_fn=more_files if self.many_files else None,
            )
            if listening(self._proc, self.port):
                return self
            self._stop()
        raise RuntimeError(f"mosquitto did not start:\n{self.log()}")

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        terminate(proc, 5)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
