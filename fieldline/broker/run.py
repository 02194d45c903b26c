"""Run a broker until SIGINT or SIGTERM: what ``fieldline broker`` does."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from .server import Broker


async def serve(host: str = "127.0.0.1", port: int = 1883, **options: Any) -> None:
    """Start a broker, print a one-line summary of its listener, and run until SIGINT or
    SIGTERM, then close every connection and return. Raises OSError if the address
    cannot be bound."""
    broker = Broker(host, port, **options)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"fieldline broker: MQTT 3.1.1 and 5.0 on mqtt://{broker.host}:{broker.port} "
        "(in memory, anonymous); Ctrl-C stops it",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await broker.stop()
    print("fieldline broker: stopped", flush=True)
