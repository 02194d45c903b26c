"""One MQTT client process for the client benchmarks (bench/clients.py).

Run as a script, not as ``-m bench...``, so the process imports nothing but
its own client library (its peak RSS is part of the table)::

    python bench/_clientproc.py ROLE LIBRARY PORT TOPIC QOS [CLIENT_ID]

LIBRARY: ours (blocking ``Client``), ours-async (``AsyncClient``), paho,
gmqtt, aiomqtt; every one speaks MQTT 3.1.1 to 127.0.0.1:PORT. ROLE:

``pub``
    Connects and prints ``ready``. For each stdin line ``go N`` publishes N
    messages to TOPIC at QOS through the library's fast path (QoS 1/2: at most
    ``WINDOW`` unacknowledged, never stop-and-wait), waits until the broker
    has acknowledged all of them, and prints ``sent T0`` (T0: monotonic clock
    before the first publish). ``end`` (or EOF) disconnects and exits.
``sub``
    Connects, subscribes to TOPIC at QOS, prints ``ready``; for each stdin
    line ``want TOTAL`` prints ``ok``, then ``got T`` (monotonic clock) once
    TOTAL messages have arrived since it subscribed. ``end`` exits.
``recv``
    Receive-only: a persistent session (clean session 0, CLIENT_ID)
    subscribes to TOPIC at QOS, disconnects and prints ``ready``. For each
    ``go N`` (the broker queued N messages meanwhile) connects, takes the N
    messages, disconnects, and prints ``got T0 T1`` (before connecting, after
    the last message). ``end`` exits.

``time.monotonic()`` is CLOCK_MONOTONIC, one clock for every process, so the
parent may subtract one process's T0 from another's T.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

WINDOW = 1000  # QoS 1/2 messages a publisher may have unacknowledged
PAYLOAD = b"0123456789abcdef" * 4  # 64 bytes, printable: mosquitto_pub -l sends the same
HOST = "127.0.0.1"

now = time.monotonic


def say(*words: object) -> None:
    print(*words, flush=True)


def peak_rss() -> int:
    """This process's peak RSS in KiB since it started (VmHWM). Not
    ru_maxrss: Linux carries the parent's peak into it across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def finish() -> None:
    """Report the peak RSS as the last line and exit at once."""
    say("rss", peak_rss())
    os._exit(0)


def commands() -> list[str]:
    """The next stdin line, split; ``["end"]`` at EOF."""
    return sys.stdin.readline().split() or ["end"]


class Counter:
    """Counts messages; after ``want(total)``, ``done`` is set (from any
    thread) when the count reaches ``total``, and ``at`` is the time."""

    def __init__(self) -> None:
        self.count = 0
        self.target = -1
        self.done = threading.Event()
        self.at = 0.0

    def want(self, total: int) -> None:
        self.done.clear()
        self.target = total

    def hit(self, *_: object) -> None:
        self.count += 1
        if self.count == self.target:
            self.at = now()
            self.done.set()


class AsyncCounter(Counter):
    def __init__(self) -> None:
        super().__init__()
        self.event = asyncio.Event()

    def want(self, total: int) -> None:
        self.event.clear()
        self.target = total

    def hit(self, *_: object) -> None:
        self.count += 1
        if self.count == self.target:
            self.at = now()
            self.event.set()

    def hit0(self, *_: object) -> int:  # gmqtt's on_message returns a reason code
        self.hit()
        return 0


async def async_commands() -> list[str]:
    return await asyncio.get_running_loop().run_in_executor(None, commands)


def watch_wants(counter: Counter) -> None:
    """sub role: answer each ``want TOTAL`` with ``ok``, then ``got T``; at
    ``end`` report the peak RSS and exit."""
    while True:
        cmd = commands()
        if cmd[0] != "want":
            break
        counter.want(int(cmd[1]))
        say("ok")
        counter.done.wait()
        say("got", counter.at)
    finish()


async def async_watch_wants(counter: AsyncCounter) -> None:
    while True:
        cmd = await async_commands()
        if cmd[0] != "want":
            break
        counter.want(int(cmd[1]))
        say("ok")
        await counter.event.wait()
        say("got", counter.at)
    finish()


# -- ours: blocking Client ------------------------------------------------------


def ours(role: str, port: int, topic: str, qos: int, client_id: str) -> None:
    from fieldline.mqtt import Client

    if role == "pub":
        c = Client(HOST, port, version=4, max_queued=WINDOW, reconnect=False)
        c.connect()
        say("ready")
        while (cmd := commands())[0] == "go":
            n = int(cmd[1])
            t0 = now()
            publish = c.publish
            for _ in range(n - 1):
                publish(topic, PAYLOAD, qos, timeout=0)  # queued and sent, no wait
            publish(topic, PAYLOAD, qos)  # QoS 1/2: waits for the last ack
            while c.session.inflight:
                c.loop(0.1)
            say("sent", t0)
        c.disconnect()
    elif role == "sub":
        counter = Counter()
        c = Client(HOST, port, version=4, reconnect=False)
        c.on_message = counter.hit
        c.connect()
        c.subscribe(topic, qos)
        # The main thread drives the connection; a thread answers the parent.
        threading.Thread(target=watch_wants, args=(counter,), daemon=True).start()
        say("ready")
        while True:
            c.loop(60.0)
    else:
        kw: dict[str, Any] = dict(client_id=client_id, version=4, clean_start=False)
        c = Client(HOST, port, reconnect=False, **kw)
        c.connect()
        c.subscribe(topic, qos)
        c.disconnect()
        say("ready")
        while (cmd := commands())[0] == "go":
            counter = Counter()
            counter.want(int(cmd[1]))
            t0 = now()
            c = Client(HOST, port, reconnect=False, **kw)
            c.on_message = counter.hit
            c.connect()
            while not counter.done.is_set():
                c.loop(1.0)
            c.disconnect()
            say("got", t0, counter.at)


# -- ours: AsyncClient ----------------------------------------------------------------


async def ours_async(role: str, port: int, topic: str, qos: int, client_id: str) -> None:
    from fieldline.mqtt import AsyncClient

    if role == "pub":
        c = AsyncClient(HOST, port, version=4, max_queued=WINDOW, reconnect=False)
        await c.connect()
        say("ready")
        while (cmd := await async_commands())[0] == "go":
            n = int(cmd[1])
            t0 = now()
            publish = c.publish
            for _ in range(n - 1):
                await publish(topic, PAYLOAD, qos, timeout=0)
            await publish(topic, PAYLOAD, qos)
            while c.session.inflight:
                await asyncio.sleep(0.001)
            say("sent", t0)
        await c.disconnect()
    elif role == "sub":
        counter = AsyncCounter()
        c = AsyncClient(HOST, port, version=4, reconnect=False)
        c.on_message = counter.hit
        await c.connect()
        await c.subscribe(topic, qos)
        say("ready")
        await async_watch_wants(counter)
    else:
        kw: dict[str, Any] = dict(client_id=client_id, version=4, clean_start=False)
        c = AsyncClient(HOST, port, reconnect=False, **kw)
        await c.connect()
        await c.subscribe(topic, qos)
        await c.disconnect()
        say("ready")
        while (cmd := await async_commands())[0] == "go":
            counter = AsyncCounter()
            counter.want(int(cmd[1]))
            t0 = now()
            c = AsyncClient(HOST, port, reconnect=False, **kw)
            c.on_message = counter.hit
            await c.connect()
            await counter.event.wait()
            await c.disconnect()
            say("got", t0, counter.at)


# -- paho-mqtt 2.x, loop_start() --------------------------------------------------------


def paho(role: str, port: int, topic: str, qos: int, client_id: str) -> None:
    import paho.mqtt.client as mqtt

    def make(inflight: int = 0, **kw: Any) -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311, **kw)
        if inflight:
            c.max_inflight_messages_set(inflight)  # only before connecting
        up = threading.Event()
        c.on_connect = lambda *a: up.set()
        c.connect(HOST, port)
        c.loop_start()
        if not up.wait(10):
            raise RuntimeError("paho: no CONNACK")
        return c

    def subscribe(c: mqtt.Client) -> None:
        acked = threading.Event()
        c.on_subscribe = lambda *a: acked.set()
        c.subscribe(topic, qos)
        if not acked.wait(10):
            raise RuntimeError("paho: no SUBACK")

    if role == "pub":
        c = make(WINDOW)
        window = threading.BoundedSemaphore(WINDOW)
        if qos:
            c.on_publish = lambda *a: window.release()
        say("ready")
        while (cmd := commands())[0] == "go":
            n = int(cmd[1])
            t0 = now()
            publish = c.publish
            if qos:
                acquire = window.acquire
                for _ in range(n):
                    acquire()
                    info = publish(topic, PAYLOAD, qos)
            else:
                for _ in range(n):
                    info = publish(topic, PAYLOAD, qos)
            info.wait_for_publish(60)  # in order: the last one acked means all are
            say("sent", t0)
        c.disconnect()
        c.loop_stop()
    elif role == "sub":
        counter = Counter()
        c = make()
        c.on_message = counter.hit
        subscribe(c)
        say("ready")
        watch_wants(counter)
    else:
        c = make(client_id=client_id, clean_session=False)
        subscribe(c)
        c.disconnect()
        c.loop_stop()
        say("ready")
        while (cmd := commands())[0] == "go":
            counter = Counter()
            counter.want(int(cmd[1]))
            t0 = now()
            c = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2,
                client_id=client_id,
                clean_session=False,
                protocol=mqtt.MQTTv311,
            )
            c.on_message = counter.hit
            c.connect(HOST, port)
            c.loop_start()
            counter.done.wait()
            c.disconnect()
            c.loop_stop()
            say("got", t0, counter.at)


# -- gmqtt -------------------------------------------------------------------------------


async def gmqtt(role: str, port: int, topic: str, qos: int, client_id: str) -> None:
    import gmqtt as g
    from gmqtt.mqtt.constants import MQTTv311

    OnMessage = Callable[..., int]

    async def make(cid: str, clean: bool = True, on_message: OnMessage | None = None) -> Any:
        c = g.Client(cid, clean_session=clean)
        if on_message is not None:
            c.on_message = on_message
        await c.connect(HOST, port, version=MQTTv311)
        return c

    async def subscribe(c: Any) -> None:
        acked = asyncio.Event()
        c.on_subscribe = lambda *a: acked.set()
        c.subscribe(topic, qos)
        await asyncio.wait_for(acked.wait(), 10)

    if role == "pub":
        c = await make(f"bench-pub-{os.getpid()}")
        # gmqtt has no flow control: publish() writes at once and keeps QoS 1/2
        # messages until acked; hold the window by watching that store.
        store = c._persistent_storage
        room = asyncio.Event()
        removed = store.remove_message_by_mid

        def remove(mid: int) -> None:
            removed(mid)
            if len(store._messages) < WINDOW:
                room.set()

        store.remove_message_by_mid = remove
        say("ready")
        while (cmd := await async_commands())[0] == "go":
            n = int(cmd[1])
            t0 = now()
            publish = c.publish
            for i in range(n):
                publish(topic, PAYLOAD, qos)
                if qos:
                    while len(store._messages) >= WINDOW:
                        room.clear()
                        await room.wait()
                elif i % WINDOW == 0:
                    await asyncio.sleep(0)  # let the transport write
            if qos:
                await store.wait_empty()
            say("sent", t0)
        await c.disconnect()
    elif role == "sub":
        counter = AsyncCounter()
        c = await make(f"bench-sub-{os.getpid()}", on_message=counter.hit0)
        await subscribe(c)
        say("ready")
        await async_watch_wants(counter)
    else:
        c = await make(client_id, clean=False)
        await subscribe(c)
        await c.disconnect()
        say("ready")
        while (cmd := await async_commands())[0] == "go":
            counter = AsyncCounter()
            counter.want(int(cmd[1]))
            t0 = now()
            c = await make(client_id, clean=False, on_message=counter.hit0)
            await counter.event.wait()
            await c.disconnect()
            say("got", t0, counter.at)


# -- aiomqtt -------------------------------------------------------------------------------


async def aiomqtt(role: str, port: int, topic: str, qos: int, client_id: str) -> None:
    import aiomqtt as a

    if role == "pub":
        async with a.Client(HOST, port, max_inflight_messages=WINDOW) as c:
            c.pending_calls_threshold = WINDOW + 1  # no warning for a full window
            window = asyncio.Semaphore(WINDOW)
            tasks: set[asyncio.Task[None]] = set()

            async def one() -> None:
                try:
                    await c.publish(topic, PAYLOAD, qos)
                finally:
                    window.release()

            say("ready")
            while (cmd := await async_commands())[0] == "go":
                n = int(cmd[1])
                t0 = now()
                # A window of concurrent publish() calls, each awaiting its ack.
                for _ in range(n):
                    await window.acquire()
                    task = asyncio.create_task(one())
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                await asyncio.gather(*tasks)
                say("sent", t0)
    elif role == "sub":
        async with a.Client(HOST, port) as c:
            await c.subscribe(topic, qos)
            say("ready")
            counter = AsyncCounter()
            watcher = asyncio.create_task(async_watch_wants(counter))
            async for _ in c.messages:
                counter.hit()
            watcher.cancel()
    else:
        async with a.Client(HOST, port, identifier=client_id, clean_session=False) as c:
            await c.subscribe(topic, qos)
        say("ready")
        while (cmd := await async_commands())[0] == "go":
            n = int(cmd[1])
            got = 0
            t0 = now()
            async with a.Client(HOST, port, identifier=client_id, clean_session=False) as c:
                async for _ in c.messages:
                    got += 1
                    if got == n:
                        break
                t1 = now()
            say("got", t0, t1)


LIBRARIES = ("ours", "ours-async", "paho", "gmqtt", "aiomqtt")


def main(argv: list[str]) -> None:
    role, library, port, topic, qos = argv[:5]
    client_id = argv[5] if len(argv) > 5 else ""
    args = (role, int(port), topic, int(qos), client_id)
    if library == "ours":
        ours(*args)
    elif library == "ours-async":
        asyncio.run(ours_async(*args))
    elif library == "paho":
        paho(*args)
    elif library == "gmqtt":
        asyncio.run(gmqtt(*args))
    elif library == "aiomqtt":
        asyncio.run(aiomqtt(*args))
    else:
        raise SystemExit(f"unknown library {library!r}; choose from {', '.join(LIBRARIES)}")
    finish()


if __name__ == "__main__":
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:  # the checkout's fieldline, whatever is installed
        sys.path.insert(0, root)
    main(sys.argv[1:])
