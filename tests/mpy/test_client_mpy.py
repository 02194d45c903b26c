# The blocking Client and the AsyncClient against the test broker, on
# MicroPython (Unix port) and CPython: connect, subscribe, QoS 0/1/2 both
# ways, in MQTT 3.1.1 and 5.0. Skipped where there is no broker (WebAssembly).

import asyncio

from mpytest import need_broker, raises

from fieldline.mqtt import AsyncClient, Client, ConnectionLost, MQTTTimeout, Subscription

_n = [0]


def _topic(v):
    _n[0] += 1
    return "mpy/%d/%d" % (v, _n[0])


def _blocking_roundtrip(v):
    host, port = need_broker()
    t = _topic(v)
    with Client(host, port, version=v, timeout=10) as c:
        assert c.connack.reason_code == 0
        assert c.subscribe(Subscription(t + "/#", 2)) == [2]
        for qos in (0, 1, 2):
            ack = c.publish(t + "/x", b"payload %d" % qos, qos=qos)
            assert (ack is None) == (qos == 0)
            m = c.recv(10)
            assert m.topic == t + "/x" and m.payload == b"payload %d" % qos and m.qos == qos
        assert c.unsubscribe(t + "/#") == ([] if v == 4 else [0])
        raises(MQTTTimeout, c.recv, 0.1)


def test_blocking_client_311():
    _blocking_roundtrip(4)


def test_blocking_client_5():
    _blocking_roundtrip(5)


async def _async_roundtrip(v):
    host, port = need_broker()
    t = _topic(v)
    got = []  # type: list
    async with AsyncClient(host, port, version=v, timeout=10) as c:
        assert await c.subscribe(t + "/cb", qos=1, callback=got.append) == [1]
        assert await c.subscribe(t + "/s", qos=2) == [2]
        stream = c.messages(t + "/s")
        for qos in (0, 1, 2):
            await c.publish(t + "/s", b"s%d" % qos, qos=qos)
            m = await stream.__anext__()
            assert m.payload == b"s%d" % qos and m.qos == qos
        await c.publish(t + "/cb", b"cb", qos=1)
        while not got:
            await asyncio.sleep(0.01)
        assert got[0].payload == b"cb"


def test_async_client_311():
    need_broker()  # before asyncio.run: the WebAssembly port's asyncio has none
    asyncio.run(_async_roundtrip(4))


def test_async_client_5():
    need_broker()
    asyncio.run(_async_roundtrip(5))


def test_closed_port_raises_oserror():
    host, port = need_broker()
    # Port 1 on loopback: nothing listens there.
    raises(OSError, Client(host, 1, timeout=5).connect)


def test_reconnect_off_raises_connection_lost():
    host, port = need_broker()
    c = Client(host, port, reconnect=False, timeout=5)
    c.connect()
    c.disconnect()
    raises(ConnectionLost, c.publish, "x", b"1", 1)
