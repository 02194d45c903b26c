"""The clients' inbox (``fieldline/mqtt/_client_inbox.py``): ``Fifo``, the queue
behind ``recv()`` and ``messages()``, and a backlog of 10,000 messages drained
by both clients in linear time. Time is measured in operations, not seconds:
the items a queue moves when it removes one (what makes ``list.pop(0)`` cost
O(n) per message, O(n²) for a backlog).

The places, acknowledgements and pausing of the inbox are tested against a real
broker in ``test_client_backpressure.py``.
"""

from __future__ import annotations

import asyncio
import importlib
import random
import time
from collections import deque
from typing import Any

import pytest
from conftest import FakeBrokerFactory, arun
from fakebroker import CONNACK_OK, CONNECT, recv, send

from fieldline.mqtt import AsyncClient, Client, Publish, encode

# By name: mypy checks the tests, and would then check the untyped module too.
Fifo: Any = importlib.import_module("fieldline.mqtt._client_inbox").Fifo

WAIT = 10.0
BACKLOG = 10_000


def counting(queue_type: type[list[Any]]) -> Any:
    """A subclass of ``queue_type`` (a list type) whose ``moves`` counts the
    items each removal shifts towards the front."""

    class Counting(queue_type):  # type: ignore[valid-type,misc]
        moves = 0

        def pop(self, index: int = -1) -> Any:
            self.moves += len(self) - index % len(self) - 1 if self else 0
            return super().pop(index)

        def __delitem__(self, key: Any) -> None:
            if isinstance(key, slice):
                self.moves += len(self) - key.indices(len(self))[1]
            else:
                self.moves += len(self) - key % len(self) - 1
            super().__delitem__(key)

        def insert(self, index: Any, item: Any) -> None:
            self.moves += len(self) - min(max(index, 0), len(self))
            super().insert(index, item)

        def remove(self, item: Any) -> None:
            self.moves += len(self) - self.index(item) - 1
            super().remove(item)

    return Counting


# -- Fifo ------------------------------------------------------------------------------


def test_fifo_gives_items_oldest_first_and_is_empty_once_all_are_taken() -> None:
    q = Fifo()
    assert not q and q == []
    q.extend([0, 1, 2, 3, 4])
    assert [q.take(), q.take()] == [0, 1]
    q.append(5)
    assert q
    assert [q.take() for _ in range(4)] == [2, 3, 4, 5]
    assert not q and q == []  # tests false and equals [] exactly when nothing is left
    with pytest.raises(IndexError):
        q.take()
    q.append(6)
    assert q.take() == 6 and q == []


def test_fifo_matches_a_deque_and_moves_fewer_items_than_it_gives() -> None:
    rng = random.Random(4)
    q = counting(Fifo)()
    ref: deque[int] = deque()
    taken = 0
    for n in range(20_000):
        if ref and rng.random() < 0.5:
            assert q.take() == ref.popleft()
            taken += 1
        else:
            q.append(n)
            ref.append(n)
        assert bool(q) == bool(ref)
    while ref:
        assert q.take() == ref.popleft()
        taken += 1
    assert q == [] and q.moves <= taken


def test_fifo_lets_go_of_what_it_gave() -> None:
    # A taken item is not kept alive by the queue (the application may drop it).
    q = Fifo()
    q.extend([object() for _ in range(10)])
    first = q.take()
    assert all(item is not first for item in q)


# -- a backlog through the clients --------------------------------------------------------


def _backlog() -> bytes:
    return b"".join(encode(Publish("backlog", b"%d" % n), 4) for n in range(BACKLOG))


def test_a_backlog_of_10000_messages_drains_in_linear_time(
    fake_broker: FakeBrokerFactory, kind: str
) -> None:
    # The broker sends the whole backlog at once; the client reads it all
    # (max_inbox=0: no limit) before the application takes the first message.
    broker = fake_broker([recv(CONNECT), send(CONNACK_OK), send(_backlog())])
    expected = [b"%d" % n for n in range(BACKLOG)]
    if kind == "blocking":
        c = Client(broker.host, broker.port, version=4, max_inbox=0, reconnect=False, timeout=WAIT)
        c.connect()
        assert not c._inbox  # the backlog is read after the CONNACK
        q = c._inbox = counting(type(c._inbox))()
        deadline = time.monotonic() + WAIT
        while c.inbox_size < BACKLOG:
            assert time.monotonic() < deadline, c.inbox_size
            c.loop(0.1)
        got = [c.recv().payload for _ in range(BACKLOG)]
        size = c.inbox_size
        c.disconnect()
    else:

        async def main() -> tuple[list[Any], Any, int]:
            c = AsyncClient(
                broker.host, broker.port, version=4, max_inbox=0, reconnect=False, timeout=WAIT
            )
            await c.connect()
            assert not c._inbox
            q = c._inbox = counting(type(c._inbox))()
            stream = c.messages()  # reads the inbox
            deadline = time.monotonic() + WAIT
            while c.inbox_size < BACKLOG:
                assert time.monotonic() < deadline, c.inbox_size
                await asyncio.sleep(0.01)
            got = [(await stream.__anext__()).payload for _ in range(BACKLOG)]
            size = c.inbox_size
            await c.disconnect()
            return got, q, size

        got, q, size = arun(main())
    assert got == expected
    assert q == [] and size == 0
    # list.pop(0) would move BACKLOG * (BACKLOG - 1) / 2 items: 49,995,000.
    assert q.moves <= BACKLOG
