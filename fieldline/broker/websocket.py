"""MQTT over WebSocket, the server side (MQTT 5.0 section 6): a thin asyncio adapter on
``wsproto`` (sans-IO) in front of the unchanged MQTT ``Connection``.

``WebSocketProtocol`` is the protocol of the network connection. It answers the HTTP
upgrade (subprotocol ``mqtt``, MQTT-6.0.0-3/4), then unwraps binary frames and hands
their bytes to the ``Connection`` in order: the MQTT byte stream may be cut anywhere
across frames (MQTT-6.0.0-2), so nothing here looks at packets. The ``Connection``
writes through ``FrameTransport``, which sends each write as one binary frame and passes
everything else (close, buffer sizes, flow control, peer address and certificate) to
the real transport. A text frame closes the connection (MQTT-6.0.0-1); a frame wsproto
cannot parse is answered with the close code it names. Pings are answered, but while
the network takes no bytes only the latest Pong waits: a peer that pings and never
reads costs one Pong, not one per Ping. The ``Connection`` is made when
the network connection is, so its ``connect_timeout`` covers the upgrade too.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Iterable
from typing import Any, cast

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
from wsproto.utilities import ProtocolError, RemoteProtocolError

from .config import ANY_PATH

log = logging.getLogger("fieldline.broker")

SUBPROTOCOL = "mqtt"
_MAX_REQUEST = 16 * 1024  # bytes of upgrade request headers we read before refusing
_NORMAL_CLOSURE = 1000
_UNSUPPORTED_DATA = 1003

_Buffer = bytes | bytearray | memoryview


class WebSocketProtocol(asyncio.Protocol):
    """The network side of one WebSocket connection, feeding ``inner`` (a
    ``Connection``). ``path``: the request target to accept (``"*"``: any); another
    answers 404, a request without the ``mqtt`` subprotocol 400."""

    def __init__(self, inner: asyncio.Protocol, path: str) -> None:
        self.inner = inner
        self.path = path
        self.ws = WSConnection(ConnectionType.SERVER)
        self.transport: asyncio.Transport | None = None
        self.open = False  # the upgrade was accepted
        self._request = bytearray()  # the upgrade request, until its blank line
        self._refused = False
        self._paused = False  # the network takes no more bytes for now
        self._pong: bytes | None = None  # the answer to the latest Ping, while paused

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.inner.connection_made(FrameTransport(self))

    def data_received(self, data: bytes) -> None:
        if self.open:
            if self.ws.state != ConnectionState.CLOSED:
                self.ws.receive_data(data)
                self._events()
        elif not self._refused:
            self._handshake(data)

    def eof_received(self) -> bool:
        self.inner.eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._paused = True
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self._paused = False
        pong, self._pong = self._pong, None
        if pong is not None:
            self._write(pong)
        self.inner.resume_writing()

    # -- the upgrade --------------------------------------------------------------

    def _handshake(self, data: bytes) -> None:
        buf = self._request
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_REQUEST:
                self._refuse(431, "the request headers are too large")
            return
        # Only the request goes to wsproto: a client may send its first MQTT bytes
        # right behind it, and those belong to the WebSocket connection.
        head, rest = bytes(buf[: end + 4]), bytes(buf[end + 4 :])
        buf.clear()
        try:
            self.ws.receive_data(head)
            for event in self.ws.events():
                if isinstance(event, Request):
                    self._upgrade(event)
        except RemoteProtocolError as e:
            hint = e.event_hint
            if isinstance(hint, RejectConnection):
                self._refuse(hint.status_code, str(e), hint.headers)
            else:
                self._refuse(400, str(e))
            return
        if not self.open and not self._refused:
            self._refuse(400, "expected a WebSocket upgrade request")
        elif self.open and rest:
            self.data_received(rest)

    def _upgrade(self, request: Request) -> None:
        target = request.target.split("?", 1)[0]
        if self.path != ANY_PATH and target != self.path:
            self._refuse(404, f"no MQTT WebSocket endpoint at {target} (it is at {self.path})")
        elif SUBPROTOCOL not in request.subprotocols:
            # MQTT-6.0.0-3: the client offers "mqtt"; MQTT-6.0.0-4: the server selects it.
            self._refuse(400, "MQTT over WebSocket needs the subprotocol 'mqtt' (MQTT-6.0.0-3)")
        else:
            self._write(self.ws.send(AcceptConnection(subprotocol=SUBPROTOCOL)))
            self.open = True

    def _refuse(
        self, status: int, reason: str, headers: Iterable[tuple[bytes, bytes]] = ()
    ) -> None:
        """Answer the upgrade request with ``status`` and a one-line text body, and
        close (the Connection ends with it)."""
        self._refused = True
        t = self.transport
        peer = t.get_extra_info("peername") if t is not None else None
        log.info("%s: WebSocket upgrade refused with %d: %s", peer, status, reason)
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        body = reason.encode() + b"\n"
        lines = [f"HTTP/1.1 {status} {phrase}".encode()]
        lines += [name + b": " + value for name, value in headers]
        lines += [
            b"Content-Type: text/plain; charset=utf-8",
            b"Content-Length: %d" % len(body),
            b"Connection: close",
        ]
        self._write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        if t is not None:
            t.close()

    # -- frames ---------------------------------------------------------------------

    def _events(self) -> None:
        ws = self.ws
        t = self.transport
        for event in ws.events():
            if t is None or t.is_closing():
                return  # the Connection closed it (a protocol error): read no further
            if isinstance(event, BytesMessage):
                self.inner.data_received(bytes(event.data))
            elif isinstance(event, Ping):
                pong = ws.send(event.response())
                if self._paused:
                    # A peer that pings and reads nothing must not make us hold a
                    # Pong per Ping: while the network takes nothing, only the
                    # latest waits (RFC 6455 5.5.3 allows answering only it).
                    self._pong = pong
                else:
                    self._write(pong)
            elif isinstance(event, CloseConnection):
                # The peer's close (answered), or a frame wsproto could not parse
                # (the event carries the close code to send back).
                if ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                    self._write(ws.send(event.response()))
                self.inner.eof_received()
                self.close()
                return
            elif isinstance(event, TextMessage):
                # MQTT-6.0.0-1: MQTT travels in binary frames only; close the connection.
                self.close(_UNSUPPORTED_DATA, "MQTT needs binary frames (MQTT-6.0.0-1)")
                return

    def send(self, data: bytes) -> None:
        """Send ``data`` as one binary frame (dropped once the WebSocket is closing)."""
        if self.open and self.ws.state == ConnectionState.OPEN:
            self._write(self.ws.send(BytesMessage(data=data)))

    def close(self, code: int = _NORMAL_CLOSURE, reason: str | None = None) -> None:
        """Send a close frame with ``code`` if the WebSocket is open, then close the
        network connection."""
        if self.open and self.ws.state == ConnectionState.OPEN:
            try:
                self._write(self.ws.send(CloseConnection(code, reason)))
            except ProtocolError:
                pass
        if self.transport is not None:
            self.transport.close()

    def _write(self, data: bytes) -> None:
        t = self.transport
        if data and t is not None and not t.is_closing():
            t.write(data)


class FrameTransport(asyncio.Transport):
    """The transport the MQTT ``Connection`` writes to: each write is one binary
    frame; closing sends a close frame first; the rest is the network transport's."""

    def __init__(self, protocol: WebSocketProtocol) -> None:
        super().__init__()
        self._ws = protocol

    def _raw(self) -> asyncio.Transport:
        t = self._ws.transport
        assert t is not None
        return t

    def write(self, data: _Buffer) -> None:
        self._ws.send(bytes(data))

    def writelines(self, list_of_data: Iterable[_Buffer]) -> None:
        self._ws.send(b"".join(list_of_data))

    def close(self) -> None:
        self._ws.close()

    def abort(self) -> None:
        self._raw().abort()

    def is_closing(self) -> bool:
        return self._raw().is_closing()

    def can_write_eof(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._raw().get_extra_info(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw().set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._raw().get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._raw().get_write_buffer_limits()

    def pause_reading(self) -> None:
        self._raw().pause_reading()

    def resume_reading(self) -> None:
        self._raw().resume_reading()

    def is_reading(self) -> bool:
        return self._raw().is_reading()
