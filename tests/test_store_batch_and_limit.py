"""fieldline.store's API as the seed database has it: ``put_batch`` with any mapping and with a
TTL per item, a query's limit as ``$limit``, and a query cut short by its limit closing its
file at once (on the MicroPython Unix port too). Real files on disk.
"""

from __future__ import annotations

import os
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Any

import pytest
from storeproc.child import run_script

from fieldline.store import QueryError, Store

# -- put_batch with an OrderedDict -----------------------------------------------------------


@pytest.mark.parametrize("cls", [OrderedDict, defaultdict])
def test_put_batch_takes_any_dict_as_key_value_pairs(tmp_path: Path, cls: type) -> None:
    # On MicroPython a plain dict keeps no order, so an OrderedDict is how a
    # batch is written in a chosen order. put_batch took anything but a plain
    # dict for a list of values: it stored the *keys* as values under made-up
    # keys, and returned those.
    items = cls()
    items["b"] = {"n": 2}
    items["a"] = {"n": 1}
    with Store(str(tmp_path / "kv")) as s:
        assert s.put_batch(items) == ["b", "a"]
        assert s.list() == ["b", "a"]
        assert s.get("a") == {"n": 1} and s.get("b") == {"n": 2}


# -- a query with a limit closes its file at once, on MicroPython too ----------------------


def test_a_query_with_a_limit_leaves_no_file_open(tmp_path: Path, interpreter: str) -> None:
    # A query that stops at its limit leaves the scan of the log half-way. On
    # MicroPython a generator dropped half-way is never closed: the segment
    # file it reads from stayed open until a garbage collection, and a board
    # has few file handles.
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd")
    rows = [line.split() for line in run_script(interpreter, "mpy_query_files.py", tmp_path / "kv")]
    assert [(r[0], r[3]) for r in rows] == [
        ("limit1", "1"),
        ("limit0", "0"),
        ("limit3-later-segment", "3"),
        ("all", "20"),
    ]
    assert all(r[1] == r[2] for r in rows), rows  # as many files open after as before


# -- the seed database's API: per-item TTLs in put_batch, $limit in a query ----------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_put_batch_takes_a_ttl_per_item(tmp_path: Path) -> None:
    clock = Clock()
    with Store(tmp_path / "kv", clock=clock) as s:
        keys = s.put_batch([{"n": 1}, {"n": 2}, {"n": 3}], ttls=[60, None, 600])
        assert s.put_batch({"a": 1, "b": 2}, ttls=[30, 90]) == ["a", "b"]
        clock.now += 61
        assert s.get_batch([*keys, "a", "b"]) == [None, {"n": 2}, {"n": 3}, None, 2]
        clock.now += 600
        assert s.get_batch(keys) == [None, {"n": 2}, None]
    with Store(tmp_path / "kv", clock=clock) as s:  # expiry times were written
        assert s.list() == [keys[1]]


@pytest.mark.parametrize(
    "args",
    [
        {"ttls": [60]},  # one short
        {"ttls": [60, 60, 60]},  # one too many
        {"ttls": [60, 60], "ttl": 60},  # both
        {"ttls": [60, -1]},
    ],
)
def test_put_batch_refuses_ttls_that_do_not_fit_and_writes_nothing(args: dict[str, Any]) -> None:
    s = Store()
    with pytest.raises(ValueError):
        s.put_batch({"a": 1, "b": 2}, **args)
    assert len(s) == 0 and s.stats()["file_bytes"] == 0


def test_a_query_takes_its_limit_as_dollar_limit() -> None:
    s = Store()
    s.put_batch([{"status": "active", "n": i} for i in range(5)] + [{"status": "idle"}])
    q: dict[str, Any] = {"status": "active", "$limit": 2}
    assert s.query(q) == [{"status": "active", "n": 0}, {"status": "active", "n": 1}]
    assert q == {"status": "active", "$limit": 2}  # the caller's dict is left alone
    assert s.query({"$limit": 0}) == []
    assert len(s.query({"status": "active", "$limit": 9}, sort="-n")) == 5
    with pytest.raises(QueryError, match="limit"):
        s.query({"$limit": 2}, limit=2)  # twice is once too many
    for bad in (-1, "2", 2.0, None, True):
        with pytest.raises(QueryError, match="limit"):
            s.query({"$limit": bad})
    with pytest.raises(QueryError, match="unknown operator"):
        s.query({"$or": [{"$limit": 1}]})  # only at the top
