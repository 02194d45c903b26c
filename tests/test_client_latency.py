"""Neither client waits on Nagle's algorithm: a client that receives (and
acknowledges) messages as it publishes gets each round trip in about a
millisecond on loopback, on CPython and on the MicroPython Unix port (CPython's
asyncio sets TCP_NODELAY itself; the blocking Client and MicroPython's asyncio
did not).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fieldline.broker import BrokerThread

REPO = Path(__file__).resolve().parent.parent
ROUNDS = 25
# Nagle held each PUBLISH written after an ack until the broker's delayed ACK:
# 40 ms or more per round on Linux, a second for ROUNDS; now about 1 ms each.
BOUND_MS = 500

SCRIPT = """
import sys
sys.path.insert(0, ".")
import asyncio
from fieldline.mqtt import AsyncClient, Client
try:
    from time import ticks_diff, ticks_ms
except ImportError:
    from time import monotonic
    def ticks_ms():
        return int(monotonic() * 1000)
    def ticks_diff(a, b):
        return a - b
port, rounds = int(sys.argv[1]), int(sys.argv[2])
def blocking():
    c = Client("127.0.0.1", port, version=4, timeout=10)
    c.connect()
    c.subscribe("latency/#", qos=1)
    c.publish("latency/warm", b"x", qos=1)
    c.recv()
    t = ticks_ms()
    for i in range(rounds):
        c.publish("latency/t", b"x" * 100, qos=1)  # written after the last recv()'s PUBACK
        c.recv()
    print("MS", ticks_diff(ticks_ms(), t))
    c.disconnect()
async def main():
    c = AsyncClient("127.0.0.1", port, version=4, timeout=10)
    await c.connect()
    await c.subscribe("latency/#", qos=1)
    stream = c.messages()
    await c.publish("latency/warm", b"x", qos=1)
    await stream.__anext__()
    t = ticks_ms()
    for i in range(rounds):
        await c.publish("latency/t", b"x" * 100, qos=1)
        await stream.__anext__()
    print("MS", ticks_diff(ticks_ms(), t))
    await c.disconnect()
if sys.argv[3] == "blocking":
    blocking()
else:
    asyncio.run(main())
"""


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    b = BrokerThread("127.0.0.1", 0).start()
    yield b
    b.stop()


def test_publish_after_an_ack_is_not_delayed(
    broker: BrokerThread, interpreter: str, kind: str
) -> None:
    out = subprocess.run(
        [interpreter, "-c", SCRIPT, str(broker.port), str(ROUNDS), kind],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    took = int(out.stdout.split("MS ")[1])
    assert took < BOUND_MS, f"{ROUNDS} round trips took {took} ms"
