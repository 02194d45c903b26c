"""MQTT over WebSocket (``transport="websockets"``, ``fieldline/mqtt/_websocket.py``).

Both clients, MQTT 3.1.1 and 5.0, through Mosquitto's ``ws`` and ``wss``
listeners with paho-mqtt on the plain listener as the peer; and, for what
Mosquitto never does (MQTT bytes cut anywhere across frames, several packets
in one frame, pings, close codes, text frames, a refused upgrade), against a
small wsproto server run by the test on a loopback socket.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import Mosquitto, arun
from paho_peer import PahoPeer
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from fieldline.mqtt import AsyncClient, Client, ConnectionLost, Publish
from fieldline.mqtt._websocket import UpgradeRefused, WebSocket, WebSocketError

WAIT = 10.0


# -- through Mosquitto ---------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_qos_roundtrip_through_mosquitto(
    mosquitto_ws: Mosquitto, kind: str, version: int, scheme: str
) -> None:
    # QoS 0/1/2 both ways; the 15 kB message spans several reads (Mosquitto 2.0
    # paces large WebSocket writes at about 4 kB per 100 ms: paho sees it too).
    tls = mosquitto_ws.tls
    assert tls is not None
    opts: dict[str, Any] = {"version": version, "transport": "websockets", "timeout": WAIT}
    opts["reconnect"] = False
    if scheme == "wss":
        opts["ca_file"] = str(tls.ca_cert)
    host, port = "localhost", mosquitto_ws.ports[scheme]
    payloads = {0: b"zero", 1: b"one" * 5_000, 2: b"two"}
    peer = PahoPeer(mosquitto_ws.host, mosquitto_ws.port, version)
    try:
        peer.subscribe("ws/up/#", qos=2)
        if kind == "blocking":
            with Client(host, port, **opts) as c:
                c.subscribe("ws/down/#", qos=2)
                for qos, payload in payloads.items():
                    peer.publish(f"ws/down/{qos}", payload, qos)
                got = [c.recv() for _ in payloads]
                for qos, payload in payloads.items():
                    c.publish(f"ws/up/{qos}", payload, qos)
        else:

            async def main() -> list[Publish]:
                async with AsyncClient(host, port, **opts) as c:
                    await c.subscribe("ws/down/#", qos=2)
                    stream = c.messages()
                    for qos, payload in payloads.items():
                        await asyncio.to_thread(peer.publish, f"ws/down/{qos}", payload, qos)
                    got = [await stream.__anext__() for _ in payloads]
                    for qos, payload in payloads.items():
                        await c.publish(f"ws/up/{qos}", payload, qos)
                return got

            got = arun(main())
        assert sorted((m.topic, m.qos, m.payload) for m in got) == [
            (f"ws/down/{q}", q, p) for q, p in payloads.items()
        ]
        up = sorted(peer.expect(len(payloads)), key=lambda m: m.topic)
        assert [(m.topic, m.qos, m.payload) for m in up] == [
            (f"ws/up/{q}", q, p) for q, p in payloads.items()
        ]
    finally:
        peer.close()


def test_wss_with_the_wrong_ca_fails_verification(mosquitto_ws: Mosquitto, kind: str) -> None:
    import ssl

    tls = mosquitto_ws.tls
    assert tls is not None
    opts: dict[str, Any] = {"transport": "websockets", "ca_file": str(tls.other_ca_cert)}
    with pytest.raises(ssl.SSLCertVerificationError):
        _connect(kind, "localhost", mosquitto_ws.ports["wss"], **opts)


def test_websockets_port_defaults() -> None:
    assert Client("h", transport="websockets").port == 80
    assert Client("h", transport="websockets", tls=True).port == 443
    with pytest.raises(ValueError):
        Client("h", transport="quic")


# -- against a wsproto server run by the test -------------------------------------------------


class WsPeer:
    """A WebSocket server for one connection on a loopback port; ``script(peer)``
    runs on a thread once a client connects. ``check()`` joins it and re-raises
    what it raised."""

    def __init__(self, script: Callable[[WsPeer], None]) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host = "127.0.0.1"
        self.port: int = self._listener.getsockname()[1]
        self.request: Request | None = None
        self.pongs: list[bytes] = []
        self.close_event: CloseConnection | None = None
        self.error: BaseException | None = None
        self._ws = WSConnection(ConnectionType.SERVER)
        self._events: deque[Event] = deque()
        self._inbox = bytearray()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, args=(script,), daemon=True)
        self._thread.start()

    def _run(self, script: Callable[[WsPeer], None]) -> None:
        try:
            self._listener.settimeout(WAIT)
            sock, _ = self._listener.accept()
            with sock:
                sock.settimeout(WAIT)
                self._sock = sock
                script(self)
        except BaseException as e:
            self.error = e

    def check(self) -> None:
        self._thread.join(WAIT)
        self._listener.close()
        assert not self._thread.is_alive(), "the peer script did not finish"
        if self.error is not None:
            raise self.error

    # what the scripts call

    def raw(self, data: bytes) -> None:
        assert self._sock is not None
        self._sock.sendall(data)

    def send(self, *events: Event) -> None:
        self.raw(b"".join(self._ws.send(e) for e in events))

    def next_event(self) -> Event:
        while not self._events:
            assert self._sock is not None
            data = self._sock.recv(65536)
            self._ws.receive_data(data or None)
            self._events.extend(self._ws.events())
        return self._events.popleft()

    def accept(self) -> Request:
        event = self.next_event()
        assert isinstance(event, Request)
        self.request = event
        self.send(AcceptConnection(subprotocol="mqtt"))
        return event

    def read(self, n: int) -> bytes:
        """``n`` MQTT bytes from the client's binary frames (pongs are noted)."""
        while len(self._inbox) < n:
            event = self.next_event()
            if isinstance(event, BytesMessage):
                self._inbox += event.data
            elif isinstance(event, Pong):
                self.pongs.append(bytes(event.payload))
            else:
                raise AssertionError(f"expected MQTT bytes, got {event!r}")
        data = bytes(self._inbox[:n])
        del self._inbox[:n]
        return data

    def read_packet(self) -> bytes:
        packet = self.read(1)
        length, shift = 0, 0
        while True:
            b = self.read(1)
            packet += b
            length |= (b[0] & 0x7F) << shift
            shift += 7
            if not b[0] & 0x80:
                return packet + self.read(length)

    def wait_close(self) -> CloseConnection:
        while True:
            event = self.next_event()
            if isinstance(event, CloseConnection):
                self.close_event = event
                return event
            if isinstance(event, Pong):
                continue
            raise AssertionError(f"expected a close frame, got {event!r}")


@pytest.fixture
def ws_peer() -> Iterator[Callable[[Callable[[WsPeer], None]], WsPeer]]:
    peers: list[WsPeer] = []

    def make(script: Callable[[WsPeer], None]) -> WsPeer:
        peers.append(WsPeer(script))
        return peers[-1]

    yield make
    for p in peers:
        p._listener.close()


def connack(version: int) -> bytes:
    return b"\x20\x03\x00\x00\x00" if version == 5 else b"\x20\x02\x00\x00"


def publish0(topic: str, payload: bytes, version: int) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic.encode() + (b"\x00" if version == 5 else b"")
    body += payload
    assert len(body) < 128
    return bytes([0x30, len(body)]) + body


def frames(data: bytes, size: int, message_finished: bool = True) -> list[Event]:
    # ``data`` cut into frames of ``size`` bytes; with message_finished=False
    # they are the fragments (continuation frames) of one message.
    cuts = [data[i : i + size] for i in range(0, len(data), size)]
    return [
        BytesMessage(data=c, message_finished=message_finished or i == len(cuts) - 1)
        for i, c in enumerate(cuts)
    ]


def _connect(kind: str, host: str, port: int, **opts: Any) -> Any:
    opts.setdefault("timeout", WAIT)
    opts.setdefault("reconnect", False)
    if kind == "blocking":
        c = Client(host, port, **opts)
        c.connect()
        return c
    c2 = AsyncClient(host, port, **opts)
    arun(c2.connect())
    return c2


def test_mqtt_bytes_split_across_frames_and_packed_into_one(
    ws_peer: Callable[[Callable[[WsPeer], None]], WsPeer], kind: str, version: int
) -> None:
    # MQTT-6.0.0-2: packets are not aligned on frame boundaries.
    pubs = [publish0(f"t/{i}", b"m%d" % i, version) for i in range(4)]

    def script(peer: WsPeer) -> None:
        peer.accept()
        assert peer.read_packet()[0] == 0x10  # CONNECT
        ack = connack(version)
        # CONNACK one byte per frame: the first two as separate messages, the
        # rest as fragments of one message, with a ping between them.
        peer.send(*frames(ack[:2], 1), Ping(b"hi"), *frames(ack[2:], 1, False))
        # Three PUBLISHes and half of the fourth in one frame, the rest in the next.
        both = b"".join(pubs)
        cut = len(both) - 3
        peer.send(BytesMessage(data=both[:cut]))
        peer.send(BytesMessage(data=both[cut:]))
        up = peer.read_packet()
        assert up == publish0("up", b"hi", version)
        assert peer.read_packet()[0] == 0xE0  # DISCONNECT
        assert peer.wait_close().code == 1000
        peer.send(CloseConnection(1000))

    peer = ws_peer(script)
    opts: dict[str, Any] = {"version": version, "transport": "websockets", "ws_path": "/m/q"}
    opts.update(ws_headers={"X-Token": "abc"}, reconnect=False, timeout=WAIT)
    if kind == "blocking":
        with Client(peer.host, peer.port, **opts) as c:
            got = [c.recv() for _ in pubs]
            c.publish("up", b"hi")
    else:

        async def main() -> list[Publish]:
            async with AsyncClient(peer.host, peer.port, **opts) as c:
                stream = c.messages()
                got = [await stream.__anext__() for _ in pubs]
                await c.publish("up", b"hi")
            return got

        got = arun(main())
    peer.check()
    assert [(m.topic, m.payload) for m in got] == [(f"t/{i}", b"m%d" % i) for i in range(4)]
    assert peer.pongs == [b"hi"]
    req = peer.request
    assert req is not None
    assert req.target == "/m/q" and req.subprotocols == ["mqtt"]  # MQTT-6.0.0-3
    assert req.host == f"127.0.0.1:{peer.port}"
    assert (b"x-token", b"abc") in [(k.lower(), v) for k, v in req.extra_headers]


@pytest.mark.parametrize(
    "end, error",
    [
        (CloseConnection(1000), None),
        (CloseConnection(1011, "internal error"), 1011),
        (TextMessage("not binary"), 1003),  # MQTT-6.0.0-1
    ],
    ids=["close-1000", "close-1011", "text-frame"],
)
def test_end_of_the_websocket_ends_the_connection(
    ws_peer: Callable[[Callable[[WsPeer], None]], WsPeer],
    kind: str,
    end: Event,
    error: int | None,
) -> None:
    # A normal close is the broker closing the connection; an error code or a
    # text frame fails it with WebSocketError (code: what the close carried).
    def script(peer: WsPeer) -> None:
        peer.accept()
        peer.read_packet()
        peer.send(BytesMessage(data=connack(4) + publish0("t", b"last", 4)), end)
        if not isinstance(end, CloseConnection):
            peer.wait_close()  # our close frame, with the reason

    peer = ws_peer(script)
    lost: list[BaseException] = []
    opts: dict[str, Any] = {"version": 4, "transport": "websockets", "reconnect": False}
    opts["timeout"] = WAIT
    if kind == "blocking":
        c = Client(peer.host, peer.port, **opts)
        c.on_disconnect = lost.append
        c.connect()
        assert c.recv().payload == b"last"  # bytes before the close are delivered
        with pytest.raises((ConnectionLost, WebSocketError)):
            c.recv()
    else:

        async def main() -> None:
            c = AsyncClient(peer.host, peer.port, **opts)
            c.on_disconnect = lost.append
            await c.connect()
            stream = c.messages()
            assert (await stream.__anext__()).payload == b"last"
            for _ in range(100):
                if lost:
                    break
                await asyncio.sleep(0.05)
            await c.disconnect()

        arun(main())
    peer.check()
    if error is None:
        assert isinstance(lost[0], ConnectionLost)
    else:
        assert isinstance(lost[0], WebSocketError) and lost[0].code == error
        assert str(error) in str(lost[0])
    if isinstance(end, TextMessage):
        assert peer.close_event is not None and peer.close_event.code == 1003


def test_adapter_pending_and_recv(ws_peer: Callable[[Callable[[WsPeer], None]], WsPeer]) -> None:
    # The blocking adapter alone: bytes decoded but not returned are pending()
    # (the client reads them without polling); a close is pending too, as b"".
    def script(peer: WsPeer) -> None:
        peer.accept()
        assert peer.read(5) == b"hello"
        peer.send(*frames(b"abcdef", 2, False), Ping(b"p"), CloseConnection(1000))
        peer.wait_close()

    peer = ws_peer(script)
    sock = socket.create_connection((peer.host, peer.port), timeout=WAIT)
    ws = WebSocket(sock, peer.host, peer.port)
    try:
        assert ws.pending() == 0
        ws.sendall(b"hello")
        data = b""
        while len(data) < 6:
            data += ws.recv(3) or b""  # None: a read with no MQTT bytes (the ping)
        assert data == b"abcdef"
        assert ws.pending() == 1  # the close, not yet reported
        assert ws.recv(10) == b""
        with pytest.raises(WebSocketError):
            ws.sendall(b"too late")
    finally:
        ws.close()
    peer.check()
    req = peer.request
    assert req is not None and req.target == "/mqtt" and peer.pongs == []
    assert req.host == f"127.0.0.1:{peer.port}"


def test_a_ping_alone_keeps_the_blocking_client_going(
    ws_peer: Callable[[Callable[[WsPeer], None]], WsPeer],
) -> None:
    # A Ping with no MQTT bytes after it once kept WebSocket.recv() reading
    # until the socket's timeout, and the connection was dropped.
    pinged = threading.Event()

    def script(peer: WsPeer) -> None:
        peer.accept()
        peer.read_packet()  # CONNECT
        peer.send(BytesMessage(data=connack(4)))
        peer.send(Ping(b"hb"))
        pinged.set()
        assert peer.read_packet() == publish0("after", b"ping", 4)
        assert peer.pongs == [b"hb"]
        assert peer.read_packet()[0] == 0xE0  # DISCONNECT
        peer.wait_close()
        peer.send(CloseConnection(1000))

    peer = ws_peer(script)
    c = Client(
        peer.host, peer.port, version=4, transport="websockets", reconnect=False, timeout=WAIT
    )
    c.connect()
    assert pinged.wait(WAIT)
    start = time.monotonic()
    for _ in range(3):
        c.loop(0.2)  # reads the ping: returns without waiting out the timeout
    assert time.monotonic() - start < WAIT / 2
    assert c.is_connected
    c.publish("after", b"ping")
    c.disconnect()
    peer.check()


class HttpAnswer:
    """A plain TCP server that answers every request with ``answer`` and closes."""

    def __init__(self, answer: bytes) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(WAIT)
        self.host = "127.0.0.1"
        self.port: int = self._listener.getsockname()[1]
        self.requests: list[bytes] = []
        self._answer = answer
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        with sock:
            sock.settimeout(WAIT)
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                request += chunk
            self.requests.append(request)
            sock.sendall(self._answer)

    def close(self) -> None:
        self._listener.close()
        self._thread.join(WAIT)


@pytest.mark.parametrize(
    "answer, status",
    [
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found", 404),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", 200),
        (b"\x20\x02\x00\x00", None),  # an MQTT broker on a plain TCP port
    ],
    ids=["404", "200", "not-http"],
)
def test_refused_upgrade_is_a_clear_error(kind: str, answer: bytes, status: int | None) -> None:
    server = HttpAnswer(answer)
    try:
        opts: dict[str, Any] = {"transport": "websockets", "reconnect": False, "timeout": WAIT}
        with pytest.raises(WebSocketError) as e:
            _connect(kind, server.host, server.port, **opts)
    finally:
        server.close()
    assert server.requests and server.requests[0].startswith(b"GET /mqtt HTTP/1.1\r\n")
    if status is None:
        assert not isinstance(e.value, UpgradeRefused)
        assert "handshake" in str(e.value)
    else:
        assert isinstance(e.value, UpgradeRefused) and isinstance(e.value, ConnectionRefusedError)
        assert e.value.status_code == status
        assert f"HTTP {status}" in str(e.value)


@pytest.mark.parametrize("which", ["Client", "AsyncClient"])
def test_without_wsproto_the_error_says_which_extra_to_install(which: str) -> None:
    # A listening socket, so the dial gets as far as the WebSocket upgrade.
    import subprocess
    import sys

    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        code = (
            "import sys, asyncio\n"
            "sys.modules['wsproto'] = None  # as if not installed\n"
            f"from fieldline.mqtt import {which}\n"
            f"c = {which}('127.0.0.1', {port}, transport='websockets', timeout=5)\n"
            "try:\n"
            "    r = c.connect()\n"
            "    if asyncio.iscoroutine(r):\n"
            "        asyncio.run(r)\n"
            "except ImportError as e:\n"
            "    print('ImportError', e)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
        )
    assert "ImportError" in out.stdout and "pip install 'fieldline[ws]'" in out.stdout, out
