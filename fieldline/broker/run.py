"""Run a broker until SIGINT or SIGTERM: what ``fieldline broker`` does."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from .config import BrokerConfig
from .logs import configure
from .server import Broker


async def serve(
    host: str | None = None,
    port: int | None = None,
    *,
    config: BrokerConfig | None = None,
    **options: Any,
) -> None:
    """Start a broker (arguments as for ``Broker``), print one line per listener, and
    run until SIGINT or SIGTERM, then close every connection and return. Raises
    OSError if an address cannot be bound, ConfigError if a TLS file cannot be used,
    PersistenceError if the persistence file cannot be used."""
    broker = Broker(host, port, config=config, **options)
    configure(broker.config.log_format, broker.config.log_level)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    for listener in broker.listening:
        print(f"fieldline broker: MQTT 3.1.1 and 5.0 on {listener.describe()}", flush=True)
    if broker.metrics is not None:
        print(f"fieldline broker: Prometheus metrics on {broker.metrics.url}", flush=True)
    summary = f"{broker.storage_summary()}, {broker.auth_summary()}"
    print(f"fieldline broker: {summary}; Ctrl-C stops it", flush=True)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await broker.stop()
    print("fieldline broker: stopped", flush=True)
