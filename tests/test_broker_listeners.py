"""The broker's listeners over real sockets: plain TCP, TLS (with and without client
certificates), WebSocket and secure WebSocket, with our clients and paho-mqtt as peers
and the CA made by the ``tls_files`` fixture; messages crossing listeners; and, with a
raw wsproto client, what only a hand-made WebSocket peer can do (MQTT bytes cut across
frames, text frames, pings, a wrong path or subprotocol).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any, Literal

import paho.mqtt.client as paho
import pytest
from test_broker import WAIT
from tlsfiles import TlsFiles
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)

from fieldline.broker import BrokerThread, Listener
from fieldline.mqtt import (
    CLIENT,
    AsyncClient,
    Client,
    ConnAck,
    Connect,
    ConnectionLost,
    Publish,
    Session,
    Subscription,
)
from fieldline.mqtt._websocket import UpgradeRefused

# On uvloop (the default when installed) and on asyncio's own loop.
pytestmark = pytest.mark.usefixtures("both_event_loops")

# Listener names of the shared broker, in the order of its listeners.
NAMES = ["mqtt", "mqtts", "mtls", "ws", "wss"]
TLS = {"mqtts", "mtls", "wss"}
WEBSOCKET = {"ws", "wss"}


@pytest.fixture(scope="module")
def broker(tls_files: TlsFiles) -> Iterator[BrokerThread]:
    """One broker with every kind of listener: ``mtls`` requires a client certificate,
    ``mqtts`` and ``wss`` check one if it is sent."""
    files: dict[str, Any] = {"cert": str(tls_files.server_cert), "key": str(tls_files.server_key)}
    ca = str(tls_files.ca_cert)
    listeners = [
        Listener("mqtt", port=0),
        Listener("mqtts", port=0, ca=ca, **files),
        Listener("mqtts", port=0, ca=ca, require_certificate=True, **files),
        Listener("ws", port=0),
        Listener("wss", port=0, ca=ca, **files),
    ]
    b = BrokerThread(listeners=listeners).start()
    try:
        yield b
    finally:
        b.stop()


def port(broker: BrokerThread, name: str) -> int:
    return broker.listening[NAMES.index(name)].port


def client_options(tls_files: TlsFiles, name: str) -> dict[str, Any]:
    """Our clients' options for listener ``name``; a client certificate for ``mtls``."""
    opts: dict[str, Any] = {"timeout": WAIT, "reconnect": False}
    if name in TLS:
        opts["ca_file"] = str(tls_files.ca_cert)
    if name == "mtls":
        opts["cert_file"] = str(tls_files.client_cert)
        opts["key_file"] = str(tls_files.client_key)
    if name in WEBSOCKET:
        opts["transport"] = "websockets"
    return opts


def paho_on(
    broker: BrokerThread, tls_files: TlsFiles, name: str, version: int, client_id: str
) -> tuple[paho.Client, queue.Queue[Any]]:
    """A paho client connected to listener ``name``; messages land in the queue."""
    transport: Literal["tcp", "websockets"] = "websockets" if name in WEBSOCKET else "tcp"
    protocol = paho.MQTTv5 if version == 5 else paho.MQTTv311
    c = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
        transport=transport,
    )  # fmt: skip
    if name in WEBSOCKET:
        c.ws_set_options(path="/mqtt")
    if name in TLS:
        cert = (str(tls_files.client_cert), str(tls_files.client_key)) if name == "mtls" else ()
        c.tls_set(str(tls_files.ca_cert), *cert)
    got: queue.Queue[Any] = queue.Queue()
    connected: queue.Queue[Any] = queue.Queue()
    c.on_message = lambda c_, u, m: got.put(m)
    c.on_connect = lambda c_, u, f, rc, p=None: connected.put(rc)
    c.connect("localhost", port(broker, name), keepalive=30)
    c.loop_start()
    assert not connected.get(timeout=WAIT).is_failure
    return c, got


def wait_subscriptions_for(broker: BrokerThread, client_id: str) -> None:
    """Wait until ``client_id`` holds a subscription (paho's SUBACK, without a callback)."""

    def count() -> int:
        cs = broker.broker.sessions.get(client_id)
        return len(cs.subscriptions) if cs is not None else 0

    end = time.monotonic() + WAIT
    while broker.call(count) < 1:
        assert time.monotonic() < end, "the subscription did not arrive"
        time.sleep(0.01)


# -- every listener, every client --------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_blocking_client_on_each_listener(
    broker: BrokerThread, tls_files: TlsFiles, name: str
) -> None:
    opts = client_options(tls_files, name)
    with Client("localhost", port(broker, name), client_id=f"b-{name}", **opts) as c:
        c.subscribe(f"l/{name}", qos=1)
        c.publish(f"l/{name}", b"x" * 70_000, qos=1)  # spans many reads and frames
        m = c.recv(timeout=WAIT)
        assert (m.topic, m.payload) == (f"l/{name}", b"x" * 70_000)


@pytest.mark.parametrize("name", NAMES)
def test_async_client_on_each_listener(
    broker: BrokerThread, tls_files: TlsFiles, name: str
) -> None:
    async def main() -> None:
        opts = client_options(tls_files, name)
        async with AsyncClient("localhost", port(broker, name), **opts) as c:
            await c.subscribe(f"a/{name}", qos=2)
            stream = c.messages(f"a/{name}")
            await c.publish(f"a/{name}", b"async", qos=2)
            async for m in stream:
                assert (m.topic, m.payload, m.qos) == (f"a/{name}", b"async", 2)
                break

    asyncio.run(asyncio.wait_for(main(), 30))


@pytest.mark.parametrize("version", [4, 5], ids=["3.1.1", "5.0"])
@pytest.mark.parametrize("name", NAMES)
def test_paho_on_each_listener(
    broker: BrokerThread, tls_files: TlsFiles, name: str, version: int
) -> None:
    c, got = paho_on(broker, tls_files, name, version, f"p-{name}-{version}")
    try:
        c.subscribe(f"p/{name}", qos=1)
        wait_subscriptions_for(broker, f"p-{name}-{version}")
        c.publish(f"p/{name}", b"paho", qos=1)
        m = got.get(timeout=WAIT)
        assert (m.topic, m.payload) == (f"p/{name}", b"paho")
    finally:
        c.disconnect()
        c.loop_stop()


def test_message_crosses_every_listener(broker: BrokerThread, tls_files: TlsFiles) -> None:
    # One subscriber on each listener, one publisher on each: every subscriber gets
    # every publisher's message, whichever ports they came through.
    with contextlib.ExitStack() as stack:
        subs = []
        for name in NAMES:
            opts = client_options(tls_files, name)
            c = Client("localhost", port(broker, name), client_id=f"x-{name}", **opts)
            subs.append(stack.enter_context(c))
            c.subscribe("cross/#", qos=1)
        for name in NAMES:
            opts = client_options(tls_files, name)
            with Client("localhost", port(broker, name), client_id=f"xp-{name}", **opts) as p:
                p.publish(f"cross/{name}", name.encode(), qos=1)
        for sub in subs:
            got = sorted(sub.recv(timeout=WAIT).topic for _ in NAMES)
            assert got == sorted(f"cross/{name}" for name in NAMES)


# -- client certificates -----------------------------------------------------------------


def test_client_without_certificate_is_refused(broker: BrokerThread, tls_files: TlsFiles) -> None:
    opts = client_options(tls_files, "mqtts")  # the CA, but no client certificate
    with pytest.raises((OSError, ConnectionLost)):
        with Client("localhost", port(broker, "mtls"), client_id="nocert", **opts) as c:
            c.publish("nocert", b"x", qos=1)
    # paho alike: with TLS 1.3 the refusal comes after its handshake, as a disconnect.
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="nocert-paho")
    c.tls_set(str(tls_files.ca_cert))
    events: queue.Queue[str] = queue.Queue()
    c.on_connect = lambda *a: events.put("connected")
    c.on_disconnect = lambda *a: events.put("disconnected")
    try:
        c.connect("localhost", port(broker, "mtls"))
        c.loop_start()
        assert events.get(timeout=WAIT) == "disconnected"
    except ssl.SSLError:
        pass  # refused during the handshake (TLS 1.2)
    finally:
        c.loop_stop()
    # The broker never saw a CONNECT from either.
    assert broker.call(broker.broker.sessions.get, "nocert") is None
    assert broker.call(broker.broker.sessions.get, "nocert-paho") is None


def test_certificate_from_another_ca_is_refused(broker: BrokerThread, tls_files: TlsFiles) -> None:
    # A listener that trusts another CA refuses our client certificate.
    other = BrokerThread(
        listeners=[
            Listener(
                "mqtts", port=0, cert=str(tls_files.server_cert), key=str(tls_files.server_key),
                ca=str(tls_files.other_ca_cert), require_certificate=True,
            )
        ]
    ).start()  # fmt: skip
    try:
        opts = client_options(tls_files, "mtls")
        with pytest.raises((OSError, ConnectionLost)):
            with Client("localhost", other.port, client_id="wrongca", **opts) as c:
                c.publish("wrongca", b"x", qos=1)
    finally:
        other.stop()


def test_peer_certificate_reaches_the_connection(broker: BrokerThread, tls_files: TlsFiles) -> None:
    # What a later authentication slice needs: the client certificate's subject, seen
    # through the TLS and WebSocket layers alike.
    for name, cid in (("mtls", "cert-tls"), ("wss", "cert-wss")):
        opts = client_options(tls_files, name)
        opts["cert_file"] = str(tls_files.client_cert)
        opts["key_file"] = str(tls_files.client_key)
        with Client("localhost", port(broker, name), client_id=cid, **opts):

            def subject(cid: str = cid) -> Any:
                cs = broker.broker.sessions.get(cid)
                assert cs is not None and cs.conn is not None and cs.conn.transport is not None
                return cs.conn.transport.get_extra_info("peercert")["subject"]

            assert (("commonName", "fieldline-test-client"),) in broker.call(subject)


# -- WebSocket details, with a raw wsproto client ------------------------------------------


class RawWs:
    """A wsproto client over a plain socket, for what real clients never send."""

    def __init__(
        self, port: int, path: str = "/mqtt", subprotocols: tuple[str, ...] = ("mqtt",)
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(
            self.ws.send(Request(host="localhost", target=path, subprotocols=list(subprotocols)))
        )
        self.events: list[Any] = []
        self.accepted: AcceptConnection | None = None
        self.rejected: RejectConnection | None = None
        while self.accepted is None and self.rejected is None:
            self._read()

    def _read(self) -> bool:
        data = self.sock.recv(65536)
        self.ws.receive_data(data or None)
        for ev in self.ws.events():
            if isinstance(ev, AcceptConnection):
                self.accepted = ev
            elif isinstance(ev, RejectConnection):
                self.rejected = ev
            else:
                self.events.append(ev)
        return bool(data)

    def send(self, event: Any) -> None:
        self.sock.sendall(self.ws.send(event))

    def wait_for(self, kind: type) -> Any:
        while True:
            for i, ev in enumerate(self.events):
                if isinstance(ev, kind):
                    return self.events.pop(i)
            assert self._read(), f"closed before a {kind.__name__}"

    def mqtt_bytes(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += bytes(self.wait_for(BytesMessage).data)
        return out

    def close(self) -> None:
        self.sock.close()


def connect_bytes(client_id: str) -> bytes:
    s = Session(CLIENT)
    s.connect(Connect(client_id, True, 30, protocol_level=5), 0.0)
    return s.data_to_send()


def test_mqtt_bytes_cut_anywhere_across_frames(broker: BrokerThread) -> None:
    # MQTT-6.0.0-2: CONNECT one byte per frame, then SUBSCRIBE and PUBLISH in one frame.
    ws = RawWs(port(broker, "ws"))
    try:
        assert ws.accepted is not None and ws.accepted.subprotocol == "mqtt"  # MQTT-6.0.0-4
        s = Session(CLIENT)
        s.connect(Connect("cut", True, 30, protocol_level=5), 0.0)
        for b in s.data_to_send():
            ws.send(BytesMessage(data=bytes([b])))
        s.receive_data(ws.mqtt_bytes(1), 0.0)
        while True:
            ev = s.next_event()
            if ev is not None:
                break
            s.receive_data(ws.mqtt_bytes(1), 0.0)
        assert isinstance(ev, ConnAck)
        s.subscribe([Subscription("cut", 0)])
        s.publish("cut", b"whole", 0)
        ws.send(BytesMessage(data=s.data_to_send()))
        got = None
        while got is None:
            s.receive_data(bytes(ws.wait_for(BytesMessage).data), 0.0)
            while (ev := s.next_event()) is not None:
                if isinstance(ev, Publish):
                    got = ev
        assert (got.topic, got.payload) == ("cut", b"whole")
        ws.send(Ping(b"hi"))
        assert ws.wait_for(Pong).payload == b"hi"
    finally:
        ws.close()


def test_text_frame_closes_with_1003(broker: BrokerThread) -> None:
    ws = RawWs(port(broker, "ws"))
    try:
        ws.send(BytesMessage(data=connect_bytes("text")))
        ws.mqtt_bytes(1)  # CONNACK
        ws.send(TextMessage("MQTT in a text frame"))  # MQTT-6.0.0-1
        assert ws.wait_for(CloseConnection).code == 1003
    finally:
        ws.close()


def test_wrong_path_and_missing_subprotocol_are_refused(broker: BrokerThread) -> None:
    with pytest.raises(UpgradeRefused) as e:
        with Client("127.0.0.1", port(broker, "ws"), transport="websockets", ws_path="/x",
                    timeout=WAIT, reconnect=False):  # fmt: skip
            pass
    assert e.value.status_code == 404
    ws = RawWs(port(broker, "ws"), subprotocols=())  # MQTT-6.0.0-3
    assert ws.rejected is not None and ws.rejected.status_code == 400
    ws.close()
    # Not a WebSocket request at all: a plain HTTP answer, then the connection closes.
    with socket.create_connection(("127.0.0.1", port(broker, "ws")), timeout=WAIT) as sock:
        sock.sendall(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 400 ")


def test_any_path_listener() -> None:
    with BrokerThread(listeners=[Listener("ws", port=0, path="*")]) as b:
        with Client("127.0.0.1", b.port, transport="websockets", ws_path="/", timeout=WAIT,
                    reconnect=False) as c:  # fmt: skip
            c.subscribe("any", qos=1)
            c.publish("any", b"path", qos=1)
            assert c.recv(timeout=WAIT).payload == b"path"


def test_stop_closes_websocket_clients_with_disconnect_0x8b() -> None:
    b = BrokerThread(listeners=[Listener("ws", port=0)]).start()
    ws = RawWs(b.port)
    try:
        ws.send(BytesMessage(data=connect_bytes("bye")))
        s = Session(CLIENT)
        s.connect(Connect("bye", True, 30, protocol_level=5), 0.0)
        s.data_to_send()
        s.receive_data(ws.mqtt_bytes(1), 0.0)
        b.stop()
        data = b""
        while not isinstance(ws.events[-1] if ws.events else None, CloseConnection):
            if not ws._read():
                break
        for ev in ws.events:
            if isinstance(ev, BytesMessage):
                data += bytes(ev.data)
        assert data[:1] == b"\xe0"  # DISCONNECT
        assert 0x8B in data[2:3]
        assert any(isinstance(ev, CloseConnection) for ev in ws.events)
    finally:
        ws.close()
        b.stop()


@pytest.mark.parametrize("kind", ["ws", "mqtts"])
def test_stalled_handshake_is_cut_after_connect_timeout(tls_files: TlsFiles, kind: str) -> None:
    # A peer that opens the socket and sends nothing (no upgrade request, no TLS
    # ClientHello) is closed after connect_timeout, like one that sends no CONNECT.
    files: dict[str, Any] = {}
    if kind == "mqtts":
        files = {"cert": str(tls_files.server_cert), "key": str(tls_files.server_key)}
    listener = Listener(kind, port=0, **files)
    with BrokerThread(listeners=[listener], connect_timeout=0.3) as b:
        with socket.create_connection(("127.0.0.1", b.port), timeout=WAIT) as sock:
            start = time.monotonic()
            try:
                assert sock.recv(1024) == b""
            except ConnectionResetError:
                pass
            assert 0.2 < time.monotonic() - start < 5
