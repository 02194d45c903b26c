"""fieldline.store on MicroPython (and CPython) with real files: the Store
API, reopening, compaction, torn tails, and the Queue."""

import os
import time

from mpytest import raises

from fieldline.store import (
    REFUSE,
    EncodeError,
    QueryError,
    Queue,
    QueueFull,
    Store,
    StoreError,
)

_n = [0]


def _folder():
    # A fresh folder under /tmp (the Unix port, the wasm port's MEMFS, CPython).
    _n[0] += 1
    path = "/tmp/fl-store-%d-%d" % (int(time.time() * 1000) % 100000000, _n[0])
    _rm(path)
    return path


def _rm(path):
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        os.remove(path + "/" + name)
    os.rmdir(path)


def _segments(path):
    return sorted([n for n in os.listdir(path) if n.endswith(".seg")])


class Clock:
    def __init__(self):
        self.now = 1700000000

    def __call__(self):
        return self.now


def test_put_get_list_delete():
    path = _folder()
    s = Store(path)
    assert s.put("a", {"v": 1}) == "a"
    k = s.put([1, "x", None, True, 2.5])
    assert s.get("a") == {"v": 1}
    assert s.get(k) == [1, "x", None, True, 2.5]
    assert s.get("zz") is None and s.get("zz", 0) == 0
    assert s.list() == ["a", k]
    assert s.delete("a") and not s.delete("a")
    assert s.list() == [k] and len(s) == 1
    s.close()
    _rm(path)


def test_errors():
    s = Store()
    e = raises(EncodeError, s.put, "k", b"bytes")
    assert "not JSON" in str(e)
    raises(EncodeError, s.put, "k", {1: 2})
    raises(EncodeError, s.put, "k", float("nan"))
    raises(StoreError, s.put, "", 1)
    raises(StoreError, s.put, "k" * 256, 1)
    raises(ValueError, s.put, "k", 1, 0)
    raises(QueryError, s.query, {"a": {"$nope": 1}})
    assert len(s) == 0


def test_ttl_and_cleanup():
    clock = Clock()
    s = Store(None, clock=clock)
    s.put("short", 1, 10)
    s.put("long", 2, 100)
    clock.now += 11
    assert s.get("short") is None and s.get("long") == 2
    clock.now += 100
    assert s.cleanup() == 1
    assert s.list() == []


def test_batches_and_queries():
    path = _folder()
    s = Store(path)
    keys = s.put_batch(
        {"r1": {"s": "t", "v": 5}, "r2": {"s": "h", "v": 7}, "r3": {"s": "t", "v": 9}}
    )
    assert sorted(keys) == ["r1", "r2", "r3"]  # MicroPython dicts keep no order
    assert s.get_batch(["r3", "x"]) == [{"s": "t", "v": 9}, None]
    assert s.query({"s": "t", "v": {"$gt": 6}}) == [{"s": "t", "v": 9}]
    assert s.query({"$or": [{"v": 5}, {"v": 7}]}, sort="-v", keys=True) == [
        ("r2", {"s": "h", "v": 7}),
        ("r1", {"s": "t", "v": 5}),
    ]
    assert s.query({}, limit=1) == [{"s": "t", "v": 5}]
    assert s.delete_batch(["r1", "r2", "none"]) == 2
    assert s.list() == ["r3"]
    s.close()
    _rm(path)


def test_put_batch_ttls_and_dollar_limit():
    clock = Clock()
    s = Store(None, clock=clock)
    keys = s.put_batch([{"n": 1, "on": True}, {"n": 2, "on": True}], ttls=[10, None])
    raises(ValueError, s.put_batch, [1, 2], ttls=[10])
    assert s.query({"on": True, "$limit": 1}) == [{"n": 1, "on": True}]
    clock.now += 11
    assert s.get_batch(keys) == [None, {"n": 2, "on": True}]
    raises(QueryError, s.query, {"$limit": 1}, limit=1)


def test_put_batch_in_order_with_an_ordered_dict():
    # The way to a batch in a chosen order where dicts keep none; it used to
    # be taken for a list of values (its keys stored under made-up keys).
    from collections import OrderedDict

    s = Store()
    items = OrderedDict()
    for k in ("z", "a", "m"):
        items[k] = {"k": k}
    assert s.put_batch(items) == ["z", "a", "m"]
    assert s.list() == ["z", "a", "m"] and s.get("a") == {"k": "a"}


def test_reopen_and_compaction():
    path = _folder()
    s = Store(path, segment_size=1024)
    for i in range(600):
        s.put("k%d" % (i % 40), {"i": i})
    assert s.stats()["compactions"] > 0
    s.close()
    s = Store(path, segment_size=1024)
    assert len(s) == 40
    for k in range(40):
        assert s.get("k%d" % k) == {"i": 560 + k}, k
    s.compact()
    assert _segments(path) == ["%08d.seg" % s._log.nums[0]]
    assert s.get("k39") == {"i": 599}
    s.close()
    _rm(path)


def test_torn_tail_is_skipped_and_writes_go_on():
    path = _folder()
    s = Store(path)
    s.put("a", 1)
    s.put("b", 2)
    s.close()
    seg = path + "/" + _segments(path)[-1]
    with open(seg, "rb") as f:
        data = f.read()
    with open(seg, "wb") as f:  # the last record cut in half
        f.write(data[: len(data) - 5])
    s = Store(path)
    assert s.list() == ["a"] and s.stats()["damaged"] == []
    s.put("c", 3)
    s.close()
    s = Store(path)
    assert s.list() == ["a", "c"] and s.get("c") == 3
    s.close()
    _rm(path)


def test_queue():
    path = _folder()
    q = Queue(path, max_entries=3)
    for i in range(5):
        q.append(b"m%d" % i)
    assert q.stats()["dropped"] == 2
    got = q.peek(10)
    assert [v for _, v in got] == [b"m2", b"m3", b"m4"]
    assert q.ack(got[0][0]) == 1
    q.close()
    q = Queue(path, max_entries=3)
    assert [v for _, v in q.peek(10)] == [b"m3", b"m4"]
    q.close()
    _rm(path)
    r = Queue(None, max_entries=1, policy=REFUSE)
    r.append(b"x")
    raises(QueueFull, r.append, b"y")
    assert r.stats()["refused"] == 1


def test_queue_as_client_persistence():
    path = _folder()
    q = Queue(path)
    k1 = q.put("t/a", b"one", 1, False, None)
    q.put("t/b", b"two", 2, True, {"correlation_data": b"\x00\x01", "user_property": [("a", "b")]})
    q.done(k1)
    q.close()
    q = Queue(path)
    p = q.pending()
    assert len(p) == 1, p
    assert p[0][1] == (
        "t/b",
        b"two",
        2,
        True,
        {"correlation_data": b"\x00\x01", "user_property": [("a", "b")]},
        None,
        False,
    )
    q.close()
    _rm(path)


def test_passes_let_their_code_go_on_micropython():
    # Recovery at open, compaction and queries load _bulk for the pass; a
    # board must not keep it in RAM afterwards. CPython keeps it loaded.
    import sys

    path = _folder()
    s = Store(path)
    s.put("a", {"v": 1})
    s.compact()
    assert s.query({"v": 1}) == [{"v": 1}]
    q = Queue(path + "-q")
    q.append(b"x")
    q.compact()
    micropython = sys.implementation.name == "micropython"
    assert ("fieldline.store._bulk" in sys.modules) is not micropython
    assert s.get("a") == {"v": 1} and q.peek() == [(1, b"x")]
    s.close()
    q.close()
    _rm(path)
    _rm(path + "-q")
