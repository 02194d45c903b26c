"""The load for the broker table (bench/broker.py): generator processes of raw MQTT
3.1.1 sockets, and Mosquitto's C clients, each with the parent's handle on it.

**Generators** (this module run as ``python -c ... main()``, ``pub|sub PORT N TOPIC
QOS`` or ``conn PORT``): raw non-blocking sockets, one ``selectors`` loop per process,
packets encoded once by our codec before the clock starts, commands on stdin and
answers on stdout, one a line, each answer ending with the process's CPU seconds so
far. Publishers stream pre-encoded PUBLISH packets (QoS 1: at most ``WINDOW``
unacknowledged); subscribers never decode a message: every delivery on a topic is the
same number of bytes, so they count bytes, check each packet's first two bytes with
one slice, and (QoS 1) build the PUBACKs with slices. Their Python costs next to
nothing per message; what they do spend is mostly the kernel's receive path, which
grows with the number of TCP segments a broker sends. The connector opens and holds
thousands of connections (it raises its own RLIMIT_NOFILE to the hard limit).

**C clients**: one ``mosquitto_pub -l`` that publishes each line written to its stdin,
and one ``mosquitto_sub`` whose output lines are counted (``CFlow``).

All clients speak MQTT 3.1.1 with keep-alive 0 (the C clients: their default, 60 s).
``time.monotonic()`` is CLOCK_MONOTONIC, one clock for every process.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ._broker import HOST, cpu_seconds, more_files
from ._clientproc import PAYLOAD, WINDOW
from .clients import Proc

REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = 100  # handshakes in flight at once (below the listen backlogs, 100)
IDLE = 5.0  # seconds without a byte after which a subscriber reports what it has
START_TIMEOUT = 30.0
ROUND_TIMEOUT = 120.0

V311 = 4
CONNACK_OK = b"\x20\x02\x00\x00"  # 3.1.1 CONNACK, no session present, accepted
DISCONNECT = b"\xe0\x00"
PUBACK_FIRST = b"\x40"

# -- the generator processes ------------------------------------------------------------


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
    # want: messages each connection is to have; short: connections that have fewer.
    state = {"want": 0, "short": 0, "last": 0.0}

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
            want = state["want"]
            if self.got < want <= self.got + k:
                state["short"] -= 1  # this one has them all now
            self.got += k
            self.rest = buf[whole:]
            if want and not state["short"]:
                report(want)

    conns = [Conn(i) for i in range(n)]
    for c in conns:
        g.sel.register(c.sock, selectors.EVENT_READ, c.event)

    def report(got: object) -> None:
        _answer("got", got, state["last"])
        state["want"] = 0
        g.timeout = None

    def command(words: list[str]) -> None:
        if words[0] != "want":
            _fail(f"unknown command {words}")
        want = state["want"] = int(words[1])
        state["short"] = sum(c.got < want for c in conns)
        g.timeout = IDLE
        _answer("ok")
        if not state["short"]:
            report(want)

    def idle() -> None:
        if state["want"]:
            report(min(c.got for c in conns))

    g.on_command = command
    g.on_idle = idle
    _answer("ready")
    g.run()


def connector(port: int) -> None:
    """For ``open K ROUND LIMIT`` opens K connections, at most CONCURRENCY handshakes
    at once, each through TCP connect, CONNECT and CONNACK, keeps them open and prints
    ``opened N T0 T1`` (N: connections open, K unless LIMIT seconds ran out first);
    ``close`` sends DISCONNECT on each, closes them, prints ``closed``."""
    from fieldline.mqtt import Connect, encode

    g = Generator()
    held: list[socket.socket] = []
    todo: list[bytes] = []
    state = {"busy": 0, "t0": 0.0, "deadline": 0.0}  # deadline 0: no "open" running

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
            if not state["deadline"]:
                return  # late, after "opened": held, not counted
            in_time = time.monotonic() < state["deadline"]
            if todo and in_time:
                start()
            elif not state["busy"] or not in_time:
                opened()

    def start() -> None:
        while todo and state["busy"] < CONCURRENCY:
            Handshake(todo.pop())
            state["busy"] += 1

    def opened() -> None:
        _answer("opened", len(held), state["t0"], time.monotonic())
        state["deadline"] = 0.0
        todo.clear()
        g.timeout = None

    def idle() -> None:
        if state["deadline"] and time.monotonic() >= state["deadline"]:
            opened()

    def command(words: list[str]) -> None:
        if words[0] == "open":
            k, r, limit = int(words[1]), words[2], float(words[3])
            packets = [Connect(f"bench-c{r}-{i}", keep_alive=0, protocol_level=V311)
                       for i in range(k)]  # fmt: skip
            todo[:] = [encode(p, V311) for p in packets]
            state["t0"] = time.monotonic()
            state["deadline"] = state["t0"] + limit
            g.timeout = 1.0
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
    g.on_idle = idle
    _answer("ready")
    g.run()


def main(argv: list[str] | None = None) -> None:
    """A generator process: ``pub|sub PORT N TOPIC QOS`` or ``conn PORT``."""
    argv = sys.argv[1:] if argv is None else argv
    more_files()  # the connector holds thousands of sockets
    role, port = argv[0], int(argv[1])
    if role == "conn":
        connector(port)
    elif role in ("pub", "sub"):
        n, topic, qos = int(argv[2]), argv[3], int(argv[4])
        (publishers if role == "pub" else subscribers)(port, n, topic, qos)
    else:
        raise SystemExit(f"unknown role {role!r}")


# -- the parent's side --------------------------------------------------------------------


class Gen:
    """A generator process seen from the parent: every answer ends with the process's
    CPU seconds so far, kept for ``cpu_time``."""

    def __init__(self, *args: object) -> None:
        # -c rather than -m: the repository root goes on sys.path whatever the cwd.
        code = f"import sys; sys.path.insert(0, {str(REPO)!r}); import bench._loadgen; "
        code += "bench._loadgen.main()"
        self.proc = Proc([sys.executable, "-c", code, *map(str, args)])
        self.cpu = 0.0

    def cpu_time(self) -> float:
        """CPU seconds as of the last answer."""
        return self.cpu

    def send(self, line: str) -> None:
        self.proc.send(line)

    def expect(self, word: str, timeout: float = ROUND_TIMEOUT) -> list[str]:
        """The next answer, split, without the CPU seconds; raises RuntimeError unless
        it starts with ``word`` (or on EOF or timeout)."""
        words = self.proc.expect(word, timeout)
        self.cpu = float(words[-1])
        return words[:-1]

    def end(self) -> None:
        self.send("end")
        self.proc.wait()

    def kill(self) -> None:
        if self.proc.popen.poll() is None:
            self.proc.popen.kill()
            self.proc.popen.wait()


class _LineCounter:
    """Counts the lines a child writes to stdout, with the time of the chunk that
    brought the last of them (a thread reads the pipe)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        assert popen.stdout is not None
        self._fd = popen.stdout.fileno()
        self.count = 0
        self.last = 0.0  # monotonic time of the last chunk
        self.ended = False
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while chunk := os.read(self._fd, 1 << 16):
            t = time.monotonic()
            with self._cond:
                self.count += chunk.count(b"\n")
                self.last = t
                self._cond.notify_all()
        with self._cond:
            self.ended = True
            self._cond.notify_all()

    def wait(self, total: int, idle: float) -> tuple[int, float]:
        """(lines so far, time of the last) once there are ``total`` lines, or once
        none came for ``idle`` seconds or the pipe closed."""
        with self._cond:
            while self.count < total and not self.ended:
                seen = self.count

                def moved(seen: int = seen) -> bool:
                    return self.count != seen or self.ended

                if not self._cond.wait_for(moved, idle):
                    break
            return self.count, self.last


class CFlow:
    """Mosquitto's C clients through one broker: ``mosquitto_pub -l`` publishing each
    line written to its stdin at QOS (at most ``WINDOW`` in flight), ``mosquitto_sub``
    subscribed at QOS, printing each payload as a line that this process counts."""

    def __init__(self, pub: str, sub: str, port: int, topic: str, qos: int) -> None:
        self._err = tempfile.TemporaryFile()
        base = ["-h", HOST, "-p", str(port), "-t", topic, "-q", str(qos)]
        # A retained probe tells when mosquitto_sub has subscribed: its first line.
        probe = [pub, *base[:6], "-r", "-m", "probe"]
        subprocess.run(probe, check=True, timeout=START_TIMEOUT, capture_output=True)
        self.sub = subprocess.Popen(
            [sub, *base],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._err,
            bufsize=0,
        )
        self.lines = _LineCounter(self.sub)
        self.argv = [pub, *base, "-l", "-M", str(WINDOW)]
        self.pub = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._err
        )
        try:
            if self.lines.wait(1, START_TIMEOUT)[0] < 1:
                raise self.error("mosquitto_sub got no retained probe")
            # Delete the probe (amqtt 0.12.1 sends a retained message to later
            # subscriptions of other topics too); mosquitto_sub prints no line for it.
            clear = [*probe[:-3], "-q", "1", "-r", "-n"]
            subprocess.run(clear, check=True, timeout=START_TIMEOUT, capture_output=True)
        except BaseException:
            self.close()
            raise
        self.sent = 1  # lines mosquitto_sub should have printed, the probe's included

    def error(self, what: str) -> RuntimeError:
        self._err.seek(0)
        err = self._err.read().decode(errors="replace")[-3000:]
        return RuntimeError(f"{' '.join(self.argv)}: {what}\n{err}")

    def cpu_time(self) -> float:
        """CPU seconds of both clients so far."""
        return cpu_seconds(self.pub.pid) + cpu_seconds(self.sub.pid)

    def round(self, n: int) -> tuple[int, float, float]:
        """Writes ``n`` lines to mosquitto_pub; returns (lines mosquitto_sub printed of
        them, monotonic time before the write, time of the last line). Fewer than
        ``n``: the broker dropped some (no line for IDLE seconds)."""
        assert self.pub.stdin is not None
        if self.pub.poll() is not None or self.sub.poll() is not None:
            raise self.error("a client exited")
        before = self.sent
        self.sent += n
        t0 = time.monotonic()
        self.pub.stdin.write((PAYLOAD + b"\n") * n)
        self.pub.stdin.flush()
        got, t1 = self.lines.wait(self.sent, IDLE)
        return got - before, t0, t1

    def close(self) -> None:
        """Ends both clients (mosquitto_pub at the end of its input)."""
        if self.pub.stdin is not None:
            try:
                self.pub.stdin.close()
            except OSError:
                pass
        try:
            self.pub.wait(10)
        except subprocess.TimeoutExpired:
            self.pub.kill()
            self.pub.wait()
        self.sub.terminate()
        self.sub.wait()
        self._err.close()
