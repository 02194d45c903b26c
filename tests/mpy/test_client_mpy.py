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


async def _async_raising_callback():
    # A plain callback that raises is logged; the connection task goes on.
    host, port = need_broker()
    t = _topic(5)
    async with AsyncClient(host, port, timeout=10) as c:

        def bad(m):
            raise ValueError("bug in a callback")

        await c.subscribe(t + "/bad", qos=1, callback=bad)
        await c.subscribe(t + "/good", qos=1)
        stream = c.messages(t + "/good")
        await c.publish(t + "/bad", b"x", qos=1)
        await c.publish(t + "/good", b"y", qos=1)
        assert (await stream.__anext__()).payload == b"y"


def test_async_callback_that_raises():
    need_broker()
    asyncio.run(_async_raising_callback())


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


def _manual_ack(v):
    # A job taken but not acknowledged comes again on the next connection of
    # the session (at-least-once processing); an acknowledged one does not.
    host, port = need_broker()
    t = _topic(v)
    opts = {
        "client_id": "mpy-ack-%d-%d" % (v, _n[0]),
        "version": v,
        "clean_start": v == 5,  # 3.1.1: a persistent session; 5.0: session_expiry
        "session_expiry": 3600,
        "manual_ack": True,
        "timeout": 10,
    }
    c = Client(host, port, **opts)
    c.connect()
    c.subscribe(t, qos=1)
    for i in range(3):
        c.publish(t, b"%d" % i, qos=1)
    got = [c.recv(10) for _ in range(3)]
    assert [m.payload for m in got] == [b"0", b"1", b"2"]
    assert c.ack(got[0])
    assert not c.ack(got[0])  # answered already
    c.disconnect()
    opts["clean_start"] = False
    c = Client(host, port, **opts)
    c.connect()
    try:
        assert c.connack.session_present
        again = [c.recv(10) for _ in range(2)]
        assert sorted([m.payload for m in again]) == [b"1", b"2"]
        for m in again:
            assert m.dup and c.ack(m)
        raises(MQTTTimeout, c.recv, 0.2)
    finally:
        c.disconnect()


def test_manual_ack_311():
    _manual_ack(4)


def test_manual_ack_5():
    _manual_ack(5)


async def _receive_maximum():
    # 5.0, receive_maximum=2, manual ack: the broker sends two, then waits for
    # an ack (a QoS 0 marker overtakes the held-back ones meanwhile).
    host, port = need_broker()
    t = _topic(5)
    async with AsyncClient(host, port, receive_maximum=2, manual_ack=True, timeout=10) as c:
        await c.subscribe(t + "/#", qos=1)
        stream = c.messages()
        for i in range(4):
            await c.publish(t + "/q", b"%d" % i, qos=1)
        await c.publish(t + "/marker", b"m", qos=0)
        window = []  # no await in a comprehension on MicroPython
        for _ in range(2):
            window.append(await stream.__anext__())
        assert [m.payload for m in window] == [b"0", b"1"]
        assert (await stream.__anext__()).payload == b"m"
        assert c.ack(window[0]) and c.ack(window[1])
        for i in (2, 3):
            m = await stream.__anext__()
            assert m.payload == b"%d" % i
            assert c.ack(m)
        assert c.inbox_peak <= 3 and c.dropped == 0


def test_receive_maximum_with_manual_ack_5():
    need_broker()
    asyncio.run(_receive_maximum())


def test_small_inbox_loses_no_qos0_when_read_in_time():
    # Two places, and fifty QoS 0 messages arrive in one or two reads: recv()
    # in a loop still gets every one (nothing is dropped while the
    # application takes them as fast as they are parsed).
    host, port = need_broker()
    t = _topic(5)
    with Client(host, port, max_inbox=2, timeout=10) as c:
        c.subscribe(t, qos=0)
        for i in range(50):
            c.publish(t, b"%d" % i, qos=0)  # sends; reads nothing
        for i in range(50):
            assert c.recv(10).payload == b"%d" % i
        assert c.dropped == 0 and c.inbox_peak <= 2


def test_loop_start_without_threads_says_so():
    # MicroPython has no threading module: loop_start() says what to do
    # instead of failing with AttributeError('_client_thread').
    import sys

    if sys.implementation.name != "micropython":
        return
    c = Client("localhost", 1)
    e = raises(NotImplementedError, c.loop_start)
    assert "loop()" in str(e), str(e)
