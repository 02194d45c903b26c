"""fieldline.store.Store on CPython: the whole API, on real files and in RAM.

Crash safety (killed writers, torn and corrupt segments, full disks) is in
test_store_crash.py; the same API on MicroPython in tests/mpy/test_store_mpy.py.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldline.store import (
    EncodeError,
    QueryError,
    Store,
    StoreError,
)


class Clock:
    """A clock the test moves by hand, so TTLs are checked without waiting."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["file", "memory"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    return str(tmp_path / "db") if request.param == "file" else None


def test_put_get_with_given_and_made_up_keys(where: str | None) -> None:
    s = Store(where)
    assert s.put("user1", {"name": "Ann", "age": 30}) == "user1"
    key = s.put({"sensor": "temp", "value": 25.5})
    assert isinstance(key, str) and key != "user1"
    assert s.get("user1") == {"name": "Ann", "age": 30}
    assert s.get(key) == {"sensor": "temp", "value": 25.5}
    assert s.get("nothing") is None
    assert s.get("nothing", 7) == 7
    assert "user1" in s and "nothing" not in s
    s.put("user1", [1, "two", None, True, 2.5])  # replaced, any JSON value
    assert s.get("user1") == [1, "two", None, True, 2.5]
    assert len(s) == 2
    assert s.list() == [key, "user1"]  # oldest write first


def test_made_up_keys_are_unique_even_within_one_second(where: str | None) -> None:
    clock = Clock()
    s = Store(where, clock=clock)
    keys = [s.put(i) for i in range(300)] + s.put_batch(list(range(300)))
    assert len(set(keys)) == 600
    assert [s.get(k) for k in keys] == list(range(300)) * 2


def test_made_up_keys_do_not_repeat_when_the_counter_wraps(tmp_path: Path) -> None:
    # 65537 keys within one second: the 16-bit counter wraps inside one batch.
    # And with the clock stopped, a reopened store still finds a free key.
    clock = Clock()
    s = Store(tmp_path, clock=clock, fsync=False)
    keys = s.put_batch(list(range(65537)))
    assert len(set(keys)) == len(s) == 65537
    assert s.get(keys[0]) == 0 and s.get(keys[-1]) == 65536
    s.close()
    with Store(tmp_path, clock=clock, fsync=False) as s:
        assert s.put("new") not in keys and len(s) == 65538


def test_values_json_cannot_carry_are_refused_and_nothing_is_written(where: str | None) -> None:
    s = Store(where)
    for bad in (b"bytes", {1: "int key"}, {"a": {1, 2}}, float("nan"), float("inf"), object()):
        with pytest.raises(EncodeError, match="not JSON-serialisable"):
            s.put("k", bad)
        with pytest.raises(TypeError):  # EncodeError is a TypeError on CPython
            s.put_batch({"ok": 1, "k": bad})
    assert len(s) == 0 and s.stats()["file_bytes"] == 0


def test_bad_keys_and_ttls_are_refused(where: str | None) -> None:
    s = Store(where)
    for key in ("", 5, None, b"k"):
        with pytest.raises(StoreError, match="key"):
            s.put(key, 1)
    with pytest.raises(StoreError, match="255"):
        s.put("k" * 256, 1)
    for ttl in (0, -1):
        with pytest.raises(ValueError, match="ttl"):
            s.put("k", 1, ttl=ttl)
    assert len(s) == 0


def test_ttl_expiry_get_list_query_and_cleanup(where: str | None) -> None:
    clock = Clock()
    s = Store(where, clock=clock)
    s.put("short", {"v": 1}, ttl=10)
    s.put("long", {"v": 2}, ttl=100)
    s.put("forever", {"v": 3})
    clock.now += 9.5
    assert s.get("short") == {"v": 1}
    clock.now += 0.6
    assert s.get("short") is None
    assert s.list() == ["long", "forever"]
    assert s.query({"v": {"$gte": 1}}) == [{"v": 2}, {"v": 3}]
    clock.now += 100
    assert s.cleanup() == 1
    assert s.list() == ["forever"]
    assert s.stats()["expired"] == 2


def test_expired_records_stay_gone_after_reopen(tmp_path: Path) -> None:
    clock = Clock()
    path = str(tmp_path / "db")
    with Store(path, clock=clock) as s:
        s.put("a", 1, ttl=5)
        s.put("b", 2)
    clock.now += 6
    with Store(path, clock=clock) as s:
        assert s.list() == ["b"] and len(s) == 1


def test_an_expired_key_is_not_there_to_delete(where: str | None) -> None:
    # delete and delete_batch see expiry as get does: no True, no count, no
    # DELETE written; the key is forgotten, so len() stops counting it.
    clock = Clock()
    s = Store(where, clock=clock)
    s.put_batch({"a": 1, "b": 2, "c": 3}, ttl=5)
    s.put("d", 4)
    clock.now += 10
    assert len(s) == 4  # not known to be expired until read
    size = s.stats()["file_bytes"]
    assert s.delete("a") is False
    assert s.delete_batch(["b", "c", "d"]) == 1
    assert s.stats()["file_bytes"] == size + 16 + 1  # the DELETE of d alone
    assert len(s) == 0 and s.stats()["expired"] == 3


def test_a_key_deleted_twice_in_one_batch_counts_once(where: str | None) -> None:
    s = Store(where)
    s.put_batch({"k": 1, "j": 2})
    size = s.stats()["file_bytes"]
    assert s.delete_batch(["k", "k", "j", "nope", "j"]) == 2
    assert s.stats()["file_bytes"] == size + 2 * (16 + 1)  # one DELETE each
    assert len(s) == 0 and s.list() == []


def test_delete_and_purge(where: str | None) -> None:
    s = Store(where)
    s.put("a", 1)
    s.put("b", 2)
    assert s.delete("a") is True
    assert s.delete("a") is False
    assert s.get("a") is None and s.list() == ["b"]
    s.put("c", 3)
    assert s.delete(purge=True) == 2
    assert s.list() == [] and len(s) == 0
    s.put("d", 4)
    assert s.list() == ["d"]


def test_batches(where: str | None) -> None:
    s = Store(where)
    keys = s.put_batch({"a": 1, "b": {"x": [1]}, "c": "three"})
    assert keys == ["a", "b", "c"]
    made = s.put_batch([10, 20])
    assert s.get_batch(["a", "b", "nope", *made], default=0) == [1, {"x": [1]}, 0, 10, 20]
    assert s.delete_batch(["a", "nope", "c"]) == 2
    assert s.list() == ["b", *made]
    assert s.put_batch([]) == [] and s.delete_batch([]) == 0


def test_query_through_the_store(where: str | None) -> None:
    s = Store(where)
    for i in range(20):
        s.put(f"r{i:02d}", {"sensor": "temp" if i % 2 else "hum", "value": i, "m": {"room": i % 3}})
    got = s.query({"sensor": "temp", "value": {"$gt": 10}})
    assert [d["value"] for d in got] == [11, 13, 15, 17, 19]
    assert s.query({"m.room": 0}, limit=2, keys=True) == [
        ("r00", {"sensor": "hum", "value": 0, "m": {"room": 0}}),
        ("r03", {"sensor": "temp", "value": 3, "m": {"room": 0}}),
    ]
    assert [d["value"] for d in s.query({"sensor": "hum"}, sort="-value", limit=3)] == [18, 16, 14]
    assert len(s.query()) == 20
    with pytest.raises(QueryError):
        s.query({"value": {"$bogus": 1}})
    with pytest.raises(ValueError):  # QueryError is a ValueError on CPython
        Store(None).query({"$or": "not a list"})


def test_data_survives_reopen_and_compaction(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    s = Store(path, segment_size=1024)
    for i in range(3000):
        s.put(f"k{i % 150}", {"i": i, "pad": "x" * (i % 40)})
    st1 = s.stats()
    assert st1["compactions"] > 0, st1
    assert st1["garbage_ratio"] < 0.6
    expected = {f"k{k}": s.get(f"k{k}") for k in range(150)}
    s.close()
    with Store(path, segment_size=1024) as s:
        assert {k: s.get(k) for k in expected} == expected
        assert len(s) == 150
        s.compact()
        assert s.stats()["garbage_ratio"] == 0.0
        assert s.stats()["segments"] == 1
        assert {k: s.get(k) for k in expected} == expected
    files = sorted(p.name for p in Path(path).glob("*.seg"))
    assert len(files) == 1 and files[0].endswith(".seg")


def test_a_put_appends_and_never_rewrites_the_file(tmp_path: Path) -> None:
    path = tmp_path / "db"
    s = Store(str(path), segment_size=1 << 20)
    s.put("a", {"v": 1})
    seg = next(path.glob("*.seg"))
    first = seg.read_bytes()
    s.put("a", {"v": 2})
    s.put("b", {"v": 3})
    assert seg.read_bytes().startswith(first)
    s.close()


def test_stats(where: str | None) -> None:
    s = Store(where)
    s.put("a", {"v": 1})
    s.put("a", {"v": 2})
    st1 = s.stats()
    assert st1["records"] == 1
    assert st1["in_memory"] is (where is None)
    assert 0 < st1["live_bytes"] < st1["file_bytes"]
    assert st1["garbage_ratio"] == pytest.approx(0.5)
    assert st1["damaged"] == []


def test_tuning_is_checked() -> None:
    with pytest.raises(ValueError, match="segment_size"):
        Store(None, segment_size=10)
    with pytest.raises(ValueError, match="compact_ratio"):
        Store(None, compact_ratio=1.5)


Op = tuple[str, int, int]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["put", "put", "put", "delete", "batch", "reopen", "compact"]),
            st.integers(0, 40),
            st.integers(0, 300),
        ),
        max_size=150,
    )
)
def test_random_operations_match_a_dict(
    tmp_path_factory: pytest.TempPathFactory, ops: list[Op]
) -> None:
    """Whatever the sequence of writes, reopens and compactions, the store
    holds what a plain dict would."""
    path = str(tmp_path_factory.mktemp("db") / "s")
    model: dict[str, object] = {}
    s = Store(path, segment_size=512, compact_ratio=0.3)
    for op, k, n in ops:
        key = f"key-{k}"
        if op == "put":
            value = {"n": n, "pad": "y" * (n % 50)}
            s.put(key, value)
            model[key] = value
        elif op == "delete":
            assert s.delete(key) is (key in model)
            model.pop(key, None)
        elif op == "batch":
            batch = {f"key-{(k + j) % 41}": [n, j] for j in range(n % 5)}
            s.put_batch(batch)
            model.update(batch)
        elif op == "reopen":
            s.close()
            s = Store(path, segment_size=512, compact_ratio=0.3)
        else:
            s.compact()
    assert sorted(s.list()) == sorted(model)
    assert {k: s.get(k) for k in model} == model
    assert len(s) == len(model)
    s.close()


def test_many_keys_with_colliding_hashes_are_told_apart(where: str | None) -> None:
    # The index keys by CRC32; find two keys with the same CRC32 and check
    # both live side by side. (Found by brute force over a small space.)
    from binascii import crc32

    seen: dict[int, str] = {}
    pair = None
    rnd = random.Random(1)
    while pair is None:
        k = f"{rnd.getrandbits(64):016x}"
        h = crc32(k.encode())
        if h in seen and seen[h] != k:
            pair = (seen[h], k)
        seen[h] = k
        if len(seen) > 300_000:  # pragma: no cover - birthday bound makes this vanishingly rare
            pytest.skip("no CRC32 collision found")
    s = Store(where)
    a, b = pair
    s.put(a, "first")
    for i in range(100):  # enough to merge both into the sorted arrays
        s.put(f"filler{i}", i)
    s.put(b, "second")
    for i in range(100):
        s.put(f"more{i}", i)
    assert s.get(a) == "first" and s.get(b) == "second"
    assert s.delete(a) and s.get(b) == "second" and s.get(a) is None


def test_file_holds_json(tmp_path: Path) -> None:
    # The records are readable by other tools: key and JSON value in the clear.
    path = tmp_path / "db"
    with Store(str(path)) as s:
        s.put("k", {"v": [1, 2]})
    data = next(path.glob("*.seg")).read_bytes()
    assert b"k" + json.dumps({"v": [1, 2]}).encode() in data


def test_a_folder_is_open_in_one_place_at_a_time(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    s = Store(path)
    with pytest.raises(StoreError, match="open in another process"):
        Store(path)
    other = subprocess.run(
        [sys.executable, "-c", f"from fieldline.store import Store; Store({path!r})"],
        capture_output=True,
        text=True,
    )
    assert other.returncode == 1 and "open in another process" in other.stderr
    s.close()
    Store(path).close()  # free again
