"""fieldline.store.Queue on CPython: FIFO order, acknowledgement, TTL,
bounds and their policies, reopening, compaction, and the clients'
``persistence=`` contract. Killed processes: test_store_crash.py; a real
client and broker: test_store_queue_mqtt.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_store import Clock

from fieldline.store import DROP_OLDEST, REFUSE, Queue, QueueFull, StoreError


@pytest.fixture(params=["file", "memory"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    return str(tmp_path / "q") if request.param == "file" else None


def test_fifo_peek_and_ack(where: str | None) -> None:
    q = Queue(where)
    seqs = [q.append(b"m%d" % i) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert q.peek() == [(1, b"m0")]
    assert q.peek(3) == [(1, b"m0"), (2, b"m1"), (3, b"m2")]
    assert q.peek(3) == q.peek(3)  # peeking takes nothing
    assert q.ack([2, 4, 99]) == 2  # out of order, unknown ones ignored
    assert q.ack(2) == 0
    assert q.peek(10) == [(1, b"m0"), (3, b"m2"), (5, b"m4")]
    assert len(q) == 3
    q.ack([1, 3, 5])
    assert q.peek(10) == [] and len(q) == 0
    assert q.append(bytearray(b"next")) == 6  # numbers are never reused while held


def test_a_number_acked_twice_in_one_call_counts_once(where: str | None) -> None:
    q = Queue(where)
    a = q.append(b"x")
    b = q.append(b"y")
    size = q.stats()["file_bytes"]
    assert q.ack([b, a, b, a, 99]) == 2
    assert q.stats()["file_bytes"] == size + 2 * (16 + 4)  # one DELETE each
    assert len(q) == 0 and q.peek(5) == []


def test_an_entry_is_bytes_or_a_buffer(where: str | None) -> None:
    q = Queue(where)
    for bad in (5, "text", [1, 2], None):
        with pytest.raises(TypeError, match="a queue entry is bytes"):
            q.append(bad)  # type: ignore[arg-type]
    assert q.append(bytearray(b"ba")) == 1 and q.append(memoryview(b"mv")) == 2
    assert q.peek(5) == [(1, b"ba"), (2, b"mv")] and q.stats()["file_bytes"] > 0


def test_reopen_keeps_order_and_numbers(tmp_path: Path) -> None:
    path = str(tmp_path / "q")
    with Queue(path) as q:
        for i in range(10):
            q.append(b"%d" % i)
        q.ack([1, 2, 5])
    with Queue(path) as q:
        assert [s for s, _ in q.peek(20)] == [3, 4, 6, 7, 8, 9, 10]
        assert q.append(b"x") == 11


def test_drop_oldest_bound_is_atomic_and_counted(tmp_path: Path) -> None:
    path = str(tmp_path / "q")
    q = Queue(path, max_entries=3, policy=DROP_OLDEST)
    for i in range(6):
        q.append(b"m%d" % i)
    assert [v for _, v in q.peek(10)] == [b"m3", b"m4", b"m5"]
    assert q.stats()["dropped"] == 3
    q.close()
    q = Queue(path, max_entries=3)
    assert [v for _, v in q.peek(10)] == [b"m3", b"m4", b"m5"]


def test_byte_bound(where: str | None) -> None:
    q = Queue(where, max_bytes=3 * (20 + 10), policy=DROP_OLDEST)
    for _ in range(5):
        q.append(b"0123456789")
    assert len(q) == 3 and q.stats()["bytes"] <= 90
    r = Queue(None, max_bytes=60, policy=REFUSE)
    r.append(b"x" * 30)
    with pytest.raises(QueueFull, match="queue full"):
        r.append(b"x" * 30)
    assert r.stats()["refused"] == 1 and len(r) == 1


@pytest.mark.parametrize("policy", [DROP_OLDEST, REFUSE])
def test_an_entry_larger_than_max_bytes_is_refused_up_front(where: str | None, policy: str) -> None:
    # Dropping every entry would not make room for it: it is refused under
    # either policy, and nothing is dropped or written.
    q = Queue(where, max_bytes=1000, policy=policy)
    with pytest.raises(QueueFull, match="exceeds max_bytes"):
        q.append(b"X" * 981)  # 20 bytes of header and number: 1001
    for i in range(10):
        q.append(b"m%d" % i)
    size = q.stats()["file_bytes"]
    with pytest.raises(QueueFull, match="exceeds max_bytes"):
        q.append(b"X" * 2000)
    assert len(q) == 10 and q.stats()["file_bytes"] == size
    assert q.stats()["dropped"] == 0 and q.stats()["refused"] == 2
    if policy == DROP_OLDEST:
        assert q.append(b"X" * 980) == 11  # exactly max_bytes: the rest is dropped
        assert len(q) == 1 and q.stats()["dropped"] == 10
    else:
        with pytest.raises(QueueFull, match="queue full"):
            q.append(b"X" * 980)  # it would fit an empty queue: full, not too large


def test_refuse_policy_writes_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "q")
    q = Queue(path, max_entries=2, policy=REFUSE)
    q.append(b"a")
    q.append(b"b")
    size = q.stats()["file_bytes"]
    with pytest.raises(QueueFull):
        q.append(b"c")
    assert q.stats()["file_bytes"] == size
    q.ack(1)
    q.append(b"c")
    assert [v for _, v in q.peek(5)] == [b"b", b"c"]


@pytest.mark.parametrize("policy", [DROP_OLDEST, REFUSE])
def test_a_full_queue_forgets_expired_entries_first(where: str | None, policy: str) -> None:
    # Expired entries at the head make room: REFUSE takes the new entry, and
    # DROP_OLDEST counts them as expired, not dropped.
    clock = Clock()
    q = Queue(where, max_entries=3, policy=policy, clock=clock)
    q.append(b"old0", ttl=5)
    q.append(b"old1", ttl=5)
    q.append(b"keep")
    clock.now += 10
    assert q.append(b"new0") == 4
    assert q.stats()["expired"] == 1 and q.stats()["dropped"] == 0
    assert q.stats()["refused"] == 0 and len(q) == 3
    assert q.append(b"new1") == 5
    assert q.stats()["expired"] == 2 and q.stats()["dropped"] == 0
    if policy == REFUSE:  # the head is live now: full
        with pytest.raises(QueueFull):
            q.append(b"new2")
        assert [v for _, v in q.peek(5)] == [b"keep", b"new0", b"new1"]
    else:
        assert q.append(b"new2") == 6 and q.stats()["dropped"] == 1
        assert [v for _, v in q.peek(5)] == [b"new0", b"new1", b"new2"]


def test_ttl_per_entry_and_default(where: str | None) -> None:
    clock = Clock()
    q = Queue(where, ttl=60, clock=clock)
    q.append(b"default")
    q.append(b"short", ttl=5)
    q.append(b"long", ttl=600)
    clock.now += 10
    assert [v for _, v in q.peek(5)] == [b"default", b"long"]
    clock.now += 60
    assert [v for _, v in q.peek(5)] == [b"long"]
    assert q.stats()["expired"] == 2 and len(q) == 1


def test_compaction_keeps_what_is_queued(tmp_path: Path) -> None:
    path = str(tmp_path / "q")
    q = Queue(path, segment_size=512)
    keep = [q.append(b"keep%d" % i) for i in range(5)]
    for _ in range(400):
        q.ack(q.append(b"x" * 40))
    assert q.stats()["compactions"] > 0
    assert q.stats()["file_bytes"] < 4096
    assert [s for s, _ in q.peek(10)] == keep
    q.close()
    q = Queue(path, segment_size=512)
    assert [v for _, v in q.peek(10)] == [b"keep%d" % i for i in range(5)]


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="policy"):
        Queue(None, policy="block")


def test_persistence_contract(tmp_path: Path) -> None:
    path = str(tmp_path / "q")
    props = {
        "correlation_data": b"\x00\xff",
        "user_property": [("k", "v"), ("k", "w")],
        "content_type": "text/plain",
        "message_expiry_interval": 30,
    }
    q = Queue(path)
    k1 = q.put("a/1", b"one", 1, False, None)
    k2 = q.put("a/2", memoryview(b"two"), 2, True, props)
    k3 = q.put("a/3", b"", 1, False, {})
    q.done(k1)
    q.close()
    q = Queue(path)
    assert q.pending() == [
        (k2, ("a/2", b"two", 2, True, props, None, False)),
        (k3, ("a/3", b"", 1, False, {}, None, False)),
    ]
    q.done(k2)
    q.done(k3)
    q.done(k3)  # twice is harmless
    assert q.pending() == []


def test_a_queue_refuses_what_it_cannot_hold() -> None:
    q = Queue(None)
    with pytest.raises(StoreError, match="does not fit"):
        q.append(b"x" * (1 << 24))


def test_bounds_must_be_above_zero(tmp_path: Path) -> None:
    for bad in ({"max_entries": 0}, {"max_bytes": 0}, {"max_entries": -1}):
        with pytest.raises(ValueError, match="must be above 0"):
            Queue(tmp_path / "q", **bad)  # type: ignore[arg-type]
