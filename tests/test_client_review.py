"""Both clients across connections, as a demanding user drives them: what the
``persistence`` hook sends, what waiters see when the client is closed, and
which error a later call reports. Each test names the fault it guards."""

from __future__ import annotations

from typing import Any

from conftest import Mosquitto, arun

from fieldline.mqtt import AsyncClient, Client, MQTTTimeout

WAIT = 10.0


class MemoryStore:
    """The ``persistence`` contract in memory: what put() stored and done() did not
    take back, in put order."""

    def __init__(self) -> None:
        self.live: dict[int, tuple[Any, ...]] = {}
        self.keys = 0
        self.done_keys: list[int] = []

    def put(self, topic: str, payload: bytes, qos: int, retain: bool, properties: Any) -> int:
        self.keys += 1
        self.live[self.keys] = (topic, payload, qos, retain, properties)
        return self.keys

    def done(self, key: int) -> None:
        self.done_keys.append(key)
        self.live.pop(key, None)

    def pending(self) -> list[tuple[int, tuple[Any, ...]]]:
        return sorted(self.live.items())


def drain(c: Client, seconds: float) -> list[bytes]:
    # Everything c receives until ``seconds`` pass without a message.
    got = []
    try:
        while True:
            got.append(c.recv(seconds).payload)
    except MQTTTimeout:
        return got


def test_a_message_queued_before_the_first_connect_goes_out_once(
    mosquitto: Mosquitto, version: int, kind: str
) -> None:
    # publish(qos=1, timeout=0) before connect() queues the message in the
    # session and stores it with ``persistence``. The first connect() then
    # loaded "the messages pending from an earlier run" from the store,
    # which held this one too: it went out twice, under two packet ids, and
    # done() was called twice for one key. Now the store is read before the
    # first message of this run is put: earlier messages first, each once.
    store = MemoryStore()
    store.put("review/p", b"earlier run", 1, False, None)
    opts: dict[str, Any] = dict(version=version, persistence=store, timeout=WAIT)
    with Client(mosquitto.host, mosquitto.port, version=version, timeout=WAIT) as sub:
        sub.subscribe("review/p", qos=1)
        if kind == "blocking":
            c = Client(mosquitto.host, mosquitto.port, **opts)
            c.publish("review/p", b"offline", qos=1, timeout=0)
            c.connect()
            assert c.publish("review/p", b"online", qos=1) is not None
            c.disconnect()
        else:

            async def main() -> None:
                a = AsyncClient(mosquitto.host, mosquitto.port, **opts)
                await a.publish("review/p", b"offline", qos=1, timeout=0)
                await a.connect()
                assert await a.publish("review/p", b"online", qos=1) is not None
                await a.disconnect()

            arun(main())
        # "online" was acknowledged after the others were sent on this connection.
        assert drain(sub, 0.5) == [b"earlier run", b"offline", b"online"]
    assert store.live == {}
    assert sorted(store.done_keys) == [1, 2, 3]
