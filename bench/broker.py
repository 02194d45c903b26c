"""MQTT brokers under one load: our ``fieldline broker`` against Mosquitto and amqtt,
each run as its own process on a free loopback port, measured in the same run.

Rows: QoS 0 fan-in (``FAN`` publishers → 1 subscriber), QoS 1 end to end (1 → 1,
acknowledged at both ends), QoS 0 fan-out (1 → ``FAN`` subscribers), and the connect
rate (TCP connect + CONNECT + CONNACK), with the broker's resident memory while it
holds ``CONNECTS`` idle connections.

The load comes from the same generator processes for every broker (this module run
with ``gen``): raw non-blocking sockets, one ``selectors`` loop per process, packets
encoded once by our codec before the clock starts. Publishers stream pre-encoded
PUBLISH packets (QoS 1: at most ``WINDOW`` unacknowledged); subscribers never decode
a message: every delivery on a topic is the same number of bytes, so they count
bytes, check each packet's first two bytes with one slice, and (QoS 1) build the
PUBACKs with slices. Their Python costs next to nothing per message; what they do
spend is mostly the kernel's receive path, which grows with the number of TCP segments
a broker sends. Each generator reports its CPU time, and the broker's is read from
/proc, so table (c) shows which side was saturated.

All clients speak MQTT 3.1.1 with keep-alive 0 (no PINGREQ in the byte streams).
"""

from __future__ import annotations

import errno
import importlib.metadata
import os
import platform
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._broker import HOST, Broker, free_port
from ._clientproc import PAYLOAD, WINDOW
from ._report import Column, Section, Table
from .clients import Proc

REPO = Path(__file__).resolve().parent.parent
FAN = 10  # publishers of the fan-in row, subscribers of the fan-out row
CONNECTS = 1000  # connections per connect round, held open while the RSS is read
CONCURRENCY = 100  # handshakes in flight at once (below the listen backlogs, 100)
REPEATS = 5  # throughput rows: each broker's best of this many rounds ...
ROUND_TIME = 1.0  # ... of about this many seconds each
CONNECT_REPEATS = 5  # connect row: each broker's best of this many rounds of CONNECTS
WARMUP = 2_000  # deliveries in the uncounted first round
ROUND_MAX = 400_000  # deliveries per round
QUICK_N = 200  # --quick: one round of this many deliveries, one connect round of QUICK_CONNECTS
QUICK_CONNECTS = 50
IDLE = 5.0  # seconds without a byte after which a subscriber reports what it has
START_TIMEOUT = 30.0
ROUND_TIMEOUT = 120.0

V311 = 4
CONNACK_OK = b"\x20\x02\x00\x00"  # 3.1.1 CONNACK, no session present, accepted
DISCONNECT = b"\xe0\x00"
PUBACK_FIRST = b"\x40"

# -- the load generator (a separate process: ``gen ROLE ...``) --------------------------


def _fail(what: str) -> None:
    print(f"error {what}", flush=True)
    os._exit(1)


def _say(*words: object) -> None:
    print(*words, flush=True)


def _answer(*words: object) -> None:
    """An answer to the parent, ending with this process's CPU seconds so far."""
    _say(*words, sum(os.times()[:2]))


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            _fail(f"broker closed the connection after {data!r}")
        data += chunk
    return data


def _client(port: int, client_id: str) -> socket.socket:
    """A connected 3.1.1 client (blocking socket, CONNACK checked)."""
    from fieldline.mqtt import Connect, encode

    sock = socket.create_connection((HOST, port), timeout=START_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(encode(Connect(client_id, keep_alive=0, protocol_level=V311), V311))
    if (ack := _recv_exactly(sock, 4)) != CONNACK_OK:
        _fail(f"CONNACK {ack!r}")
    return sock


class Generator:
    """One process's connections and its ``selectors`` loop; commands come on stdin,
    one a line, answers go to stdout (see ``publishers``, ``subscribers``,
    ``connector``)."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.sel.register(0, selectors.EVENT_READ, self._stdin)
        self._line = b""
        self.on_command: Callable[[list[str]], None] = lambda words: None
        self.on_idle: Callable[[], None] = lambda: None
        self.timeout: float | None = None

    def _stdin(self, mask: int) -> None:
        data = os.read(0, 4096)
        if not data:
            os._exit(0)  # the parent went away
        self._line += data
        while b"\n" in self._line:
            line, self._line = self._line.split(b"\n", 1)
            words = line.decode().split()
            if words == ["end"]:
                os._exit(0)
            self.on_command(words)

    def run(self) -> None:
        while True:
            events = self.sel.select(self.timeout)
            if not events:
                self.on_idle()
            for key, mask in events:
                key.data(mask)


def publishers(port: int, n: int, topic: str, qos: int) -> None:
    """``ready``; then for ``go K`` every connection publishes K messages (QoS 1: at
    most WINDOW unacknowledged) and, once all are written (QoS 1: acknowledged),
    prints ``sent T0`` (monotonic clock before the first byte)."""
    from fieldline.mqtt import Publish, encode

    if qos:
        # Packet ids 1..65535 in turn: one stream of every id, sent round and round.
        frames = [encode(Publish(topic, PAYLOAD, 1, packet_id=i), V311) for i in range(1, 65536)]
    else:
        frames = [encode(Publish(topic, PAYLOAD, 0), V311)] * 1000
    size = len(frames[0])
    blob = memoryview(b"".join(frames))
    g = Generator()
    started = [0.0]  # monotonic time of the running "go", 0 when none runs

    class Conn:
        def __init__(self, i: int) -> None:
            self.sock = _client(port, f"bench-pub-{os.getpid()}-{i}")
            self.sock.setblocking(False)
            self.sent = self.target = 0  # bytes
            self.acked = 0  # messages
            self.rx = b""
            self.writing = False

        def done(self) -> bool:
            return self.sent == self.target and (not qos or self.acked * size == self.sent)

        def want_write(self, on: bool) -> None:
            if on != self.writing:
                self.writing = on
                mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
                g.sel.modify(self.sock, mask, self.event)

        def event(self, mask: int) -> None:
            if mask & selectors.EVENT_READ:
                data = self.sock.recv(1 << 16)
                if not data:
                    _fail("the broker closed a publisher's connection")
                buf = self.rx + data
                k = len(buf) // 4
                if buf[0 : 4 * k : 4] != PUBACK_FIRST * k:
                    _fail(f"expected PUBACKs, got {buf[:16]!r}")
                self.acked += k
                self.rx = buf[4 * k :]
            if mask & selectors.EVENT_WRITE or (qos and not self.writing):
                left = self.target - self.sent
                if qos:
                    left = min(left, (self.acked + WINDOW) * size - self.sent)
                if left > 0:
                    off = self.sent % len(blob)
                    try:
                        self.sent += self.sock.send(blob[off : off + left])
                    except BlockingIOError:
                        pass
                self.want_write(self.sent < self.target and left > 0)
            if started[0] and all(c.done() for c in conns):
                _answer("sent", started[0])
                started[0] = 0.0

    conns = [Conn(i) for i in range(n)]
    for c in conns:
        g.sel.register(c.sock, selectors.EVENT_READ, c.event)

    def command(words: list[str]) -> None:
        if words[0] != "go":
            _fail(f"unknown command {words}")
        started[0] = time.monotonic()
        for c in conns:
            c.target += int(words[1]) * size
            c.want_write(True)

    g.on_command = command
    _answer("ready")
    g.run()


def subscribers(port: int, n: int, topic: str, qos: int) -> None:
    """Subscribes n connections to TOPIC at QOS, ``ready``; for ``want TOTAL``
    prints ``ok``, then ``got TOTAL T`` once every connection has TOTAL messages since
    it subscribed (T: monotonic clock at the last), or ``got FEWEST T`` if no byte
    came for IDLE seconds (the broker dropped some)."""
    from fieldline.mqtt import Publish, Subscribe, Subscription, encode

    frame = encode(Publish(topic, PAYLOAD, qos, packet_id=1 if qos else None), V311)
    size = len(frame)
    head = frame[:2]  # fixed header byte and Remaining Length: the same in every one
    pid = 2 + 2 + len(topic.encode())  # offset of the packet id in a QoS 1 frame
    if qos and frame[pid : pid + 2] != b"\x00\x01":  # a Remaining Length of 2+ bytes
        _fail("the packet id is not where the subscriber looks for it")
    g = Generator()
    state = {"want": 0, "last": 0.0}

    class Conn:
        def __init__(self, i: int) -> None:
            self.sock = _client(port, f"bench-sub-{os.getpid()}-{i}")
            self.sock.sendall(encode(Subscribe(1, [Subscription(topic, qos)]), V311))
            suback = _recv_exactly(self.sock, 5)
            if suback != b"\x90\x03\x00\x01" + bytes([qos]):
                _fail(f"SUBACK {suback!r}")
            self.got = 0
            self.rest = b""

        def event(self, mask: int) -> None:
            data = self.sock.recv(1 << 18)
            if not data:
                _fail("the broker closed a subscriber's connection")
            state["last"] = time.monotonic()
            buf = self.rest + data if self.rest else data
            k = len(buf) // size
            whole = k * size
            if buf[0:whole:size] != head[:1] * k or buf[1:whole:size] != head[1:] * k:
                _fail(f"unexpected packet {buf[:32]!r}")
            if qos:
                ack = bytearray(4 * k)
                ack[0::4] = PUBACK_FIRST * k
                ack[1::4] = b"\x02" * k
                ack[2::4] = buf[pid:whole:size]
                ack[3::4] = buf[pid + 1 : whole : size]
                self.sock.sendall(ack)
            self.got += k
            self.rest = buf[whole:]
            check()

    conns = [Conn(i) for i in range(n)]
    for c in conns:
        g.sel.register(c.sock, selectors.EVENT_READ, c.event)

    def check() -> None:
        want = state["want"]
        if want and all(c.got >= want for c in conns):
            _answer("got", want, state["last"])
            state["want"] = 0
            g.timeout = None

    def command(words: list[str]) -> None:
        if words[0] != "want":
            _fail(f"unknown command {words}")
        state["want"] = int(words[1])
        g.timeout = IDLE
        _answer("ok")
        check()

    def idle() -> None:
        if state["want"]:
            _answer("got", min(c.got for c in conns), state["last"])
            state["want"] = 0
            g.timeout = None

    g.on_command = command
    g.on_idle = idle
    _answer("ready")
    g.run()


def connector(port: int) -> None:
    """For ``open K ROUND`` opens K connections, at most CONCURRENCY handshakes at
    once, each through TCP connect, CONNECT and CONNACK, keeps them open and prints
    ``opened T0 T1``; ``close`` sends DISCONNECT on each, closes them, prints
    ``closed``."""
    from fieldline.mqtt import Connect, encode

    g = Generator()
    held: list[socket.socket] = []
    todo: list[bytes] = []
    state = {"busy": 0, "t0": 0.0}

    class Handshake:
        def __init__(self, connect: bytes) -> None:
            self.connect = connect
            self.got = b""
            self.sock = s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            err = s.connect_ex((HOST, port))
            if err not in (0, errno.EINPROGRESS):
                _fail(f"connect: {os.strerror(err)}")
            try:
                # On loopback the handshake is usually done already: send at once and
                # skip a wake-up for "writable" (the generator's cost per connection).
                s.send(connect)
            except OSError:  # not connected yet (EAGAIN, ENOTCONN): when writable
                g.sel.register(s, selectors.EVENT_WRITE, self.event)
            else:
                g.sel.register(s, selectors.EVENT_READ, self.event)

        def event(self, mask: int) -> None:
            s = self.sock
            if mask & selectors.EVENT_WRITE:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    _fail(f"connect: {os.strerror(err)}")
                s.send(self.connect)  # a few dozen bytes into an empty buffer
                g.sel.modify(s, selectors.EVENT_READ, self.event)
                return
            data = s.recv(4 - len(self.got))
            if not data:
                _fail("the broker closed a connection before CONNACK")
            self.got += data
            if len(self.got) < 4:
                return
            if self.got != CONNACK_OK:
                _fail(f"CONNACK {self.got!r}")
            g.sel.unregister(s)
            held.append(s)
            state["busy"] -= 1
            if todo:
                start()
            elif not state["busy"]:
                _answer("opened", state["t0"], time.monotonic())

    def start() -> None:
        while todo and state["busy"] < CONCURRENCY:
            Handshake(todo.pop())
            state["busy"] += 1

    def command(words: list[str]) -> None:
        if words[0] == "open":
            k, r = int(words[1]), words[2]
            packets = [Connect(f"bench-c{r}-{i}", keep_alive=0, protocol_level=V311)
                       for i in range(k)]  # fmt: skip
            todo[:] = [encode(p, V311) for p in packets]
            state["t0"] = time.monotonic()
            start()
        elif words[0] == "close":
            for s in held:
                try:
                    s.send(DISCONNECT)
                except OSError:
                    pass
                s.close()
            held.clear()
            _answer("closed")
        else:
            _fail(f"unknown command {words}")

    g.on_command = command
    _answer("ready")
    g.run()


def generator_main(argv: list[str]) -> None:
    """``gen pub|sub PORT N TOPIC QOS`` or ``gen conn PORT``."""
    role, port = argv[0], int(argv[1])
    if role == "conn":
        connector(port)
    elif role in ("pub", "sub"):
        n, topic, qos = int(argv[2]), argv[3], int(argv[4])
        (publishers if role == "pub" else subscribers)(port, n, topic, qos)
    else:
        raise SystemExit(f"unknown role {role!r}")


def generator(*args: object) -> Proc:
    # -c rather than -m: the repository root goes on sys.path whatever the cwd.
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); import bench.broker as b; b.gen()"
    return Proc([sys.executable, "-c", code, *map(str, args)])


def gen() -> None:
    generator_main(sys.argv[1:])


# -- the brokers ------------------------------------------------------------------------

# Each broker is told to keep every message and never throttle a window, as Mosquitto
# is by bench/_broker.py (LIMITS).
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
plugins:
  amqtt.plugins.authentication.AnonymousAuthPlugin:
    allow_anonymous: true
"""

# `fieldline broker` with uvloop: the CLI has no option for it, but asyncio.run()
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

    def log(self) -> str:
        path = Path(self._tmp.name) / "broker.log" if self._tmp else None
        return path.read_text(errors="replace")[-3000:] if path and path.exists() else ""

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
                )
            self.pid = self._proc.pid
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self._proc.poll() is None:
                try:
                    socket.create_connection((HOST, self.port), timeout=0.5).close()
                    return self
                except OSError:
                    time.sleep(0.02)
            self._stop()
        raise RuntimeError(f"{self.argv(0, folder)[:4]} did not start:\n{self.log()}")

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __exit__(self, *exc: object) -> None:
        self._stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _fieldline(uvloop: bool) -> Callable[[int, Path], list[str]]:
    def argv(port: int, folder: Path) -> list[str]:
        config = folder / "fieldline.toml"
        config.write_text(FIELDLINE_CONFIG)
        start = ["-c", UVLOOP_LAUNCH] if uvloop else ["-m", "fieldline"]
        flags = ["broker", "--config", str(config), "--host", HOST, "--port", str(port)]
        return [sys.executable, *start, *flags]

    return argv


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
        Target("mosquitto", "Mosquitto", Broker),
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
    """Counted rounds of one row: ``deliveries`` in ``seconds`` (by the generators'
    clocks); over the same rounds, ``wall`` seconds by this process's clock and the CPU
    seconds the broker and the generators used (to show which one was saturated)."""

    deliveries: int = 0
    seconds: float = 0.0
    wall: float = 0.0
    broker_cpu: float = 0.0
    generator_cpu: float = 0.0
    lost: int = 0

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds

    def add(self, other: Result) -> None:
        self.deliveries += other.deliveries
        self.seconds += other.seconds
        self.wall += other.wall
        self.broker_cpu += other.broker_cpu
        self.generator_cpu += other.generator_cpu
        self.lost += other.lost

    def load(self) -> str:
        """``"broker 99% / generators 40%"`` of one core."""
        w = self.wall
        return f"{self.broker_cpu / w:.0%} / {self.generator_cpu / w:.0%}"


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
    """User + system CPU seconds of a running process so far (/proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Gen:
    """A generator process seen from here: every answer ends with the process's CPU
    seconds so far, kept in ``cpu``."""

    def __init__(self, *args: object) -> None:
        self.proc = generator(*args)
        self.cpu = 0.0

    def send(self, line: str) -> None:
        self.proc.send(line)

    def expect(self, word: str, timeout: float = ROUND_TIMEOUT) -> list[str]:
        words = self.proc.expect(word, timeout)
        self.cpu = float(words[-1])
        return words[:-1]


@contextmanager
def _generators(*gens: Gen) -> Iterator[None]:
    """Waits for each to be ready; ends them on the way out."""
    try:
        for g in gens:
            g.expect("ready", START_TIMEOUT)
        yield
        for g in gens:
            g.send("end")
            g.proc.wait()
    finally:
        for g in gens:
            if g.proc.popen.poll() is None:
                g.proc.popen.kill()


@contextmanager
def _metered(r: Result, pid: int, gens: tuple[Gen, ...]) -> Iterator[None]:
    """Adds the wall time and the CPU seconds of the block to ``r``."""
    w0, b0, g0 = time.monotonic(), cpu_seconds(pid), sum(g.cpu for g in gens)
    yield
    r.wall += time.monotonic() - w0
    r.broker_cpu += cpu_seconds(pid) - b0
    r.generator_cpu += sum(g.cpu for g in gens) - g0


@dataclass
class Row:
    key: str
    label: str
    pubs: int
    subs: int
    qos: int


ROWS = (
    Row("fan-in", f"QoS 0 fan-in, {FAN} publishers → 1 subscriber", FAN, 1, 0),
    Row("qos1", "QoS 1 end to end, 1 publisher → 1 subscriber", 1, 1, 1),
    Row("fan-out", f"QoS 0 fan-out, 1 publisher → {FAN} subscribers", 1, FAN, 0),
)
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
        self.per_sub = 0  # messages each subscriber has been told to expect, in all
        self.lost = 0

    def round(self, deliveries: int) -> Result:
        """About ``deliveries`` messages through the broker; the time runs from the
        publishers' first byte to the last subscriber's last message."""
        pubs, subs = self.row.pubs, self.row.subs
        each = max(1, deliveries // (pubs * subs))  # messages per publisher
        self.per_sub += each * pubs
        r = Result()
        with _metered(r, self.pid, (self.pub, self.sub)):
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


def _best(results: list[Result]) -> Result:
    """The fastest round, with the losses of all."""
    best = max(results, key=lambda r: r.rate)
    best.lost = sum(r.lost for r in results)
    return best


def throughput(row: Row, brokers: dict[str, Any], quick: bool) -> dict[str, Result]:
    """Each broker's best of REPEATS rounds of about ROUND_TIME seconds, the brokers
    taking turns (so a slow spell of this shared machine does not land on one of
    them alone), after a warm-up round each that also sizes their rounds."""
    flows = {key: Flow(b.port, b.pid, row) for key, b in brokers.items()}
    with _generators(*(g for f in flows.values() for g in (f.sub, f.pub))):
        if quick:
            return {key: f.round(QUICK_N) for key, f in flows.items()}
        warm = {key: f.round(WARMUP) for key, f in flows.items()}
        rate = {key: r.rate for key, r in warm.items()}
        results: dict[str, list[Result]] = {key: [] for key in flows}
        for _ in range(REPEATS):
            for key, f in flows.items():
                if not f.lost:
                    n = int(min(ROUND_MAX, max(WARMUP, rate[key] * ROUND_TIME)))
                    results[key].append(f.round(n))
                    rate[key] = results[key][-1].rate
    # A flow that lost messages in its warm-up has only that round to show.
    return {key: _best(rs or [warm[key]]) for key, rs in results.items()}


@dataclass
class Connects:
    result: Result
    rss_before: int  # KiB, the broker just started
    rss_held: int  # KiB, holding CONNECTS idle connections


def connect_rate(brokers: dict[str, Any], quick: bool) -> dict[str, Connects]:
    """Connections + CONNACKs per second: each broker's best of CONNECT_REPEATS rounds
    of CONNECTS connections, the brokers taking turns; the first round also reads
    the broker's VmRSS with them all open."""
    rss_before = {key: vm_rss(b.pid) for key, b in brokers.items()}
    rss_held: dict[str, int] = {}
    results: dict[str, list[Result]] = {key: [] for key in brokers}
    gens = {key: Gen("conn", b.port) for key, b in brokers.items()}
    size = QUICK_CONNECTS if quick else CONNECTS
    with _generators(*gens.values()):
        for i in range(1 if quick else CONNECT_REPEATS):
            for key, b in brokers.items():
                conn, r = gens[key], Result()
                with _metered(r, b.pid, (conn,)):
                    conn.send(f"open {size} {i}")
                    _, t0, t1 = conn.expect("opened")
                if i == 0:
                    rss_held[key] = vm_rss(b.pid)
                conn.send("close")
                conn.expect("closed")
                r.deliveries, r.seconds = size, float(t1) - float(t0)
                results[key].append(r)
    return {key: Connects(_best(rs), rss_before[key], rss_held[key]) for key, rs in results.items()}


# -- the section ------------------------------------------------------------------------


def _versions(keys: list[str]) -> str:
    parts = [f"{platform.python_implementation()} {platform.python_version()}"]
    if "uvloop" in keys:
        parts.append(f"uvloop {importlib.metadata.version('uvloop')}")
    if "amqtt" in keys:
        parts.append(f"amqtt {importlib.metadata.version('amqtt')}")
    return ", ".join(parts)


def run(quick: bool = False) -> Section:
    """Start every broker of ``targets()``, measure them on every row; returns the
    section. ``quick``: one small round per row (numbers mean nothing)."""
    brokers = targets()
    with ExitStack() as stack:
        running = {t.key: stack.enter_context(t.run()) for t in brokers}
        mosquitto_version = running["mosquitto"].version()
        _progress("connect rate")
        connects = connect_rate(running, quick)
        rates: dict[str, dict[str, Result]] = {}
        for row in ROWS:
            _progress(row.key)
            rates[row.key] = throughput(row, running, quick)

    others = [t for t in brokers if t.key != "mosquitto"]
    columns = [Column("row"), Column("Mosquitto msg/s", "rate")]
    for t in others:
        columns += [Column(f"{t.label} msg/s", "rate"), Column(f"{t.label} / Mosquitto", "ratio")]
    table = Table(columns, caption="**(a) messages per second** (connections per second for "
                  "the connect row), and each broker's ratio to Mosquitto")  # fmt: skip
    rows = [(row.label, rates[row.key]) for row in ROWS]
    rows.append((CONNECT_LABEL, {key: c.result for key, c in connects.items()}))
    for label, results in rows:
        ref = results["mosquitto"].rate
        cells: list[Any] = [label, ref]
        for t in others:
            cells += [results[t.key].rate, results[t.key].rate / ref]
        table.add(*cells)

    memory = Table(
        [
            Column("broker"),
            Column("RSS at start MiB", "kib"),
            Column(f"RSS with {CONNECTS:,} idle connections MiB", "kib"),
            Column("KiB per connection"),
        ],
        caption=f"**(b) broker memory** (VmRSS) with {CONNECTS:,} idle 3.1.1 connections",
    )
    held = QUICK_CONNECTS if quick else CONNECTS
    for t in brokers:
        c = connects[t.key]
        memory.add(t.label, c.rss_before, c.rss_held, f"{(c.rss_held - c.rss_before) / held:.1f}")

    load = Table(
        [Column("row"), *(Column(t.label) for t in brokers)],
        caption="**(c) where the cores went**: CPU time of the broker / of the load "
        "generators, as a share of one core during the round in (a) (2 cores in all)",
    )
    for label, results in rows:
        load.add(label, *(results[t.key].load() for t in brokers))
    lost = [
        f"{t.label}, {row.label}: {rates[row.key][t.key].lost:,}"
        for row in ROWS
        for t in brokers
        if rates[row.key][t.key].lost
    ]
    notes = [
        "All brokers run at once, each as its own process on 127.0.0.1, and take turns: "
        "each gets the same load from its own generator processes (`bench/broker.py`, "
        f"`gen`): MQTT 3.1.1, keep-alive 0, {len(PAYLOAD)}-byte payloads, one topic per "
        "row. msg/s = messages delivered to subscribers (fan-out: each copy counts) over "
        "the time from the publishers' first byte to the subscribers' last message; "
        f"each figure is the best of {REPEATS} rounds of about {ROUND_TIME:g} s, after a "
        f"warm-up round. QoS 1: the publisher keeps at most {WINDOW:,} PUBLISHes "
        "unacknowledged, the subscriber acknowledges every delivery.",
        f"Connect rate: best of {CONNECT_REPEATS} rounds of {CONNECTS:,} connections, at "
        f"most {CONCURRENCY} handshakes in flight; a round's connections stay open until "
        "all have their CONNACK, then send DISCONNECT and close (not timed). RSS is read "
        "from `/proc/PID/status` at start and while the first round's connections are "
        "open.",
        f"Brokers: {mosquitto_version} with `bench/_broker.py`'s limits (no queue limit, "
        "65,535 in flight); `python -m fieldline broker` with a configuration file of "
        "`max_inflight = 65535`, no connection limit and queue limits too high to reach; "
        "`fieldline + uvloop` is the same command started with uvloop's event loop policy "
        "installed (the CLI has no option for it); amqtt's own command "
        "(`amqtt.scripts.broker_script`) with one TCP listener and anonymous login, none of "
        "its other plugins.",
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
