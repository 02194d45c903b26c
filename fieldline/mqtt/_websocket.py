"""MQTT over WebSocket (MQTT 5.0 section 6): adapters that make a WebSocket
look like the byte stream the clients already speak.

CPython only: it is built on ``wsproto`` (sans-IO WebSocket, on ``h11``),
which MicroPython cannot run, so the clients import this module only when
``transport="websockets"`` and a board never loads it.

The MQTT byte stream travels in binary frames and may be cut anywhere
(MQTT-6.0.0-2): a frame may hold part of a packet or several packets, so
both adapters only collect the frames' bytes in order. ``WebSocket`` wraps a
connected (optionally TLS) socket for the blocking ``Client``;
``open_websocket()`` returns the (reader, writer) pair ``AsyncClient`` uses.
Pings are answered, a close frame is answered and ends the stream (``b""``).
"""

from __future__ import annotations

import asyncio
import http
import socket
import ssl as _ssl
from collections.abc import Iterable, Mapping

try:
    from wsproto import ConnectionType, WSConnection
    from wsproto.connection import ConnectionState
    from wsproto.events import (
        AcceptConnection,
        BytesMessage,
        CloseConnection,
        Ping,
        RejectConnection,
        Request,
        TextMessage,
    )
    from wsproto.utilities import ProtocolError
except ImportError as e:  # an extra: the clients need it only for this transport
    raise ImportError(
        f"transport='websockets' needs wsproto ({e}): pip install 'fieldline[ws]'"
    ) from e

__all__ = ["UpgradeRefused", "WebSocket", "WebSocketError", "open_websocket"]

SUBPROTOCOL = "mqtt"  # MQTT-6.0.0-3: the client offers it; MQTT-6.0.0-4: the server picks it
_NORMAL = (1000, 1001, 1005, 1006)  # normal, going away, no code, TCP closed
_UNSUPPORTED_DATA = 1003
_READ = 65536

Headers = Mapping[str, str] | Iterable[tuple[str, str]] | None


class WebSocketError(OSError):
    """The WebSocket layer failed: a bad handshake answer, a text frame
    (MQTT-6.0.0-1), or a close frame with an error code (``code``)."""

    code: int | None = None


class UpgradeRefused(WebSocketError, ConnectionRefusedError):
    """The server answered the upgrade request with ``status_code`` instead
    of 101 (e.g. 404: no WebSocket endpoint at that path). ``headers``: the
    answer's headers as (name, value) byte pairs."""

    def __init__(self, status_code: int, headers: list[tuple[bytes, bytes]]) -> None:
        try:
            phrase = " " + http.HTTPStatus(status_code).phrase
        except ValueError:
            phrase = ""
        super().__init__(
            "WebSocket upgrade refused: HTTP %d%s (expected 101 Switching Protocols)"
            % (status_code, phrase)
        )
        self.status_code = status_code
        self.headers = headers


def host_header(host: str, port: int, tls: bool) -> str:
    """The Host header for ``host:port``: the port only when not the
    scheme's default (RFC 6455 4.1), an IPv6 literal in brackets."""
    if ":" in host and not host.startswith("["):
        host = "[" + host + "]"
    return host if port == (443 if tls else 80) else "%s:%d" % (host, port)


class _Core:
    """The I/O-free half both adapters share: the handshake, and frames in
    and out. ``feed()`` collects MQTT bytes in ``buffer`` and returns the
    bytes to send back (pongs, the close answer)."""

    def __init__(self) -> None:
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.buffer = bytearray()  # MQTT bytes decoded, not yet returned
        self.closed = False  # a close frame came (or the TCP stream ended)
        self.error: WebSocketError | None = None  # raised once the buffer is drained
        self.reply = b""  # what to send right after the handshake (pongs)

    def request(self, host: str, path: str, headers: Headers) -> bytes:
        extra = list((headers.items() if isinstance(headers, Mapping) else headers) or ())
        return self.ws.send(
            Request(
                host=host,
                target=path,
                subprotocols=[SUBPROTOCOL],
                extra_headers=[(k.encode(), v.encode()) for k, v in extra],
            )
        )

    def handshake(self, data: bytes) -> bool:
        """Feed the server's answer; True once the upgrade is accepted.
        Raises UpgradeRefused or WebSocketError."""
        try:
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    # Frames sent right behind the 101 are already in wsproto.
                    self.reply = self.collect()
                    return True
                if isinstance(event, RejectConnection):
                    raise UpgradeRefused(event.status_code, event.headers)
        except ProtocolError as e:  # not HTTP, a bad Sec-WebSocket-Accept, ...
            raise WebSocketError("bad WebSocket handshake answer: %s" % e) from None
        if not data:
            raise WebSocketError("the server closed the connection during the WebSocket handshake")
        return False

    def feed(self, data: bytes) -> bytes:
        """Feed bytes read (``b""``: the stream ended); returns what to send back."""
        if self.ws.state != ConnectionState.CLOSED:
            self.ws.receive_data(data or None)
        return self.collect()

    def collect(self) -> bytes:
        """Handle the frames wsproto decoded; returns what to send back."""
        ws = self.ws
        out = b""
        for event in ws.events():
            if isinstance(event, BytesMessage):
                self.buffer += event.data
            elif isinstance(event, Ping):
                out += ws.send(event.response())
            elif isinstance(event, CloseConnection):
                self.closed = True
                if ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                    out += ws.send(event.response())  # answer, or report a parse failure
                if event.code not in _NORMAL:
                    self._fail(event.code, event.reason)
            elif isinstance(event, TextMessage):
                # MQTT-6.0.0-1: only binary frames; anything else closes the connection.
                self.closed = True
                if ws.state == ConnectionState.OPEN:
                    out += ws.send(CloseConnection(_UNSUPPORTED_DATA, "MQTT needs binary frames"))
                self._fail(_UNSUPPORTED_DATA, "a text frame (MQTT-6.0.0-1)")
        return out

    def _fail(self, code: int, reason: str | None) -> None:
        if self.error is None:
            e = self.error = WebSocketError(
                "WebSocket closed: %d %s" % (code, reason or "(no reason)")
            )
            e.code = code

    def take(self, n: int) -> bytes:
        """Up to ``n`` MQTT bytes; ``b""`` after the close once the buffer is
        drained. Raises the WebSocketError the close carried."""
        buf = self.buffer
        if buf:
            data = bytes(buf[:n])
            del buf[:n]
            return data
        if self.error is not None:
            raise self.error
        return b""

    def frame(self, data: bytes) -> bytes:
        """One binary frame carrying ``data``. Raises WebSocketError once closed."""
        if self.ws.state != ConnectionState.OPEN:
            raise self.error or WebSocketError("the WebSocket is closed")
        return self.ws.send(BytesMessage(data=bytes(data)))

    def close_frame(self) -> bytes:
        if self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            return self.ws.send(CloseConnection(1000))
        return b""


class WebSocket:
    """A connected socket (plain or TLS), upgraded to WebSocket, for the
    blocking client: ``sendall()`` sends one binary frame, ``recv(n)``
    returns MQTT bytes (``b""`` at the end), ``pending()`` counts bytes
    decoded but not yet returned, and ``fileno()`` lets ``select.poll``
    watch the socket beneath.

    ``host``/``port`` make the Host header; ``path`` is the request target;
    ``headers``: extra request headers (a dict or (name, value) pairs).
    The handshake runs here, with the socket's timeout. Raises
    UpgradeRefused (not 101), WebSocketError (not a WebSocket answer), OSError;
    the caller then still owns ``sock`` and closes it.
    """

    def __init__(
        self,
        sock: socket.socket,
        host: str,
        port: int,
        path: str = "/mqtt",
        headers: Headers = None,
    ) -> None:
        self._sock = sock
        self._core = core = _Core()
        tls = isinstance(sock, _ssl.SSLSocket)
        sock.sendall(core.request(host_header(host, port, tls), path, headers))
        while not core.handshake(sock.recv(_READ)):
            pass
        if core.reply:
            sock.sendall(core.reply)

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(self._core.frame(data))

    def recv(self, n: int) -> bytes | None:
        """Up to ``n`` MQTT bytes, after at most one read of the socket
        (which waits, the socket's timeout); ``b""`` at the end. None when
        that read held no MQTT bytes (a ping, part of a frame), as a
        non-blocking socket says "nothing yet": waiting on for MQTT bytes
        would hold the client, and its keepalive, until the timeout."""
        core = self._core
        if not core.buffer and not core.closed:
            data = self._sock.recv(_READ)
            out = core.feed(data)
            if out:
                try:
                    self._sock.sendall(out)
                except OSError:
                    if not core.closed:
                        raise
            if not data:
                core.closed = True
            elif not core.buffer and not core.closed:
                return None
        return core.take(n)

    def pending(self) -> int:
        """Bytes ready for ``recv()`` without waiting on the socket (1 for a
        close not yet reported: the socket may never turn readable again)."""
        core = self._core
        if core.buffer:
            return len(core.buffer)
        if core.closed:
            return 1
        pending = getattr(self._sock, "pending", None)  # TLS: bytes already decrypted
        return pending() if pending is not None else 0

    def close(self) -> None:
        """Send a close frame (best effort) and close the socket."""
        try:
            data = self._core.close_frame()
            if data:
                self._sock.sendall(data)
        except OSError:
            pass
        finally:
            self._sock.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)


class _Reader:
    """``read(n)`` of an asyncio StreamReader, returning MQTT bytes."""

    def __init__(
        self, core: _Core, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._core = core
        self._reader = reader
        self._writer = writer

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` MQTT bytes (all there are for -1); ``b""`` at the end.
        Raises WebSocketError for a close frame with an error code."""
        core = self._core
        while not core.buffer and not core.closed:
            data = await self._reader.read(_READ)
            out = core.feed(data)
            if out and not self._writer.is_closing():
                self._writer.write(out)  # whole frames: never interleaved with ours
            if not data:
                core.closed = True
        return core.take(len(core.buffer) if n < 0 else n)


class _Writer:
    """``write()``/``drain()``/``close()``/``wait_closed()`` of an asyncio
    StreamWriter; each ``write()`` sends one binary frame."""

    def __init__(self, core: _Core, writer: asyncio.StreamWriter) -> None:
        self._core = core
        self._writer = writer

    def write(self, data: bytes) -> None:
        self._writer.write(self._core.frame(data))

    async def drain(self) -> None:
        await self._writer.drain()

    def close(self) -> None:
        """Send a close frame (best effort) and close the connection."""
        w = self._writer
        if not w.is_closing():
            try:
                w.write(self._core.close_frame())
            except (OSError, RuntimeError):
                pass
        w.close()

    def is_closing(self) -> bool:
        return self._writer.is_closing()

    async def wait_closed(self) -> None:
        await self._writer.wait_closed()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._writer.get_extra_info(name, default)


async def open_websocket(
    host: str,
    port: int,
    ssl: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    path: str = "/mqtt",
    headers: Headers = None,
) -> tuple[_Reader, _Writer]:
    """Connect to ``host:port`` (TLS with ``ssl``: wss), upgrade to WebSocket
    and return (reader, writer) carrying MQTT bytes. Raises UpgradeRefused
    (not 101), WebSocketError (not a WebSocket answer), OSError."""
    if ssl is not None:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl, server_hostname=server_hostname or host
        )
    else:
        reader, writer = await asyncio.open_connection(host, port)
    core = _Core()
    try:
        writer.write(core.request(host_header(host, port, ssl is not None), path, headers))
        while not core.handshake(await reader.read(_READ)):
            pass
        if core.reply:
            writer.write(core.reply)
    except BaseException:
        writer.close()
        raise
    return _Reader(core, reader, writer), _Writer(core, writer)
