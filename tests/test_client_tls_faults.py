"""Both clients over TLS (Mosquitto, a CA made in the test) when the network fails:
a connection gone silent is found by keepalive, and given up at once, without
waiting for the TLS goodbye of a peer that no longer answers.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from conftest import Mosquitto, ProxyFactory, arun

from fieldline.mqtt import AsyncClient, Client

REPO = Path(__file__).resolve().parent.parent
WAIT = 10.0
KEEPALIVE = 1  # the silence is found 1.5 x keepalive after the last packet
SLACK = 1.0  # a loaded machine


def test_a_silent_tls_connection_is_lost_within_keepalive(
    mosquitto_tls: Mosquitto, tcp_proxy: ProxyFactory, kind: str
) -> None:
    # The AsyncClient found the silence after 1.5 x keepalive, then closed
    # the TLS connection politely, waiting up to ``timeout`` (30 s by
    # default) for the peer's close_notify: on_disconnect, and reconnecting,
    # came that much later. It now aborts a lost connection.
    tls = mosquitto_tls.tls
    assert tls is not None
    proxy = tcp_proxy(("127.0.0.1", mosquitto_tls.ports["tls"]))
    opts: dict[str, Any] = {
        "version": 4,
        "keepalive": KEEPALIVE,
        "timeout": WAIT,
        "ca_file": str(tls.ca_cert),
        "backoff_min": 0.05,
        "backoff_max": 0.1,
    }
    lost: list[float] = []
    stalled: list[float] = []
    if kind == "blocking":
        c = Client("localhost", proxy.port, **opts)
        gone = threading.Event()

        def down(e: BaseException | None) -> None:
            lost.append(time.monotonic())
            gone.set()

        c.on_disconnect = down
        c.connect()
        c.loop_start()
        try:
            stalled.append(time.monotonic())
            proxy.stall()
            assert gone.wait(WAIT)
            proxy.resume()
            c.subscribe("tls/after", qos=1)  # reconnected
        finally:
            c.disconnect()
    else:

        async def main() -> None:
            c = AsyncClient("localhost", proxy.port, **opts)
            gone = asyncio.Event()

            def down(e: BaseException | None) -> None:
                lost.append(time.monotonic())
                gone.set()

            c.on_disconnect = down
            await c.connect()
            stalled.append(time.monotonic())
            proxy.stall()
            await asyncio.wait_for(gone.wait(), WAIT)
            proxy.resume()
            await c.subscribe("tls/after", qos=1)  # reconnected
            await c.disconnect()

        arun(main())
    took = lost[0] - stalled[0]
    assert took < KEEPALIVE * 1.5 + SLACK, f"lost after {took:.1f} s"


STALLED_WRITER = """
import sys
sys.path.insert(0, ".")
from fieldline.mqtt import Client
try:
    from time import ticks_diff, ticks_ms
except ImportError:
    from time import monotonic
    def ticks_ms():
        return int(monotonic() * 1000)
    def ticks_diff(a, b):
        return a - b
c = Client("localhost", int(sys.argv[1]), version=4, keepalive=1, timeout=20,
           reconnect=False, ca_file=sys.argv[2])
c.connect()
print("UP")
sys.stdin.readline()  # the network has stalled
t = ticks_ms()
try:
    while True:
        c.publish("tls/stalled", b"z" * 50000)
except Exception as e:
    print("ENDED", ticks_diff(ticks_ms(), t), type(e).__name__)
"""


def test_a_stalled_network_ends_a_tls_write_within_keepalive(
    mosquitto_tls: Mosquitto, tcp_proxy: ProxyFactory, interpreter: str
) -> None:
    # The blocking Client on MicroPython: its TLS socket has no settimeout(),
    # so a write to a network that took no more bytes was bounded only by
    # the TCP socket's timeout under it, once per TLS record: publishing
    # 50 KB waited 4 x timeout (80 s here) instead of 1.5 x keepalive.
    tls = mosquitto_tls.tls
    assert tls is not None
    proxy = tcp_proxy(("127.0.0.1", mosquitto_tls.ports["tls"]))
    with subprocess.Popen(
        [interpreter, "-c", STALLED_WRITER, str(proxy.port), str(tls.ca_cert)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            assert proc.stdout.readline() == "UP\n"
            proxy.stall()
            out, err = proc.communicate("stalled\n", timeout=15)
        finally:
            proc.kill()
    ended = out.split()
    assert ended[:1] == ["ENDED"] and ended[2] == "ConnectionLost", out + err
    assert int(ended[1]) < (KEEPALIVE * 1.5 + SLACK + 1.0) * 1000, out
    # MicroPython printed "Warning: exception chaining not supported" for
    # each connection lost (a `raise ... from e` in the clients).
    assert "chaining" not in err, err
