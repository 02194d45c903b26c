"""Run a broker until SIGINT or SIGTERM: what ``fieldline broker`` does. SIGHUP
re-reads the configuration file and the password, ACL and TLS files
(``Broker.reload``), as it does for Mosquitto.

The event loop is uvloop's when it is installed (``event_loop = "auto"``): it
makes each connection cheaper for the broker (docs/benchmarks.md), and the
broker needs nothing but asyncio's API from it."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

from .config import BrokerConfig, ConfigError
from .logs import configure
from .server import Broker

log = logging.getLogger("fieldline.broker")


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory for ``event_loop`` = ``choice`` (None: asyncio's own).
    Raises ConfigError for "uvloop" when it is not installed."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            msg = "event_loop is uvloop, which is not installed (pip install uvloop)"
            raise ConfigError(msg) from None
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(config: BrokerConfig, reread: Callable[[], BrokerConfig] | None = None) -> None:
    """``serve(config=config, reread=reread)`` on the event loop ``config.event_loop``
    names."""
    with asyncio.Runner(loop_factory=loop_factory(config.event_loop)) as runner:
        runner.run(serve(config=config, reread=reread))


async def serve(
    host: str | None = None,
    port: int | None = None,
    *,
    config: BrokerConfig | None = None,
    reread: Callable[[], BrokerConfig] | None = None,
    **options: Any,
) -> None:
    """Start a broker (arguments as for ``Broker``), print one line per listener, and
    run until SIGINT or SIGTERM, then close every connection and return. SIGHUP
    reloads; ``reread()`` gives the settings again for it (raises ConfigError). Raises
    OSError if an address cannot be bound, ConfigError if a TLS file cannot be used,
    PersistenceError if the persistence file cannot be used."""
    broker = Broker(host, port, config=config, **options)
    configure(broker.config.log_format, broker.config.log_level)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    hup = getattr(signal, "SIGHUP", None)  # not on Windows
    if hup is not None:
        loop.add_signal_handler(hup, _reload, broker, reread)
    for listener in broker.listening:
        print(f"fieldline broker: MQTT 3.1.1 and 5.0 on {listener.describe()}", flush=True)
    if broker.metrics is not None:
        print(f"fieldline broker: Prometheus metrics on {broker.metrics.url}", flush=True)
    summary = f"{broker.storage_summary()}, {broker.auth_summary()}, on {loop_name(loop)}"
    print(f"fieldline broker: {summary}; Ctrl-C stops it", flush=True)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if hup is not None:
            loop.remove_signal_handler(hup)
        await broker.stop()
    print("fieldline broker: stopped", flush=True)


def _reload(broker: Broker, reread: Callable[[], BrokerConfig] | None) -> None:
    # One line either way, so an operator (or a test) sees that the signal arrived;
    # what failed is in the log.
    config = None
    if reread is not None:
        try:
            config = reread()
        except ConfigError as e:
            log.error("reload: %s; the settings read before stay in force", e)
    ok = broker.reload(config) and (reread is None or config is not None)
    if ok:
        print(f"fieldline broker: reloaded, {broker.auth_summary()}", flush=True)
    else:
        print("fieldline broker: reload failed, old settings kept (see the log)", flush=True)
