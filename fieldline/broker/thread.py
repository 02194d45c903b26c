"""A broker on its own event loop in a background thread, for synchronous programs and
tests: ``with BrokerThread(port=0) as broker: ... broker.port ...``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .config import Listener
from .run import loop_factory
from .server import Broker

T = TypeVar("T")


class BrokerThread:
    """Runs ``Broker(host, port, **options)`` in a daemon thread. ``start()`` returns once
    it listens (raises what ``Broker.start()`` raised); ``stop()`` stops it and joins the
    thread. ``call(fn, *args)`` runs ``fn`` on the broker's loop and returns its result
    (e.g. ``call(broker.broker.stats)``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        self.broker = Broker(host, port, **options)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def host(self) -> str:
        return self.broker.host

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def listening(self) -> list[Listener]:
        """The listeners, with the ports picked for port 0 (see ``Broker.listening``)."""
        return self.broker.listening

    def start(self, timeout: float = 10.0) -> BrokerThread:
        """Start the thread and wait until the broker listens. Returns self."""
        self._thread = threading.Thread(target=self._main, name="fieldline-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the broker did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker and join its thread. Safe to call twice."""
        loop, done = self._loop, self._done
        if loop is not None and done is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(done.set)
            except RuntimeError:  # the loop closed meanwhile
                pass
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 10.0) -> T:
        """Run ``fn(*args)`` on the broker's loop; return its result or raise its error."""
        assert self._loop is not None, "not started"
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as e:
                future.set_exception(e)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout)

    def __enter__(self) -> BrokerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _main(self) -> None:
        factory = loop_factory(self.broker.config.event_loop)
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        try:
            await self.broker.start()
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._done.wait()
        finally:
            await self.broker.stop()
