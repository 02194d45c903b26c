"""MQTT brokers under one load: our ``fieldline broker`` against Mosquitto and amqtt,
each run as its own process on a free loopback port, measured in the same run.

Rows: fan-through with Mosquitto's C clients (``mosquitto_pub -l`` → ``mosquitto_sub``)
at QoS 0 and 1, the goal rows; the same flows and more from our own generators, which
load a broker harder (QoS 0 fan-in ``FAN_IN`` → 1, QoS 1 1 → 1, QoS 0 fan-out 1 →
``FAN_OUT``); the connect rate (TCP connect + CONNECT + CONNACK); and each broker's
resident memory while it holds ``IDLE_CONNECTIONS`` idle connections. The load and
its processes are in bench/_loadgen.py; each generator reports its CPU time and the
broker's is read from /proc, so table (c) shows which side was saturated.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ._broker import (
    HOST,
    Broker,
    cpu_seconds,
    find_tool,
    free_port,
    listening,
    more_files,
    terminate,
    vm_rss,
)
from ._clientproc import PAYLOAD, WINDOW
from ._loadgen import CONCURRENCY, START_TIMEOUT, CFlow, Gen
from ._report import Column, Section, Table, goal_result

REPO = Path(__file__).resolve().parent.parent
FAN_IN = 10  # publishers of the fan-in row
FAN_OUT = 100  # subscribers of the fan-out row
IDLE_CONNECTIONS = 10_000  # held open while the brokers' RSS is read
IDLE_LIMIT = 60.0  # seconds a broker gets to accept them; it shows what it reached
SETTLE = 0.5  # seconds between the last CONNACK and reading the RSS
IDLE_TIMEOUT = 60.0  # for the "opened" answer, beyond IDLE_LIMIT
CONNECTS = 1000  # connections per connect-rate round
REPEATS = 5  # throughput rows: each broker's best of this many rounds ...
ROUND_TIME = 1.0  # ... of about this many seconds each
CONNECT_REPEATS = 5  # connect row: each broker's best of this many rounds of CONNECTS
WARMUP = 2_000  # deliveries in the uncounted first round
ROUND_MAX = 400_000  # deliveries per round (generators)
# C clients: Mosquitto 2.0.11 gives every message it holds for a client a packet id, so
# a subscriber more than 65,535 messages behind loses messages (see bench/clients.py).
C_ROUND_MAX = 50_000
QUICK_N = 200  # --quick: one round of this many deliveries per row, and ...
QUICK_FAN_OUT = 20  # ... these smaller counts
QUICK_IDLE = 500
QUICK_CONNECTS = 50

GOAL_RATIO = 0.5  # fan-through with the C clients, QoS 0 and 1: ≥ 0.5× Mosquitto
GOAL_IDLE = 6 * 1024  # bytes of RSS per idle connection, at most (6 KB read as KiB)
OURS = ("fieldline", "uvloop")  # the goals' brokers

# -- the brokers ------------------------------------------------------------------------

# Each broker is told to keep every message, never throttle a window and take any
# number of connections (Mosquitto: bench/_broker.py's LIMITS and MOSQUITTO_CONFIG);
# each starts with its RLIMIT_NOFILE raised to the hard limit (more_files).
MOSQUITTO_CONFIG = ("max_connections -1",)
FIELDLINE_CONFIG = """\
max_connections = 0
max_inflight = 65535
max_queued_messages = 1_000_000_000
max_queued_bytes = 1_000_000_000_000
"""

AMQTT_CONFIG = """\
listeners:
  default:
    type: tcp
    bind: {host}:{port}
    max_connections: -1
plugins:
  amqtt.plugins.authentication.AnonymousAuthPlugin:
    allow_anonymous: true
"""

# `fieldline broker` with uvloop where the CLI has no --event-loop option: asyncio.run()
# takes its loop from the policy, so installing uvloop's first runs the same code.
UVLOOP_LAUNCH = (
    "import asyncio, sys, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); "
    "from fieldline.cli import main; sys.exit(main(sys.argv[1:]))"
)


class Server:
    """``with Server(argv_for_port) as s:`` runs a broker process on ``s.port``."""

    def __init__(self, argv: Callable[[int, Path], list[str]]) -> None:
        self.argv = argv
        self.port = 0
        self.pid = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def log(self, head: bool = False) -> str:
        """The last 3,000 characters of the broker's output (``head``: the first)."""
        path = Path(self._tmp.name) / "broker.log" if self._tmp else None
        text = path.read_text(errors="replace") if path and path.exists() else ""
        return text[:3000] if head else text[-3000:]

    def __enter__(self) -> Server:
        self._tmp = tempfile.TemporaryDirectory(prefix="fieldline-bench-broker-")
        folder = Path(self._tmp.name)
        # This checkout's fieldline, whatever is installed.
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        for _ in range(3):  # a free port can be taken between probing and binding
            self.port = free_port()
            with (folder / "broker.log").open("wb") as log:
                self._proc = subprocess.Popen(
                    self.argv(self.port, folder),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=folder,
                    env=env,
                    preexec_fn=more_files,
                )
            self.pid = self._proc.pid
            if listening(self._proc, self.port, START_TIMEOUT):
                return self
            self._stop()
        raise RuntimeError(f"{self.argv(0, folder)[:4]} did not start:\n{self.log()}")

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        terminate(proc, 10)

    def __exit__(self, *exc: object) -> None:
        self._stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


@functools.cache
def loop_option() -> bool:
    """Whether this checkout's ``fieldline broker`` takes ``--event-loop`` (and may
    then run on uvloop by default): each row names its loop if so."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    help_text = subprocess.run(
        [sys.executable, "-m", "fieldline", "broker", "--help"],
        capture_output=True, text=True, env=env, timeout=START_TIMEOUT, check=True,
    ).stdout  # fmt: skip
    return "--event-loop" in help_text


def _fieldline(uvloop: bool) -> Callable[[int, Path], list[str]]:
    def argv(port: int, folder: Path) -> list[str]:
        config = folder / "fieldline.toml"
        config.write_text(FIELDLINE_CONFIG)
        flags = ["broker", "--config", str(config), "--host", HOST, "--port", str(port)]
        if loop_option():
            flags += ["--event-loop", "uvloop" if uvloop else "asyncio"]
        start = ["-c", UVLOOP_LAUNCH] if uvloop and not loop_option() else ["-m", "fieldline"]
        return [sys.executable, *start, *flags]

    return argv


def _check_loops(running: dict[str, Any]) -> None:
    """Raises RuntimeError if a fieldline broker says it ran on another event loop
    than its row's (it says so at start where it has ``--event-loop``)."""
    for key in OURS:
        log = running[key].log(head=True) if key in running else ""
        said = [loop for loop in ("asyncio", "uvloop") if f" on {loop};" in log]
        want = "uvloop" if key == "uvloop" else "asyncio"
        if said and said != [want]:
            raise RuntimeError(f"the {key} row's broker ran on {said}:\n{log}")


def _amqtt(port: int, folder: Path) -> list[str]:
    config = folder / "amqtt.yaml"
    config.write_text(AMQTT_CONFIG.format(host=HOST, port=port))
    return [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(config)]


@dataclass
class Target:
    key: str
    label: str
    run: Callable[[], Any]  # a context manager whose value has .port and .pid


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def targets() -> list[Target]:
    """The brokers of this run: Mosquitto first (the reference); amqtt and the uvloop
    row only where their packages are installed."""
    out = [
        Target("mosquitto", "Mosquitto", lambda: Broker(MOSQUITTO_CONFIG, many_files=True)),
        Target("fieldline", "fieldline", lambda: Server(_fieldline(False))),
    ]
    if _has("uvloop"):
        out.append(Target("uvloop", "fieldline + uvloop", lambda: Server(_fieldline(True))))
    if _has("amqtt"):
        out.append(Target("amqtt", "amqtt", lambda: Server(_amqtt)))
    return out


# -- measuring --------------------------------------------------------------------------


@dataclass
class Result:
    """Counted rounds of one row: ``deliveries`` in ``seconds`` (by the load's clocks);
    over the same rounds, ``wall`` seconds by this process's clock and the CPU seconds
    the broker and the load used (to show which one was saturated)."""

    deliveries: int = 0
    seconds: float = 0.0
    wall: float = 0.0
    broker_cpu: float = 0.0
    load_cpu: float = 0.0
    lost: int = 0
    steady: float = 1.0  # the median round's rate over the best's (the machine's noise)

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds

    def load(self) -> str:
        """``"broker 99% / load 40%"`` of one core."""
        w = self.wall
        return f"{self.broker_cpu / w:.0%} / {self.load_cpu / w:.0%}"


class Load(Protocol):
    def cpu_time(self) -> float: ...


@contextmanager
def _metered(r: Result, pid: int, load: tuple[Load, ...]) -> Iterator[None]:
    """Adds the wall time and the CPU seconds of the block to ``r``."""
    w0, b0, g0 = time.monotonic(), cpu_seconds(pid), sum(x.cpu_time() for x in load)
    yield
    r.wall += time.monotonic() - w0
    r.broker_cpu += cpu_seconds(pid) - b0
    r.load_cpu += sum(x.cpu_time() for x in load) - g0


@contextmanager
def _running(*gens: Gen) -> Iterator[None]:
    """Waits for each generator to be ready; ends them on the way out."""
    try:
        for g in gens:
            g.expect("ready", START_TIMEOUT)
        yield
        for g in gens:
            g.end()
    finally:
        for g in gens:
            g.kill()


@dataclass
class Row:
    key: str
    label: str
    pubs: int
    subs: int
    qos: int
    c: bool = False  # Mosquitto's C clients rather than the generators


def rows(quick: bool) -> list[Row]:
    fan_out = QUICK_FAN_OUT if quick else FAN_OUT
    c = "`mosquitto_pub -l` → `mosquitto_sub` (C clients)"
    return [
        Row("c0", f"QoS 0 fan-through, {c}", 1, 1, 0, c=True),
        Row("c1", f"QoS 1 fan-through, {c}", 1, 1, 1, c=True),
        Row("fan-in", f"QoS 0 fan-in, {FAN_IN} publishers → 1 subscriber", FAN_IN, 1, 0),
        Row("qos1", "QoS 1 end to end, 1 publisher → 1 subscriber", 1, 1, 1),
        Row("fan-out", f"QoS 0 fan-out, 1 publisher → {fan_out} subscribers", 1, fan_out, 0),
    ]


CONNECT_LABEL = f"connect rate: TCP connect + CONNECT + CONNACK, {CONCURRENCY} at once"


class Flow:
    """One broker's generators for one row: ``pubs`` publisher connections in one
    process, ``subs`` subscriber connections of one topic in another."""

    def __init__(self, port: int, pid: int, row: Row) -> None:
        self.pid = pid
        self.row = row
        topic = f"bench/{row.qos}/{row.pubs}x{row.subs}"
        self.sub = Gen("sub", port, row.subs, topic, row.qos)
        self.pub = Gen("pub", port, row.pubs, topic, row.qos)
        self.gens = (self.sub, self.pub)
        self.per_sub = 0  # messages each subscriber has been told to expect, in all
        self.lost = 0

    def round(self, deliveries: int) -> Result:
        """About ``deliveries`` messages through the broker; the time runs from the
        publishers' first byte to the last subscriber's last message."""
        pubs, subs = self.row.pubs, self.row.subs
        each = max(1, deliveries // (pubs * subs))  # messages per publisher
        self.per_sub += each * pubs
        r = Result()
        with _metered(r, self.pid, self.gens):
            self.sub.send(f"want {self.per_sub}")
            self.sub.expect("ok")
            self.pub.send(f"go {each}")
            t0 = float(self.pub.expect("sent")[1])
            _, got, t1 = self.sub.expect("got")
        # Short: the broker dropped messages (the fewest any subscriber got counts);
        # the counts no longer line up, so this flow runs no more rounds.
        r.lost = (self.per_sub - int(got)) * subs
        self.lost += r.lost
        r.deliveries = each * pubs * subs - r.lost
        r.seconds = float(t1) - t0
        return r


class CClients:
    """One broker's C clients for a fan-through row (see ``CFlow``)."""

    def __init__(self, tools: tuple[str, str], port: int, pid: int, row: Row) -> None:
        self.pid = pid
        self.flow = CFlow(*tools, port, f"bench/c/{row.qos}", row.qos)
        self.gens: tuple[Gen, ...] = ()
        self.lost = 0

    def round(self, deliveries: int) -> Result:
        """``deliveries`` lines through the broker, from before the write to
        mosquitto_pub's stdin to mosquitto_sub's last line."""
        r = Result()
        with _metered(r, self.pid, (self.flow,)):
            got, t0, t1 = self.flow.round(deliveries)
        r.lost = deliveries - got
        self.lost += r.lost
        r.deliveries, r.seconds = got, t1 - t0
        return r


def _best(results: list[Result]) -> Result:
    """The fastest round, with the losses of all."""
    best = max(results, key=lambda r: r.rate)
    best.lost = sum(r.lost for r in results)
    best.steady = statistics.median(r.rate for r in results) / best.rate
    return best


def throughput(row: Row, brokers: dict[str, Any], quick: bool) -> dict[str, Result]:
    """Each broker's best of REPEATS rounds of about ROUND_TIME seconds, the brokers
    taking turns (so a slow spell of this shared machine does not land on one of
    them alone), after a warm-up round each that also sizes their rounds."""
    flows: dict[str, Flow | CClients] = {}
    with ExitStack() as stack:
        tools = (find_tool("mosquitto_pub"), find_tool("mosquitto_sub"))
        for key, b in brokers.items():
            if row.c:
                flows[key] = c = CClients(tools, b.port, b.pid, row)
                stack.callback(c.flow.close)
            else:
                flows[key] = Flow(b.port, b.pid, row)
        stack.enter_context(_running(*(g for f in flows.values() for g in f.gens)))
        if quick:
            return {key: f.round(QUICK_N) for key, f in flows.items()}
        cap = C_ROUND_MAX if row.c else ROUND_MAX
        warm = {key: f.round(WARMUP) for key, f in flows.items()}
        rate = {key: r.rate for key, r in warm.items()}
        results: dict[str, list[Result]] = {key: [] for key in flows}
        for _ in range(REPEATS):
            for key, f in flows.items():
                if not f.lost:
                    n = int(min(cap, max(WARMUP, rate[key] * ROUND_TIME)))
                    results[key].append(f.round(n))
                    rate[key] = results[key][-1].rate
    # A flow that lost messages in its warm-up has only that round to show.
    return {key: _best(rs or [warm[key]]) for key, rs in results.items()}


def connect_rate(brokers: dict[str, Any], quick: bool) -> dict[str, Result]:
    """Connections + CONNACKs per second: each broker's best of CONNECT_REPEATS rounds
    of CONNECTS connections, the brokers taking turns."""
    results: dict[str, list[Result]] = {key: [] for key in brokers}
    gens = {key: Gen("conn", b.port) for key, b in brokers.items()}
    size = QUICK_CONNECTS if quick else CONNECTS
    with _running(*gens.values()):
        for i in range(1 if quick else CONNECT_REPEATS):
            for key, b in brokers.items():
                conn, r = gens[key], Result()
                with _metered(r, b.pid, (conn,)):
                    conn.send(f"open {size} {i} {IDLE_LIMIT}")
                    _, n, t0, t1 = conn.expect("opened")
                conn.send("close")
                conn.expect("closed")
                r.deliveries, r.seconds = int(n), float(t1) - float(t0)
                r.lost = size - int(n)
                results[key].append(r)
    return {key: _best(rs) for key, rs in results.items()}


@dataclass
class Idle:
    rss_before: int  # KiB, the broker just started
    rss_held: int  # KiB, holding ``held`` idle connections
    held: int
    seconds: float  # to open them

    @property
    def per_connection(self) -> float:
        """Bytes of RSS per connection held."""
        return (self.rss_held - self.rss_before) * 1024 / self.held


def idle_memory(brokers: dict[str, Any], quick: bool) -> dict[str, Idle]:
    """Each broker's VmRSS, fresh and then holding IDLE_CONNECTIONS idle connections
    (or what it accepted in IDLE_LIMIT seconds), one broker after the other."""
    size = QUICK_IDLE if quick else IDLE_CONNECTIONS
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < size + 100:
        raise RuntimeError(f"{size:,} connections need more files: `ulimit -Hn` is {hard}")
    out: dict[str, Idle] = {}
    for key, b in brokers.items():
        conn = Gen("conn", b.port)
        with _running(conn):
            before = vm_rss(b.pid)
            conn.send(f"open {size} idle {IDLE_LIMIT}")
            _, n, t0, t1 = conn.expect("opened", IDLE_LIMIT + IDLE_TIMEOUT)
            time.sleep(0.1 if quick else SETTLE)
            out[key] = Idle(before, vm_rss(b.pid), int(n), float(t1) - float(t0))
            conn.send("close")
            conn.expect("closed")
        _quiet(b.pid, 2.0 if quick else 30.0)
    return out


def _quiet(pid: int, limit: float) -> None:
    """Returns once the process used under 10% of a core for 0.25 s (it has done
    with the connections just closed), or after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        c0 = cpu_seconds(pid)
        time.sleep(0.25)
        if cpu_seconds(pid) - c0 < 0.025:
            return


# -- the section ------------------------------------------------------------------------


def _versions(keys: list[str]) -> str:
    parts = [f"{platform.python_implementation()} {platform.python_version()}"]
    if "uvloop" in keys:
        parts.append(f"uvloop {importlib.metadata.version('uvloop')}")
    if "amqtt" in keys:
        parts.append(f"amqtt {importlib.metadata.version('amqtt')}")
    return ", ".join(parts)


def _goal(value: float, goal: float, at_most: bool, shown: str) -> str:
    """``"≥0.5×: met (1.20× the goal)"``; ``shown``: the goal as the table shows it."""
    return f"{'≤' if at_most else '≥'}{shown}: {goal_result(value, goal, at_most)}"


def run(quick: bool = False) -> Section:
    """Start every broker of ``targets()``, measure them on every row; returns the
    section. ``quick``: one small round per row, smaller counts (numbers mean nothing)."""
    brokers = targets()
    table_rows = rows(quick)
    with ExitStack() as stack:
        running = {t.key: stack.enter_context(t.run()) for t in brokers}
        mosquitto_version = running["mosquitto"].version()
        _progress("idle connections")
        idle = idle_memory(running, quick)
        _progress("connect rate")
        connects = connect_rate(running, quick)
        rates: dict[str, dict[str, Result]] = {}
        for row in table_rows:
            _progress(row.key)
            rates[row.key] = throughput(row, running, quick)
        _check_loops(running)

    ours = [t for t in brokers if t.key in OURS]
    others = [t for t in brokers if t.key != "mosquitto"]
    columns = [Column("row"), Column("Mosquitto msg/s", "rate")]
    for t in others:
        columns += [Column(f"{t.label} msg/s", "rate"), Column(f"{t.label} / Mosquitto", "ratio")]
    columns.append(Column(f"goal: fieldline ≥ {GOAL_RATIO:g}× Mosquitto"))
    table = Table(columns, caption="**(a) messages per second** (connections per second for "
                  "the connect row), and each broker's ratio to Mosquitto")  # fmt: skip
    results_by_row = [(row.label, rates[row.key], row.c) for row in table_rows]
    results_by_row.append((CONNECT_LABEL, connects, False))
    for label, results, goal in results_by_row:
        ref = results["mosquitto"].rate
        cells: list[Any] = [label, ref]
        for t in others:
            cells += [results[t.key].rate, results[t.key].rate / ref]
        ratio = results["fieldline"].rate / ref
        cells.append(_goal(ratio, GOAL_RATIO, False, f"{GOAL_RATIO:g}×") if goal else "—")
        table.add(*cells)

    held = QUICK_IDLE if quick else IDLE_CONNECTIONS
    memory = Table(
        [
            Column("broker"),
            Column("RSS at start MiB", "kib"),
            Column("RSS holding them MiB", "kib"),
            Column("connections held", "bytes"),
            Column("seconds to open them"),
            Column("KiB per connection"),
            Column(f"goal: ≤ {GOAL_IDLE // 1024} KiB per connection"),
        ],
        caption=f"**(b) broker memory** (VmRSS) holding {held:,} idle 3.1.1 connections",
    )
    for t in brokers:
        m = idle[t.key]
        verdict = "—"
        if t in ours:
            verdict = _goal(m.per_connection, GOAL_IDLE, True, f"{GOAL_IDLE // 1024} KiB")
        memory.add(t.label, m.rss_before, m.rss_held, m.held, f"{m.seconds:.1f}",
                   f"{m.per_connection / 1024:.1f}", verdict)  # fmt: skip

    load = Table(
        [Column("row"), *(Column(t.label) for t in brokers)],
        caption="**(c) where the cores went**: CPU time of the broker / of the load (generator "
        "processes or C clients), as a share of one core during the round in (a) (2 cores in all)",
    )
    for label, results, _ in results_by_row:
        load.add(label, *(results[t.key].load() for t in brokers))
    lost = [
        f"{t.label}, {row.label}: {rates[row.key][t.key].lost:,}"
        for row in table_rows
        for t in brokers
        if rates[row.key][t.key].lost
    ]
    steady = sorted(results[t.key].steady for _, results, _ in results_by_row for t in brokers)
    short = [f"{t.label} {idle[t.key].held:,}" for t in brokers if idle[t.key].held < held]
    notes = [
        "All brokers run at once, each as its own process on 127.0.0.1, and take turns: "
        f"each gets the same load from its own processes. MQTT 3.1.1, {len(PAYLOAD)}-byte "
        "payloads, one topic per row. msg/s = messages delivered to subscribers (fan-out: "
        "each copy counts) over the time from the first byte published to the subscribers' "
        f"last message; each figure is the best of {REPEATS} rounds of about "
        f"{ROUND_TIME:g} s, after a warm-up round. QoS 1: at most {WINDOW:,} PUBLISHes "
        "unacknowledged, every delivery acknowledged.",
        "Fan-through (the goal rows): one `mosquitto_pub -l -M 1000` that stays connected "
        "and publishes each line this process writes to its stdin, one `mosquitto_sub` "
        "subscribed at the same QoS whose output lines this process counts; the time runs "
        "from before the write to the chunk that brings the last line. Rounds are of at "
        f"most {C_ROUND_MAX:,} messages (Mosquitto 2.0.11 drops messages for a subscriber "
        "65,535 behind). The other rows come from our own generator processes "
        "(`bench/_loadgen.py`: raw sockets, pre-encoded packets, keep-alive 0), which "
        "spend far less per message than the C clients and so load a broker harder.",
        f"Connect rate: best of {CONNECT_REPEATS} rounds of {CONNECTS:,} connections, at "
        f"most {CONCURRENCY} handshakes in flight; a round's connections stay open until "
        "all have their CONNACK, then send DISCONNECT and close (not timed). Memory: "
        f"{held:,} connections opened the same way on each fresh broker in turn "
        f"(at most {IDLE_LIMIT:g} s each), VmRSS from `/proc/PID/status` before and "
        f"{SETTLE:g} s after the last CONNACK; KiB per connection = the difference over "
        "the connections held (KiB = 1,024 bytes; the issue's 6 KB is read as 6 KiB)."
        + (f" Held fewer: {', '.join(short)}." if short else ""),
        f"Brokers: {mosquitto_version} with `bench/_broker.py`'s limits (no queue limit, "
        "65,535 in flight) and `max_connections -1`; `python -m fieldline broker` with a "
        "configuration file of `max_inflight = 65535`, `max_connections = 0` (no limit) "
        "and queue limits too high to reach"
        + (
            ", `--event-loop asyncio` for the fieldline row and `--event-loop uvloop` for "
            "`fieldline + uvloop` (the CLI's default, `auto`, takes uvloop when installed); "
            if loop_option()
            else "; `fieldline + uvloop` is the same command started with uvloop's event "
            "loop policy installed (the CLI has no option for it); "
        )
        + "amqtt's own command (`amqtt.scripts.broker_script`) with one TCP listener "
        "(`max_connections: -1`) and anonymous login, none of its other plugins. Each "
        "broker and load process starts with RLIMIT_NOFILE raised to the hard limit "
        f"({resource.getrlimit(resource.RLIMIT_NOFILE)[1]:,} here).",
        f"Noise: a broker's median round reached {steady[0]:.0%}–{steady[-1]:.0%} of its "
        f"best round in (a) (median {statistics.median(steady):.0%}); the rest of this "
        "2-core machine's load is not under the bench's control.",
        "Messages dropped by a broker (not counted in msg/s): "
        + ("; ".join(lost) if lost else "none")
        + ".",
    ]
    env = f"{_versions([t.key for t in brokers])}"
    return Section(
        "broker", "Broker: ours against Mosquitto and amqtt", [table, memory, load], notes, env
    )


def _progress(what: str) -> None:
    print(f"  broker: {what}", file=sys.stderr, flush=True)
