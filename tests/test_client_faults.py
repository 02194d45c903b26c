"""Both clients facing faults: a stalled network, a broker that sends garbage or
never answers, TLS with a CA made in the test. Each scenario runs with the
blocking Client and the AsyncClient, in MQTT 3.1.1 and 5.0.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from typing import Any

import pytest
from conftest import FakeBrokerFactory, Mosquitto, ProxyFactory, arun
from fakebroker import (
    CONNACK_OK,
    CONNECT,
    GARBAGE,
    MALFORMED_REMAINING_LENGTH,
    connack,
    expect_close,
    pause,
    prop,
    recv,
    send,
)

from fieldline.mqtt import (
    AsyncClient,
    Client,
    ConnectionLost,
    ConnectionRefused,
    MQTTError,
    MQTTTimeout,
    RemoteProtocolError,
)

WAIT = 10.0


def test_stalled_network_is_detected_by_keepalive(
    mosquitto: Mosquitto, tcp_proxy: ProxyFactory, version: int, kind: str
) -> None:
    # keepalive 1 s: PINGREQ after 1 s of silence, dead after 0.5 s more
    # without an answer; the client then reconnects through the resumed proxy.
    proxy = tcp_proxy(mosquitto)
    lost: list[BaseException] = []
    opts: dict[str, Any] = {
        "version": version,
        "keepalive": 1,
        "timeout": WAIT,
        "backoff_min": 0.05,
        "backoff_max": 0.1,
    }
    if kind == "blocking":
        c = Client(proxy.host, proxy.port, **opts)
        c.on_disconnect = lost.append
        c.connect()
        proxy.stall()
        while not lost:
            c.loop(WAIT)
        proxy.resume()
        c.subscribe("after", qos=1)
        c.publish("after", b"stall", qos=1)
        assert c.recv().payload == b"stall"
        c.disconnect()
    else:

        async def main() -> None:
            c = AsyncClient(proxy.host, proxy.port, **opts)
            gone = asyncio.Event()

            def down(e: BaseException) -> None:
                lost.append(e)
                gone.set()

            c.on_disconnect = down
            await c.connect()
            proxy.stall()
            await asyncio.wait_for(gone.wait(), WAIT)
            proxy.resume()
            await c.subscribe("after", qos=1)
            stream = c.messages()
            await c.publish("after", b"stall", qos=1)
            assert (await stream.__anext__()).payload == b"stall"
            await c.disconnect()

        arun(main())
    assert isinstance(lost[0], MQTTError) and lost[0].reason_code == 0x8D  # Keep Alive timeout
    assert proxy.established.value >= 2


def _connect(kind: str, host: str, port: int, **opts: Any) -> Any:
    opts.setdefault("timeout", WAIT)
    if kind == "blocking":
        c = Client(host, port, **opts)
        c.connect()
        return c
    c2 = AsyncClient(host, port, **opts)
    arun(c2.connect())
    return c2


@pytest.mark.parametrize(
    "garbage", [GARBAGE, MALFORMED_REMAINING_LENGTH], ids=["garbage", "bad-length"]
)
def test_garbage_from_the_broker_fails_cleanly(
    fake_broker: FakeBrokerFactory, kind: str, garbage: bytes
) -> None:
    broker = fake_broker([recv(CONNECT), send(CONNACK_OK), send(garbage), expect_close()])
    lost: list[BaseException] = []
    if kind == "blocking":
        c = Client(broker.host, broker.port, version=4, reconnect=False, timeout=WAIT)
        c.on_disconnect = lost.append
        c.connect()
        with pytest.raises(MQTTError) as e:
            c.recv()
    else:

        async def main() -> Any:
            c = AsyncClient(broker.host, broker.port, version=4, reconnect=False, timeout=WAIT)
            c.on_disconnect = lost.append
            await c.connect()
            with pytest.raises(MQTTError) as e:
                for _ in range(1000):
                    await c.publish("x", b"", qos=1)
            return e

        e = arun(main())
    assert isinstance(lost[0], RemoteProtocolError)
    assert lost[0].reason_code in (0x81, 0x82)  # malformed packet / protocol error
    assert e.value is lost[0]
    conn = broker.connection(0)
    conn.finished.wait(1, timeout=WAIT)
    assert conn.peer_closed or conn.peer_reset


def test_broker_that_never_answers_connect_times_out(
    fake_broker: FakeBrokerFactory, kind: str
) -> None:
    broker = fake_broker([recv(CONNECT)])
    with pytest.raises(MQTTTimeout):
        _connect(kind, broker.host, broker.port, version=4, timeout=0.5)


def test_refusal_reports_server_reference(fake_broker: FakeBrokerFactory, kind: str) -> None:
    ref = b"other.example:1883"
    props = b"\x1c" + len(ref).to_bytes(2, "big") + ref
    broker = fake_broker([recv(CONNECT), send(connack(0x9D, properties=props))])
    with pytest.raises(ConnectionRefused) as e:
        _connect(kind, broker.host, broker.port, version=5)
    assert e.value.reason_code == 0x9D  # Server moved
    assert e.value.server_reference == "other.example:1883"


def _tls_roundtrip(kind: str, broker: Mosquitto, port: str, **opts: Any) -> None:
    opts.update(version=4, reconnect=False, timeout=WAIT)
    if kind == "blocking":
        with Client("localhost", broker.ports[port], **opts) as c:
            c.subscribe("tls", qos=1)
            c.publish("tls", b"secret", qos=1)
            assert c.recv().payload == b"secret"
        return

    async def main() -> None:
        async with AsyncClient("localhost", broker.ports[port], **opts) as c:
            await c.subscribe("tls", qos=1)
            stream = c.messages()
            await c.publish("tls", b"secret", qos=1)
            assert (await stream.__anext__()).payload == b"secret"

    arun(main())


def test_tls_with_a_ca_file(mosquitto_tls: Mosquitto, kind: str) -> None:
    tls = mosquitto_tls.tls
    assert tls is not None
    _tls_roundtrip(kind, mosquitto_tls, "tls", ca_file=str(tls.ca_cert))


def test_tls_client_certificate(mosquitto_tls: Mosquitto, kind: str) -> None:
    tls = mosquitto_tls.tls
    assert tls is not None
    _tls_roundtrip(
        kind,
        mosquitto_tls,
        "mtls",
        ca_file=str(tls.ca_cert),
        cert_file=str(tls.client_cert),
        key_file=str(tls.client_key),
    )


def test_tls_with_an_ssl_context(mosquitto_tls: Mosquitto, kind: str) -> None:
    tls = mosquitto_tls.tls
    assert tls is not None
    _tls_roundtrip(kind, mosquitto_tls, "mtls", tls=tls.client_context(client_cert=True))


def test_tls_without_client_certificate_is_refused(mosquitto_tls: Mosquitto, kind: str) -> None:
    tls = mosquitto_tls.tls
    assert tls is not None
    with pytest.raises((OSError, ConnectionLost)):
        _tls_roundtrip(kind, mosquitto_tls, "mtls", ca_file=str(tls.ca_cert))


def test_tls_with_the_wrong_ca_fails_verification(mosquitto_tls: Mosquitto, kind: str) -> None:
    tls = mosquitto_tls.tls
    assert tls is not None
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_roundtrip(kind, mosquitto_tls, "tls", ca_file=str(tls.other_ca_cert))


def test_v5_enhanced_authentication(fake_broker: FakeBrokerFactory, kind: str) -> None:
    # The broker challenges the CONNECT with an AUTH; on_auth answers it.
    method = prop(0x15, b"TOKEN-X")
    challenge = method + prop(0x16, b"nonce-1")
    auth = b"\xf0" + bytes([2 + len(challenge), 0x18, len(challenge)]) + challenge
    broker = fake_broker([recv(CONNECT), send(auth), recv(15), send(connack(0, properties=method))])
    seen: list[Any] = []

    def on_auth(packet: Any) -> bytes:
        seen.append(packet)
        return b"answer-to-nonce-1"

    opts: dict[str, Any] = {"version": 5, "auth_method": "TOKEN-X", "auth_data": b"hello"}
    if kind == "blocking":
        c = Client(broker.host, broker.port, timeout=WAIT, **opts)
        c.on_auth = on_auth
        assert c.connect().reason_code == 0
        c.disconnect()
    else:

        async def main() -> None:
            c = AsyncClient(broker.host, broker.port, timeout=WAIT, **opts)
            c.on_auth = on_auth
            assert (await c.connect()).reason_code == 0
            await c.disconnect()

        arun(main())
    assert seen[0].properties["authentication_data"] == b"nonce-1"
    conn = broker.connection(0)
    assert b"TOKEN-X" in conn.packets[0] and b"hello" in conn.packets[0]
    assert b"answer-to-nonce-1" in conn.packets[1]


def test_v5_reauthentication(fake_broker: FakeBrokerFactory, kind: str) -> None:
    # Connected; the client re-authenticates (AUTH 0x19), the broker challenges
    # (0x18), on_auth answers, the broker accepts (0x00) and the link stays up.
    method = prop(0x15, b"TOKEN-X")
    challenge = method + prop(0x16, b"nonce-2")
    auth = b"\xf0" + bytes([2 + len(challenge), 0x18, len(challenge)]) + challenge
    ok = b"\xf0" + bytes([2 + len(method), 0x00, len(method)]) + method
    broker = fake_broker(
        [
            recv(CONNECT),
            send(connack(0, properties=method)),
            recv(15),
            send(auth),
            recv(15),
            send(ok),
            recv(3),  # a PUBLISH: the client is still connected and talking
        ]
    )
    answers: list[bytes] = []

    def on_auth(packet: Any) -> bytes:
        answers.append(packet.properties["authentication_data"])
        return b"answer-2"

    opts: dict[str, Any] = {"version": 5, "auth_method": "TOKEN-X", "timeout": WAIT}
    if kind == "blocking":
        c = Client(broker.host, broker.port, **opts)
        c.on_auth = on_auth
        c.connect()
        c.reauthenticate(b"again")
        while not answers:
            c.loop(WAIT)
        c.publish("alive", b"1")
        assert c.is_connected
        c.disconnect()
    else:

        async def main() -> None:
            c = AsyncClient(broker.host, broker.port, **opts)
            c.on_auth = on_auth
            await c.connect()
            await c.reauthenticate(b"again")
            while not answers:
                await asyncio.sleep(0.01)
            await c.publish("alive", b"1")
            assert c.is_connected
            await c.disconnect()

        arun(main())
    conn = broker.connection(0)
    conn.packets_received.wait(4, timeout=WAIT)
    assert answers == [b"nonce-2"]
    assert b"again" in conn.packets[1] and conn.packets[1][2] == 0x19
    assert b"answer-2" in conn.packets[2] and conn.packets[2][2] == 0x18


def test_a_stalled_write_under_loop_start_is_connection_lost(
    fake_broker: FakeBrokerFactory, version: int
) -> None:
    # A peer that stops reading: the I/O thread's sendall() blocked for the
    # whole socket timeout holding the lock, then failed with a bare
    # TimeoutError. Now publish() queues until max_unsent bytes wait, then
    # (BLOCK) waits for room, and the I/O thread ends the connection after
    # 1.5 x keepalive as ConnectionLost, which the waiting publish() raises.
    # tests/test_client_thread.py has the rest.
    ok = connack(0, properties=b"" if version == 5 else None)
    broker = fake_broker([recv(CONNECT), send(ok), pause(3 * WAIT)])  # then reads nothing
    c = Client(
        broker.host, broker.port, version=version, keepalive=1, timeout=WAIT, reconnect=False
    )
    lost: list[BaseException | None] = []
    gone = threading.Event()

    def on_disconnect(e: BaseException | None) -> None:
        lost.append(e)
        gone.set()

    c.on_disconnect = on_disconnect
    c.connect()
    c.loop_start()
    start = time.monotonic()
    try:
        with pytest.raises(ConnectionLost):
            for _ in range(200):  # far more than the socket buffers hold
                c.publish("big", b"x" * 1_000_000)
        assert gone.wait(WAIT)
        assert isinstance(lost[0], ConnectionLost)
        assert time.monotonic() - start < WAIT  # the socket timeout is WAIT
    finally:
        c.disconnect(timeout=1)
