"""The test infrastructure itself: TLS and WebSocket brokers, the fault proxy and the
scripted fake broker each do what the client tests will rely on.

paho-mqtt (a client we did not write) or a raw socket is the client throughout.
"""

from __future__ import annotations

import asyncio
import queue
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
import pytest
from conftest import FakeBrokerFactory, Mosquitto, ProxyFactory
from fakebroker import (
    CONNACK_OK,
    CONNECT,
    GARBAGE,
    OVERSIZED_REMAINING_LENGTH,
    PINGREQ,
    FakeBroker,
    FakeConnection,
    close,
    connack,
    expect_close,
    recv,
    reset,
    send,
)
from netfaults import Count, TcpProxy

if TYPE_CHECKING:  # cryptography may be missing; the tls_files fixture reports that
    from tlsfiles import TlsFiles

TIMEOUT = 5.0
# A minimal MQTT 3.1.1 CONNECT: clean session, keepalive 60, client id "t".
CONNECT_BYTES = b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01t"
PINGREQ_BYTES = b"\xc0\x00"


class Paho:
    """A paho-mqtt client on its own network thread, with events to wait on."""

    def __init__(self, transport: str = "tcp", keepalive: int = 60) -> None:
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=f"fixtures-{uuid.uuid4().hex[:8]}",
            transport=transport,  # type: ignore[arg-type]
            reconnect_on_failure=False,  # a lost connection ends the network thread at once
        )
        self.keepalive = keepalive
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.subscribed = threading.Event()
        self.settled = threading.Event()  # connected or disconnected, whichever first
        self.connect_rc: Any = None
        self.disconnect_rc: Any = None
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = lambda client, userdata, msg: self.messages.put(msg)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connect_rc = rc
        self.connected.set()
        self.settled.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.disconnect_rc = rc
        self.disconnected.set()
        self.settled.set()

    def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        """Connect (TLS handshake included: ssl errors raise here) and start the loop."""
        if tls is not None:
            self.client.tls_set_context(tls)
        self.client.connect(host, port, keepalive=self.keepalive)
        self.client.loop_start()

    def wait_connected(self) -> None:
        assert self.connected.wait(TIMEOUT), "no CONNACK"
        assert not self.connect_rc.is_failure, self.connect_rc

    def round_trip(self, topic: str = "fixtures/t") -> None:
        """Subscribe, publish to ourselves, get the message back."""
        self.wait_connected()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(TIMEOUT), "no SUBACK"
        self.client.publish(topic, b"hello", qos=1)
        message = self.messages.get(timeout=TIMEOUT)
        assert (message.topic, message.payload) == (topic, b"hello")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def paho_client(transport: str = "tcp", keepalive: int = 60) -> Iterator[Paho]:
    client = Paho(transport, keepalive)
    try:
        yield client
    finally:
        client.stop()


def fixture_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("TcpProxy", "FakeBroker"))]


# -- the plain broker, for reference --------------------------------------------------------


def test_mosquitto_fixture_still_round_trips(mosquitto: Mosquitto) -> None:
    assert mosquitto.ports == {"mqtt": mosquitto.port}
    with paho_client() as client:
        client.start(mosquitto.host, mosquitto.port)
        client.round_trip()


# -- TLS -------------------------------------------------------------------------------------


def test_tls_round_trip_with_the_ca(mosquitto_tls: Mosquitto, tls_files: TlsFiles) -> None:
    assert mosquitto_tls.tls is tls_files
    with paho_client() as client:
        client.start("localhost", mosquitto_tls.ports["tls"], tls_files.client_context())
        client.round_trip()


def test_tls_server_certificate_names_the_ip_too(
    mosquitto_tls: Mosquitto, tls_files: TlsFiles
) -> None:
    with paho_client() as client:
        client.start("127.0.0.1", mosquitto_tls.ports["tls"], tls_files.client_context())
        client.wait_connected()


def test_tls_without_the_ca_fails_verification(
    mosquitto_tls: Mosquitto, tls_files: TlsFiles
) -> None:
    system_trust = ssl.create_default_context()
    other_ca = ssl.create_default_context(cafile=str(tls_files.other_ca_cert))
    for context in (system_trust, other_ca):
        client = Paho()
        with pytest.raises(ssl.SSLCertVerificationError):
            client.start("localhost", mosquitto_tls.ports["tls"], context)


def mtls_outcome(port: int, context: ssl.SSLContext) -> str:
    """'connected', or how the broker turned a client away.

    Under TLS 1.3 a missing client certificate is reported after the client's side of
    the handshake has finished, so the refusal shows up either in connect() or as a
    disconnect before any CONNACK.
    """
    client = Paho()
    try:
        client.start("localhost", port, context)
    except (ssl.SSLError, OSError) as e:
        return f"refused: {e!r}"
    try:
        assert client.settled.wait(TIMEOUT), "neither CONNACK nor disconnect"
        if client.connected.is_set() and not client.connect_rc.is_failure:
            return "connected"
        return f"refused: {client.disconnect_rc!r}"
    finally:
        client.stop()


def test_client_certificate_listener(mosquitto_tls: Mosquitto, tls_files: TlsFiles) -> None:
    port = mosquitto_tls.ports["mtls"]
    assert mtls_outcome(port, tls_files.client_context()).startswith("refused")
    assert mtls_outcome(port, tls_files.client_context(client_cert=True)) == "connected"
    with paho_client() as client:
        client.start("localhost", port, tls_files.client_context(client_cert=True))
        client.round_trip()


# -- WebSockets ---------------------------------------------------------------------------------


def test_websockets_round_trip(mosquitto_ws: Mosquitto) -> None:
    with paho_client(transport="websockets") as client:
        client.start(mosquitto_ws.host, mosquitto_ws.ports["ws"])
        client.round_trip()


def test_secure_websockets_round_trip(mosquitto_ws: Mosquitto, tls_files: TlsFiles) -> None:
    with paho_client(transport="websockets") as client:
        client.start("localhost", mosquitto_ws.ports["wss"], tls_files.client_context())
        client.round_trip()


def test_websockets_listen_on_loopback_only(mosquitto_ws: Mosquitto) -> None:
    """Mosquitto's websockets listeners bind every address unless told otherwise."""
    log = mosquitto_ws.log()
    assert "Opening websockets listen socket" in log
    for name in ("ws", "wss"):
        port = mosquitto_ws.ports[name]
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Only 127.0.0.1 is taken: another loopback address is free on that port.
            s.bind(("127.0.0.2", port))


# -- the TCP proxy ------------------------------------------------------------------------------


def test_proxy_forwards(proxy: TcpProxy, mosquitto: Mosquitto) -> None:
    assert proxy.target == (mosquitto.host, mosquitto.port)
    with paho_client() as client:
        client.start(proxy.host, proxy.port)
        client.round_trip()
        assert proxy.established.wait(1) == 1
        assert proxy.active == 1
        assert proxy.bytes_up.value > 0 and proxy.bytes_down.value > 0
    proxy.closed.wait(1)
    assert proxy.active == 0


def test_tls_through_the_proxy(tcp_proxy: ProxyFactory, mosquitto_tls: Mosquitto) -> None:
    assert mosquitto_tls.tls is not None
    proxy = tcp_proxy((mosquitto_tls.host, mosquitto_tls.ports["tls"]))
    with paho_client() as client:
        client.start("localhost", proxy.port, mosquitto_tls.tls.client_context())
        client.round_trip()


def test_stall_is_detected_by_keepalive(proxy: TcpProxy) -> None:
    with paho_client(keepalive=1) as client:
        client.start(proxy.host, proxy.port)
        client.wait_connected()
        proxy.stall()
        assert proxy.stalled
        # paho sends PINGREQ after 1 s of quiet and gives up 1 s later without PINGRESP.
        assert client.disconnected.wait(TIMEOUT), "paho did not notice the stall"
        assert client.disconnect_rc.is_failure
        assert proxy.active == 1, "a stall must not close anything"


def test_resume_after_stall_delivers_what_was_held(proxy: TcpProxy) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT) as s:
        proxy.established.wait(1)
        proxy.stall()
        s.sendall(CONNECT_BYTES)
        # Nothing may come back while stalled; the CONNECT sits in the proxy's buffers.
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.recv(4)
        assert proxy.bytes_up.value == 0
        proxy.resume()
        s.setblocking(True)
        s.settimeout(TIMEOUT)
        assert s.recv(4) == CONNACK_OK


def test_one_way_stall(proxy: TcpProxy) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT) as s:
        s.sendall(CONNECT_BYTES)
        assert s.recv(4) == CONNACK_OK
        proxy.stall(upstream=False, downstream=True)
        up, down = proxy.bytes_up.value, proxy.bytes_down.value
        s.sendall(PINGREQ_BYTES)  # reaches the broker, the PINGRESP does not come back
        proxy.bytes_up.wait(up + 2)
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.recv(2)
        assert proxy.bytes_down.value == down
        proxy.resume()
        s.setblocking(True)
        assert s.recv(2) == b"\xd0\x00"


def test_drop_disconnects_the_client(proxy: TcpProxy) -> None:
    with paho_client() as client:
        client.start(proxy.host, proxy.port)
        client.wait_connected()
        assert proxy.drop() == 1
        assert client.disconnected.wait(TIMEOUT), "paho did not notice the drop"
        assert client.disconnect_rc.is_failure
    assert proxy.closed.value == 1


def test_drop_resets_raw_sockets(proxy: TcpProxy) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT) as s:
        proxy.established.wait(1)
        proxy.drop()
        with pytest.raises(ConnectionResetError):
            s.recv(1)
    with socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT) as s:
        proxy.established.wait(2)
        proxy.drop(reset=False)
        assert s.recv(1) == b""  # FIN: an orderly close


def test_refuse_and_accept(proxy: TcpProxy) -> None:
    proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT)
    assert proxy.accepted.value == 0
    proxy.accept()
    with socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT) as s:
        s.sendall(CONNECT_BYTES)
        assert s.recv(4) == CONNACK_OK
    assert proxy.accepted.value == 1


def test_target_down_resets_the_client(tcp_proxy: ProxyFactory, mosquitto: Mosquitto) -> None:
    proxy = tcp_proxy(mosquitto)
    mosquitto.stop()
    # The reset may come while connect() is still returning, or at the first read.
    with pytest.raises(ConnectionResetError):
        with socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT) as s:
            s.recv(1)
    assert (proxy.accepted.value, proxy.established.value) == (1, 0)
    mosquitto.start()
    with socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT) as s:
        s.sendall(CONNECT_BYTES)
        assert s.recv(4) == CONNACK_OK


def test_proxy_from_asyncio(proxy: TcpProxy) -> None:
    async def main() -> None:
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        assert await proxy.established.wait_async(1, TIMEOUT) == 1
        writer.write(CONNECT_BYTES)
        assert await reader.readexactly(4) == CONNACK_OK
        with pytest.raises(TimeoutError, match="established reached 1, not 2"):
            await proxy.established.wait_async(2, timeout=0.05)
        proxy.drop()
        with pytest.raises(ConnectionResetError):
            await reader.read(1)
        writer.close()

    asyncio.run(main())


def test_count_wakes_async_waiters_from_other_threads() -> None:
    count = Count("events")

    async def main() -> int:
        waiter = asyncio.ensure_future(count.wait_async(2, TIMEOUT))
        await asyncio.sleep(0)  # let the waiter register

        def bump_twice() -> None:
            count.increment()
            count.increment()

        threading.Thread(target=bump_twice).start()
        return await waiter

    assert asyncio.run(main()) == 2
    with pytest.raises(TimeoutError):
        count.wait(3, timeout=0.01)


def test_proxy_close_leaves_nothing_behind(mosquitto: Mosquitto) -> None:
    proxy = TcpProxy((mosquitto.host, mosquitto.port))
    s = socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT)
    proxy.established.wait(1)
    assert fixture_threads()
    proxy.close()
    assert not fixture_threads()
    with pytest.raises(ConnectionResetError):
        s.recv(1)
    s.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT)
    with pytest.raises(RuntimeError, match="closed"):
        proxy.stall()


# -- the fake broker ----------------------------------------------------------------------------


def connect_raw(broker: FakeBroker) -> socket.socket:
    return socket.create_connection((broker.host, broker.port), timeout=TIMEOUT)


def read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(4096):
        out += chunk
    return out


def test_fake_broker_connack_then_garbage(fake_broker: FakeBrokerFactory) -> None:
    broker = fake_broker([recv(CONNECT), send(connack(0)), send(GARBAGE), close()])
    with connect_raw(broker) as s:
        s.sendall(CONNECT_BYTES)
        assert read_all(s) == CONNACK_OK + GARBAGE
    conn = broker.connection(0)
    conn.finished.wait(1)
    assert conn.packets == [CONNECT_BYTES]
    broker.check()


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(connack(5), id="refused-3.1.1"),
        pytest.param(connack(0x87, properties=b""), id="refused-5.0"),
        pytest.param(OVERSIZED_REMAINING_LENGTH, id="oversized"),
        pytest.param(GARBAGE, id="garbage"),
    ],
)
def test_fake_broker_sends_what_it_is_told(fake_broker: FakeBrokerFactory, reply: bytes) -> None:
    broker = fake_broker([recv(CONNECT), send(reply), expect_close()])
    with connect_raw(broker) as s:
        s.sendall(CONNECT_BYTES)
        assert s.recv(len(reply) + 1) == reply
    conn = broker.connection(0)
    conn.finished.wait(1)
    assert conn.peer_closed and conn.error is None
    assert connack(5) == b"\x20\x02\x00\x05"
    assert connack(0x87, properties=b"") == b"\x20\x03\x00\x87\x00"


def test_fake_broker_that_never_answers(fake_broker: FakeBrokerFactory) -> None:
    broker = fake_broker([recv(CONNECT)])
    with connect_raw(broker) as s:
        s.sendall(CONNECT_BYTES + PINGREQ_BYTES)
        conn = broker.connection(0)
        conn.packets_received.wait(2)  # it keeps reading and recording while silent
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.recv(1)
    conn.finished.wait(1)
    assert [p[0] >> 4 for p in conn.packets] == [CONNECT, PINGREQ]
    assert conn.peer_closed and conn.error is None


def test_fake_broker_closes_or_resets_at_once(fake_broker: FakeBrokerFactory) -> None:
    broker = fake_broker([close()], [reset()])
    with connect_raw(broker) as s:
        assert s.recv(1) == b""
    with pytest.raises(ConnectionResetError):  # in connect() if the RST is quick enough
        with connect_raw(broker) as s:
            s.recv(1)
    broker.finished.wait(2)
    assert [c.received for c in broker.connections] == [b"", b""]


def test_fake_broker_scripts_per_connection(fake_broker: FakeBrokerFactory) -> None:
    def answer_one_ping(conn: FakeConnection) -> None:
        conn.recv_packet()
        conn.send(CONNACK_OK)
        if conn.recv_packet()[0] >> 4 == PINGREQ:
            conn.send(b"\xd0\x00")

    broker = fake_broker([close()], answer_one_ping)
    for expected_close in (True, False, False):
        with connect_raw(broker) as s:
            if expected_close:
                assert s.recv(1) == b""
                continue
            s.sendall(CONNECT_BYTES)
            assert s.recv(4) == CONNACK_OK
            s.sendall(PINGREQ_BYTES)
            assert s.recv(2) == b"\xd0\x00"
    broker.finished.wait(3)
    assert len(broker.connections) == 3
    assert [len(c.packets) for c in broker.connections] == [0, 2, 2]
    broker.check()


def test_fake_broker_records_script_failures(fake_broker: FakeBrokerFactory) -> None:
    broker = fake_broker([recv(CONNECT), send(CONNACK_OK)])
    with connect_raw(broker) as s:
        s.sendall(PINGREQ_BYTES)
        assert s.recv(1) == b""  # the script failed, so the connection was closed
    broker.finished.wait(1)
    assert isinstance(broker.connections[0].error, AssertionError)
    with pytest.raises(AssertionError, match="fake broker scripts failed"):
        broker.check()


def test_fake_broker_from_asyncio(fake_broker: FakeBrokerFactory) -> None:
    broker = fake_broker([recv(CONNECT), send(CONNACK_OK)])

    async def main() -> None:
        reader, writer = await asyncio.open_connection(broker.host, broker.port)
        writer.write(CONNECT_BYTES)
        assert await reader.readexactly(4) == CONNACK_OK
        await broker.accepted.wait_async(1, TIMEOUT)
        assert broker.connections[0].packets == [CONNECT_BYTES]
        writer.close()
        await writer.wait_closed()
        await broker.finished.wait_async(1, TIMEOUT)

    asyncio.run(main())


def test_fake_broker_close_leaves_nothing_behind() -> None:
    broker = FakeBroker([recv(CONNECT)])
    s = connect_raw(broker)
    broker.connection(0)
    assert fixture_threads()
    broker.close()
    assert not fixture_threads()
    assert broker.connections[0].error is None  # ended by close(), not a failure
    assert s.recv(1) == b""
    s.close()
    with pytest.raises(ConnectionRefusedError):
        connect_raw(broker)
