"""Network faults on loopback: a TCP proxy that can stall, drop and refuse.

``TcpProxy`` runs one thread in the test process and forwards every connection
it accepts to a target ``(host, port)``. Its controls are thread-safe and return
once the proxy thread has carried them out, so a test can call them from plain
code or from a coroutine (they block for well under a millisecond)::

    proxy = TcpProxy(("127.0.0.1", broker_port))
    client.connect(proxy.host, proxy.port)
    proxy.established.wait(1, timeout=5)         # sync
    await proxy.established.wait_async(1, 5)     # asyncio
    proxy.stall()    # forward nothing, either way; connections stay open (silence)
    proxy.resume()
    proxy.drop()     # RST every current connection (drop(reset=False): FIN)
    proxy.refuse()   # close the listening socket: new connects get ECONNREFUSED
    proxy.accept()   # listen again, on the same port
    proxy.close()    # all of it down, thread joined

``Count`` is the awaitable counter behind ``accepted``, ``established``, ``closed``,
``bytes_up`` and ``bytes_down``; ``tests/fakebroker.py`` uses it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

HOST = "127.0.0.1"
CONTROL_TIMEOUT = 5.0
# Per direction, stop reading from the source while this much is waiting to be written.
_HIGH_WATER = 256 * 1024
_CHUNK = 65536


class Count:
    """A thread-safe counter that tests can wait on, from threads or coroutines.

    ``value`` only grows. ``wait(n, timeout)`` blocks until ``value >= n`` and
    ``await wait_async(n, timeout)`` suspends until then; both raise
    ``TimeoutError`` (with the name and the value reached) when time runs out.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._value = 0
        self._cond = threading.Condition()
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def value(self) -> int:
        with self._cond:
            return self._value

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"<Count {self.name}={self.value}>"

    def increment(self, by: int = 1) -> None:
        with self._cond:
            self._value += by
            self._cond.notify_all()
            ready = [w for w in self._waiters if self._value >= w[0]]
            self._waiters = [w for w in self._waiters if self._value < w[0]]
        for _, loop, future in ready:
            with contextlib.suppress(RuntimeError):  # the loop may have closed
                loop.call_soon_threadsafe(_resolve, future)

    def wait(self, at_least: int = 1, timeout: float = 5.0) -> int:
        """Block until the count reaches ``at_least``; return the count."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._value >= at_least, timeout):
                raise TimeoutError(
                    f"{self.name} reached {self._value}, not {at_least}, within {timeout:g} s"
                )
            return self._value

    async def wait_async(self, at_least: int = 1, timeout: float = 5.0) -> int:
        """Suspend until the count reaches ``at_least``; return the count."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        entry = (at_least, loop, future)
        with self._cond:
            if self._value >= at_least:
                return self._value
            self._waiters.append(entry)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{self.name} reached {self.value}, not {at_least}, within {timeout:g} s"
            ) from None
        finally:
            with self._cond:
                if entry in self._waiters:
                    self._waiters.remove(entry)
        return self.value


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def abort(sock: socket.socket) -> None:
    """Close ``sock`` with an RST rather than a FIN (SO_LINGER on, timeout 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Pipe:
    """One proxied connection: the client's socket and ours to the target."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.to_upstream = bytearray()
        self.to_client = bytearray()
        self.client_eof = False  # the client sent FIN; pass it on once to_upstream drains
        self.upstream_eof = False

    def sockets(self) -> tuple[socket.socket, socket.socket]:
        return self.client, self.upstream


class TcpProxy:
    """A TCP proxy on ``127.0.0.1:<free port>`` forwarding to ``target``.

    Attributes: ``host``, ``port``, ``address`` (``"HOST:PORT"``), ``target``;
    counters ``accepted`` (client connections accepted), ``established`` (of those,
    connected to the target too), ``closed`` (connections ended, however),
    ``bytes_up`` / ``bytes_down`` (forwarded to the target / to the client), all
    ``Count`` objects; ``active`` is the number of connections open now.

    When the target refuses, the client's connection is reset at once (and counted
    in ``accepted`` and ``closed`` but not ``established``).
    """

    def __init__(self, target: tuple[str, int], host: str = HOST) -> None:
        self.host = host
        self.target = target
        self.accepted = Count("accepted")
        self.established = Count("established")
        self.closed = Count("closed")
        self.bytes_up = Count("bytes_up")
        self.bytes_down = Count("bytes_down")
        self._stall_up = False
        self._stall_down = False
        self._pipes: list[_Pipe] = []
        self._selector = selectors.DefaultSelector()
        self._commands: list[tuple[Callable[[], None], threading.Event]] = []
        self._lock = threading.Lock()
        self._running = True
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._listener: socket.socket | None = None
        self.port = 0
        self._listen()
        self._thread = threading.Thread(target=self._run, name=f"TcpProxy:{self.port}", daemon=True)
        self._thread.start()

    # -- public controls (any thread) -------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def active(self) -> int:
        return self._call(lambda: len(self._pipes))

    @property
    def stalled(self) -> bool:
        return self._stall_up or self._stall_down

    def stall(self, upstream: bool = True, downstream: bool = True) -> None:
        """Stop forwarding (client -> target if ``upstream``, target -> client if
        ``downstream``) without closing anything, so the peers see silence. New
        connections are still accepted and connected to the target, and stall too.
        Data already in flight stays in the kernel buffers until ``resume()``.
        """

        def do() -> None:
            self._stall_up = upstream
            self._stall_down = downstream

        self._call(do)

    def resume(self) -> None:
        """Forward again, both ways; what arrived during the stall follows."""
        self.stall(False, False)

    def drop(self, reset: bool = True) -> int:
        """Close every current connection, both sides, with an RST (``reset=True``) or a
        FIN; return how many were closed. The listener keeps accepting.
        """
        return self._call(lambda: self._drop_all(reset))

    def refuse(self) -> None:
        """Close the listening socket: new connections are refused (ECONNREFUSED).
        Current connections are left alone (``drop()`` them too for an outage).
        """
        self._call(self._unlisten)

    def accept(self) -> None:
        """Listen again on the same port after ``refuse()``."""

        def do() -> None:
            if self._listener is None:
                self._listen()

        self._call(do)

    def set_target(self, target: tuple[str, int]) -> None:
        """Forward connections accepted from now on to ``target``."""

        def do() -> None:
            self.target = target

        self._call(do)

    def close(self) -> None:
        """Stop: reset every connection, close the listener, join the thread."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(RuntimeError):
            self._call(self._shutdown)
        self._thread.join(CONTROL_TIMEOUT)
        if self._thread.is_alive():
            raise RuntimeError(f"{self!r}: proxy thread did not stop")

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "stalled" if self.stalled else "forwarding"
        if self._listener is None:
            state += ", refusing"
        return f"<TcpProxy {self.address} -> {self.target[0]}:{self.target[1]} {state}>"

    # -- running commands on the proxy thread ----------------------------------------

    def _call(self, fn: Callable[[], Any]) -> Any:
        if threading.current_thread() is self._thread:
            return fn()
        result: list[Any] = []
        error: list[BaseException] = []

        def run() -> None:
            try:
                result.append(fn())
            except BaseException as e:  # handed back to the caller
                error.append(e)

        done = threading.Event()
        with self._lock:
            if not self._running:
                raise RuntimeError(f"{self!r} is closed")
            self._commands.append((run, done))
        self._wake()
        if not done.wait(CONTROL_TIMEOUT):
            raise RuntimeError(f"{self!r}: proxy thread did not answer")
        if error:
            raise error[0]
        if not result:  # the proxy closed before running it
            raise RuntimeError(f"{self!r} is closed")
        return result[0]

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # -- the proxy thread --------------------------------------------------------------

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(64)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._listener = sock
        self._selector.register(sock, selectors.EVENT_READ, None)

    def _unlisten(self) -> None:
        if self._listener is not None:
            self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None

    def _shutdown(self) -> None:
        self._drop_all(reset=True)
        self._unlisten()
        self._running = False

    def _drop_all(self, reset: bool) -> int:
        pipes = list(self._pipes)
        for pipe in pipes:
            self._close_pipe(pipe, reset)
        return len(pipes)

    def _close_pipe(self, pipe: _Pipe, reset: bool) -> None:
        if pipe not in self._pipes:
            return
        self._pipes.remove(pipe)
        for sock in pipe.sockets():
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            if reset:
                abort(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self.closed.increment()

    def _accept_one(self) -> None:
        assert self._listener is not None
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self.accepted.increment()
        try:
            # Loopback connects complete or fail at once; a blocking connect is fine here.
            upstream = socket.create_connection(self.target, timeout=CONTROL_TIMEOUT)
        except OSError:
            abort(client)
            self.closed.increment()
            return
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipe = _Pipe(client, upstream)
        self._pipes.append(pipe)
        self._interest(pipe)
        self.established.increment()

    def _interest(self, pipe: _Pipe) -> None:
        """Register for exactly the events this pipe can act on now."""
        up_events = down_events = 0  # for the client socket / the upstream socket
        if not self._stall_up:
            if not pipe.client_eof and len(pipe.to_upstream) < _HIGH_WATER:
                up_events |= selectors.EVENT_READ
            if pipe.to_upstream:
                down_events |= selectors.EVENT_WRITE
        if not self._stall_down:
            if not pipe.upstream_eof and len(pipe.to_client) < _HIGH_WATER:
                down_events |= selectors.EVENT_READ
            if pipe.to_client:
                up_events |= selectors.EVENT_WRITE
        for sock, events in ((pipe.client, up_events), (pipe.upstream, down_events)):
            key = self._selector.get_map().get(sock)
            if events and key is None:
                self._selector.register(sock, events, pipe)
            elif events and key is not None and key.events != events:
                self._selector.modify(sock, events, pipe)
            elif not events and key is not None:
                self._selector.unregister(sock)

    def _service(self, pipe: _Pipe, sock: socket.socket, events: int) -> None:
        from_client = sock is pipe.client
        if events & selectors.EVENT_READ:
            try:
                data = sock.recv(_CHUNK)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:  # reset by the peer: pass the reset on
                self._close_pipe(pipe, reset=True)
                return
            if data is not None:
                if from_client:
                    pipe.to_upstream += data
                    pipe.client_eof = not data
                else:
                    pipe.to_client += data
                    pipe.upstream_eof = not data
        if events & selectors.EVENT_WRITE:
            buffer = pipe.to_client if from_client else pipe.to_upstream
            try:
                sent = sock.send(buffer)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close_pipe(pipe, reset=True)
                return
            del buffer[:sent]
            if sent:
                (self.bytes_down if from_client else self.bytes_up).increment(sent)
        self._pass_eof(pipe)

    def _pass_eof(self, pipe: _Pipe) -> None:
        """Half-close towards a peer once the other side's FIN and data are through."""
        if pipe.client_eof and not pipe.to_upstream:
            with contextlib.suppress(OSError):
                pipe.upstream.shutdown(socket.SHUT_WR)
        if pipe.upstream_eof and not pipe.to_client:
            with contextlib.suppress(OSError):
                pipe.client.shutdown(socket.SHUT_WR)
        if pipe.client_eof and pipe.upstream_eof and not pipe.to_upstream and not pipe.to_client:
            self._close_pipe(pipe, reset=False)

    def _run(self) -> None:
        try:
            while True:
                for pipe in list(self._pipes):
                    self._interest(pipe)
                for key, events in self._selector.select():
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._wake_r:
                        with contextlib.suppress(OSError):
                            sock.recv(4096)
                    elif sock is self._listener:
                        self._accept_one()
                    elif key.data in self._pipes:  # an earlier event may have closed it
                        self._service(key.data, sock, events)
                with self._lock:
                    commands, self._commands = self._commands, []
                for run, done in commands:
                    run()
                    done.set()
                if not self._running:
                    break
        finally:
            with self._lock:
                self._running = False
                commands, self._commands = self._commands, []
            for _, done in commands:
                done.set()
            for pipe in list(self._pipes):
                self._close_pipe(pipe, reset=True)
            self._unlisten()
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()
