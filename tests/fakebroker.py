"""A scripted, misbehaving MQTT server on loopback, for client error-path tests.

Each accepted connection runs a script in its own thread: a list of steps, or one
function taking the ``FakeConnection``. Connection ``i`` runs script ``i``; later
connections run the last script again. When a script ends without closing, the
connection is held open, reading and recording, until the client closes it or the
broker is closed: a broker that never answers is ``FakeBroker([recv(CONNECT)])``.

    broker = FakeBroker([recv(CONNECT), send(connack(0)), send(GARBAGE)])
    ... connect a client to broker.host, broker.port ...
    conn = broker.connection(0)             # waits for the first connection
    conn.finished.wait(timeout=5)           # the script and the hold after it ended
    assert conn.packets[0][0] >> 4 == CONNECT
    broker.close()

What went wrong in a script (the client closed early, a packet of the wrong type,
a timeout) is recorded in ``conn.error`` and ends that connection; ``check()``
raises it. Nothing is raised at teardown, since clients under test often hang up
mid-script on purpose.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Callable, Sequence

from netfaults import HOST, Count, abort

# MQTT control packet types (first byte >> 4).
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

CONNACK_OK = b"\x20\x02\x00\x00"
PINGRESP_BYTES = b"\xd0\x00"
GARBAGE = b"\xde\xad\xbe\xef" * 4  # 0xd0 reads as a PINGRESP type with remaining length 0xad...
# A PUBLISH claiming the largest remaining length there is (268,435,455), then nothing.
OVERSIZED_REMAINING_LENGTH = b"\x30\xff\xff\xff\x7f"
# A remaining length with a fifth continuation byte, which MQTT-2.2.3 does not allow.
MALFORMED_REMAINING_LENGTH = b"\x30\xff\xff\xff\xff\x01"

STEP_TIMEOUT = 5.0


def connack(code: int = 0, session_present: bool = False, properties: bytes | None = None) -> bytes:
    """A CONNACK: 3.1.1 (return code) when ``properties`` is None, else 5.0 (reason
    code, then the given property bytes, whose length is prefixed here).
    """
    body = bytes([1 if session_present else 0, code])
    if properties is not None:
        body += encode_varint(len(properties)) + properties
    return bytes([CONNACK << 4]) + encode_varint(len(body)) + body


def connack_ok(version: int, session_present: bool = False) -> bytes:
    """The CONNACK accepting a client of protocol level ``version`` (4 or 5)."""
    return connack(0, session_present, properties=b"" if version == 5 else None)


def suback_for(subscribe: bytes, version: int, qos: int = 1) -> bytes:
    """The SUBACK granting ``qos`` to ``subscribe``, the bytes of a one-filter
    SUBSCRIBE (short: a one-byte Remaining Length), of protocol ``version``."""
    assert subscribe[0] >> 4 == SUBSCRIBE, subscribe
    body = subscribe[2:4] + (b"\x00" if version == 5 else b"") + bytes([qos])
    return bytes([SUBACK << 4, len(body)]) + body


def prop(pid: int, value: bytes) -> bytes:
    """A 5.0 property with a string or binary value: id, two-byte length, bytes."""
    return bytes([pid]) + len(value).to_bytes(2, "big") + value


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class PeerClosed(ConnectionError):
    """The client closed (or reset) the connection while a step needed it."""


class FakeConnection:
    """One accepted connection, as a script sees it, and what was recorded.

    ``received`` holds every byte read from the client; ``packets`` the whole packets
    read by ``recv_packet()`` (``packets_received`` counts them, to wait on);
    ``peer_closed`` / ``peer_reset`` say whether the client closed (FIN) / reset (RST)
    it; ``error`` is what ended the script early, if anything; ``finished`` (a
    ``Count``) reaches 1 when this connection is done.
    """

    def __init__(self, index: int, sock: socket.socket, stopping: threading.Event) -> None:
        self.index = index
        self.sock = sock
        self.received = bytearray()
        self.packets: list[bytes] = []
        self.peer_closed = False
        self.peer_reset = False
        self.closed = False  # closed by the script
        self.error: BaseException | None = None
        self.packets_received = Count(f"connection {index} packets")
        self.finished = Count(f"connection {index} finished")
        self._stopping = stopping

    def __repr__(self) -> str:
        return (
            f"<FakeConnection {self.index} packets={len(self.packets)} "
            f"received={len(self.received)}B peer_closed={self.peer_closed} error={self.error!r}>"
        )

    def _read(self, n: int, timeout: float | None) -> bytes:
        """Exactly ``n`` bytes; PeerClosed at EOF, TimeoutError after ``timeout``."""
        self.sock.settimeout(timeout)
        out = bytearray()
        while len(out) < n:
            try:
                chunk = self.sock.recv(n - len(out))
            except ConnectionResetError as e:
                self.peer_closed = self.peer_reset = True
                raise PeerClosed(f"connection reset by the client after {bytes(out)!r}") from e
            if not chunk:
                if self._stopping.is_set():
                    raise PeerClosed("the fake broker is closing")
                self.peer_closed = True
                raise PeerClosed(f"the client closed the connection after {bytes(out)!r}")
            self.received += chunk
            out += chunk
        return bytes(out)

    def recv_packet(self, timeout: float | None = STEP_TIMEOUT) -> bytes:
        """Read one whole MQTT packet (fixed header included), record and return it."""
        first = self._read(1, timeout)
        header = bytearray(first)
        length = shift = 0
        for _ in range(4):
            byte = self._read(1, timeout)[0]
            header.append(byte)
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        else:
            raise ValueError(f"malformed remaining length from the client: {bytes(header)!r}")
        packet = bytes(header) + self._read(length, timeout)
        self.packets.append(packet)
        self.packets_received.increment()
        return packet

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            self.peer_closed = True
            self.peer_reset = isinstance(e, ConnectionResetError)
            raise PeerClosed(f"could not send {data[:16]!r}...: {e}") from e

    def close(self) -> None:
        """Close gracefully (FIN); later steps cannot use the connection."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()

    def reset(self) -> None:
        """Close abruptly (RST)."""
        if not self.closed:
            self.closed = True
            abort(self.sock)

    def pause(self, seconds: float) -> None:
        """Do nothing for ``seconds`` (a slow server), or less if the broker closes."""
        self._stopping.wait(seconds)

    def hold(self) -> None:
        """Read and record packets until the client closes (or the broker closes)."""
        try:
            while True:
                self.recv_packet(timeout=None)
        except PeerClosed:
            return
        except ValueError:  # not MQTT framing: keep the raw bytes
            self.wait_closed(timeout=None)

    def wait_closed(self, timeout: float | None = STEP_TIMEOUT) -> None:
        """Read (recording raw bytes) until the client closes; TimeoutError if it does
        not in time.
        """
        self.sock.settimeout(timeout)
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                self.peer_closed = self.peer_reset = True
                return
            if not chunk:
                self.peer_closed = not self._stopping.is_set()
                return
            self.received += chunk


Step = Callable[[FakeConnection], object]
Script = Step | Sequence[Step]


# -- steps -------------------------------------------------------------------------------


def recv(packet_type: int | None = None, timeout: float = STEP_TIMEOUT) -> Step:
    """Read one packet; if ``packet_type`` is given, it must be of that type."""

    def step(conn: FakeConnection) -> None:
        packet = conn.recv_packet(timeout)
        if packet_type is not None and packet[0] >> 4 != packet_type:
            raise AssertionError(f"expected packet type {packet_type}, got {packet!r}")

    return step


def send(data: bytes) -> Step:
    """Send raw bytes."""
    return lambda conn: conn.send(data)


def close() -> Step:
    """Close the connection (FIN)."""
    return lambda conn: conn.close()


def accept_then_close(version: int) -> Script:
    """A script: take the CONNECT, accept it, then close the connection."""
    return [recv(CONNECT), send(connack_ok(version)), close()]


def reset() -> Step:
    """Reset the connection (RST)."""
    return lambda conn: conn.reset()


def pause(seconds: float) -> Step:
    """Wait ``seconds`` before the next step (interrupted when the broker closes)."""
    return lambda conn: conn.pause(seconds)


def expect_close(timeout: float = STEP_TIMEOUT) -> Step:
    """The client must close the connection within ``timeout`` (else the script fails)."""
    return lambda conn: conn.wait_closed(timeout)


# -- the server --------------------------------------------------------------------------


class FakeBroker:
    """A scripted server on ``127.0.0.1:<free port>``; see the module docstring.

    ``accepted`` and ``finished`` are ``Count`` objects (wait on them, sync or async);
    ``connections`` lists every ``FakeConnection`` in accept order.
    """

    def __init__(self, *scripts: Script, host: str = HOST) -> None:
        if not scripts:
            raise ValueError("FakeBroker needs at least one script")
        self.host = host
        self.scripts = scripts
        self.connections: list[FakeConnection] = []
        self.accepted = Count("accepted")
        self.finished = Count("finished")
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((host, 0))
        self._listener.listen(16)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"FakeBroker:{self.port}", daemon=True
        )
        self._acceptor.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def connection(self, index: int = 0, timeout: float = STEP_TIMEOUT) -> FakeConnection:
        """Connection ``index``, waiting up to ``timeout`` for it to be accepted."""
        self.accepted.wait(index + 1, timeout)
        return self.connections[index]

    def errors(self) -> list[BaseException]:
        return [c.error for c in self.connections if c.error is not None]

    def check(self) -> None:
        """Raise AssertionError if any finished script failed."""
        failed = [c for c in self.connections if c.error is not None]
        if failed:
            raise AssertionError(f"fake broker scripts failed: {failed}") from failed[0].error

    def close(self) -> None:
        """Stop accepting, end every connection, join every thread."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        self._acceptor.join(STEP_TIMEOUT)
        for conn in list(self.connections):
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv
        for thread in self._threads:
            thread.join(STEP_TIMEOUT)
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        alive = [t.name for t in [self._acceptor, *self._threads] if t.is_alive()]
        if alive:
            raise RuntimeError(f"fake broker threads did not stop: {alive}")

    def __enter__(self) -> FakeBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FakeBroker {self.address} connections={len(self.connections)}>"

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is not self._listener or self._stopping.is_set():
                        continue
                    sock, _ = self._listener.accept()
                    conn = FakeConnection(len(self.connections), sock, self._stopping)
                    self.connections.append(conn)
                    script = self.scripts[min(conn.index, len(self.scripts) - 1)]
                    thread = threading.Thread(
                        target=self._serve,
                        args=(conn, script),
                        name=f"FakeBroker:{self.port}#{conn.index}",
                        daemon=True,
                    )
                    self._threads.append(thread)
                    thread.start()
                    self.accepted.increment()

    def _serve(self, conn: FakeConnection, script: Script) -> None:
        try:
            if callable(script):
                script(conn)
            else:
                for step in script:
                    step(conn)
                    if conn.closed:
                        break
            if not conn.closed:
                conn.hold()
        except BaseException as e:  # recorded for the test; see check()
            if not self._stopping.is_set():
                conn.error = e
        finally:
            conn.close()
            conn.finished.increment()
            self.finished.increment()
