"""fieldline.store: a full medium whose oldest segments hold records that stay.

A Store that wrote a few settings first and then readings that replace each
other could not make room once the medium filled: only whole segments that
hold nothing live could go, and the oldest held the settings. Now their live
records move to the end of the log first (the room for that is the file
``reserve``). Real small file systems (``small_fs``, a 64 KiB tmpfs), real
processes killed with SIGKILL, on CPython and the MicroPython Unix port.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from storeproc import churn_writer, room_states
from storeproc.child import REPO, Child
from test_store_crash import apply_kv, contents, diff

from fieldline.store import Store

STOREPROC = Path(__file__).parent / "storeproc"


def open_churned(folder: Path) -> Store:
    return Store(str(folder), segment_size=churn_writer.SEGMENT_SIZE, fsync=False)


def replay(lines: list[str], state: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The state after the confirmed operations in ``lines`` (``B op``, ``C``),
    and the operation in flight at the end (or None)."""
    pending = None
    for line in lines:
        tag, _, rest = line.partition(" ")
        if tag == "B":
            pending = json.loads(rest)
        elif tag == "C":
            assert pending is not None
            state = apply_kv(state, pending)
            pending = None
        else:
            assert line in ("ready", "done") or tag == "stats", line
    return state, pending


def test_a_full_store_whose_oldest_records_stay_keeps_working(small_fs: Path) -> None:
    # Settings first, then readings replaced and deleted, 8 times the medium's
    # size in all: every write succeeds, and a reopen holds exactly what was
    # written. The live data (about 25 KiB) is too much for a compaction on
    # 64 KiB, so the room can only come from moving the settings.
    folder = small_fs / "kv"
    s = Store(folder, segment_size=3600)
    want: dict[str, Any] = {}
    for i in range(20):
        want[f"cfg{i}"] = {"cfg": i, "pad": "c" * (700 + 10 * i)}
        s.put(f"cfg{i}", want[f"cfg{i}"])
    rng = random.Random(7)
    written = 0
    while written < 8 * 65536:
        key = f"t{rng.randrange(60)}"
        if rng.random() < 0.15:
            s.delete(key)
            want.pop(key, None)
            continue
        want[key] = {"n": written, "pad": "r" * rng.randrange(300)}
        s.put(key, want[key])
        written += len(json.dumps(want[key]))
    stats = s.stats()
    assert stats["compactions"] == 0 and stats["live_bytes"] > 20000, stats
    assert (folder / "reserve").stat().st_size == 3600 + 4096  # there again after the passes
    s.close()
    assert [n for n in os.listdir(folder) if n.endswith(".cut")]  # segments went
    with Store(folder, segment_size=3600) as s:
        assert contents(s) == want


def test_churn_on_a_small_medium_on_both_runtimes(small_fs: Path, interpreter: str) -> None:
    # The same, with batches, on the board's runtime too (where a failed write
    # cannot be cut off): the child raises if a write says the medium is full.
    folder = small_fs / "kv"
    out = subprocess.run(
        [interpreter, str(STOREPROC / "churn_writer.py"), str(REPO), str(folder), "3", "0", "2500"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.endswith("done\n"), out.stderr[-2000:]
    lines = out.stdout.splitlines()
    want, pending = replay(lines, {})
    assert pending is None
    stats = json.loads(lines[-2][len("stats ") :])
    assert stats["compactions"] == 0 and stats["live_bytes"] > 20000, stats
    assert [n for n in os.listdir(folder) if n.endswith(".cut")]
    with open_churned(folder) as s:
        got = contents(s)
    assert got == want, diff(got, want)


def test_kill_loop_while_a_full_store_moves_records(small_fs: Path, interpreter: str) -> None:
    # 12 times: the churn child is SIGKILLed after a random number of confirmed
    # operations, often in the middle of moving records and dropping segments.
    # The store reopened here holds exactly the confirmed writes, or those and
    # the one in flight; of a deletion in flight, the keys whose records went
    # with a dropped segment may be gone (docs/store.md), no others. A deleted
    # key never comes back.
    folder = small_fs / "kv"
    rng = random.Random(0xF11 if interpreter == sys.executable else 0xF12)
    state: dict[str, Any] = {}
    cut_names = set()
    for round_ in range(12):
        with Child(
            "churn_writer.py", str(REPO), str(folder), str(rng.randrange(1 << 30)), str(round_),
            "0", exe=interpreter,
        ) as c:  # fmt: skip
            lines = []
            target = rng.randint(1, 500)
            confirmed = 0
            while confirmed < target:
                lines.append(c.line())
                confirmed += lines[-1] == "C"
            lines += c.kill()
        state, pending = replay(lines, state)
        with open_churned(folder) as s:
            got = contents(s)
        if got != state:
            assert pending is not None, f"round {round_}:\n{diff(got, state)}"
            if pending["op"] in ("del", "delb"):
                gone = {pending.get("k")} | set(pending.get("keys", []))
                assert set(got) <= set(state) and set(state) - set(got) <= gone
                assert all(got[k] == state[k] for k in got), diff(got, state)
            else:
                after = apply_kv(state, pending)
                assert got == after, f"round {round_}, in flight {pending}:\n{diff(got, after)}"
        state = got
        cut_names |= {n for n in os.listdir(folder) if n.endswith(".cut")}
    assert len(cut_names) > 3, cut_names  # segments went, in many passes


def test_every_state_a_crash_leaves_while_records_move_opens_the_same(
    small_fs: Path, tmp_path: Path
) -> None:
    # room_states.py copies the folder before every file operation of the put
    # that made room: the reserve removed, the moved records written to a new
    # segment, the .cut file made, segments deleted, the reserve written back,
    # the put. Between two copies, each segment that grew is cut at every
    # 61st byte of what it gained (and its last): the moved records go in
    # writes of about 2 KiB, each whole or not at all. Every state opens undamaged with exactly
    # what was there before the put, or (only once it is whole) the put too.
    states = tmp_path / "states"
    out = subprocess.run(
        [sys.executable, str(STOREPROC / "room_states.py"), str(small_fs / "kv"), str(states)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0 and out.stdout.endswith("done\n"), out.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines()[:-1])
    before, after = json.loads(lines["before"]), json.loads(lines["after"])
    snaps = sorted(states.iterdir())
    assert len(snaps) > 10
    kinds = set()
    cases: list[tuple[Path, str | None, int]] = []  # (state, segment cut short, its length)
    cases.append((snaps[0], None, 0))
    for prev, snap in zip(snaps, snaps[1:], strict=False):
        cases.append((snap, None, 0))
        for path in sorted(snap.glob("*.seg")):
            was = (prev / path.name).stat().st_size if (prev / path.name).exists() else 0
            size = path.stat().st_size
            cases += [(snap, path.name, n) for n in {*range(was, size, 61), size - 1} if n >= was]
    for i, (snap, seg, n) in enumerate(cases):
        case = tmp_path / f"case{i}"
        shutil.copytree(snap, case)
        if seg is not None:
            os.truncate(case / seg, n)
        with Store(case, segment_size=room_states.SEGMENT_SIZE, fsync=False) as s:
            assert s.stats()["damaged"] == [], (snap.name, seg, n)
            got = contents(s)
        whole = snap == snaps[-1] and seg is None
        assert got == (after if whole else before) or got == before, (snap.name, seg, n)
        kinds.add("after" if got == after else "before")
        if i % 40 == 0:  # and it takes writes
            with Store(case, segment_size=room_states.SEGMENT_SIZE, fsync=False) as s:
                s.put("new", 1)
            with Store(case, segment_size=room_states.SEGMENT_SIZE, fsync=False) as s:
                assert contents(s) == {**got, "new": 1}
        shutil.rmtree(case)
    assert kinds == {"before", "after"}
    names = {n for snap in snaps for n in os.listdir(snap)}
    assert any(n.endswith(".cut") for n in names) and "reserve" in names


def test_the_reserve(tmp_path: Path, small_fs: Path) -> None:
    with Store(tmp_path / "a", segment_size=1000) as s:
        s.put("k", 1)
    assert (tmp_path / "a" / "reserve").stat().st_size == 1000 + 4096
    with Store(tmp_path / "b", reserve=0) as s:
        s.put("k", 1)
    assert not (tmp_path / "b" / "reserve").exists()
    with Store(tmp_path / "c", reserve=100):
        pass
    assert (tmp_path / "c" / "reserve").stat().st_size == 100
    with Store(small_fs / "d"):  # 64 KiB segments: at most 1/8 of the medium
        pass
    assert (small_fs / "d" / "reserve").stat().st_size == 65536 // 8
    for bad in (-1, 1.5, "1"):
        with pytest.raises(ValueError):
            Store(tmp_path / "e", reserve=bad)
        Store(tmp_path / "e").close()  # the failed open let go of the folder


def test_a_compaction_writes_segments_of_segment_size_that_can_move(small_fs: Path) -> None:
    # A compaction wrote every live record into one segment: once the medium
    # filled, that segment (settings and all) was too big to move and pinned
    # the medium again. Now it writes segments of about segment_size: the
    # store compacts while there is room, and moves records once there is not.
    folder = small_fs / "kv"
    s = Store(folder, segment_size=3600)
    want: dict[str, Any] = {}
    for i in range(20):
        want[f"cfg{i}"] = {"pad": "c" * 700}
        s.put(f"cfg{i}", want[f"cfg{i}"])
    rng = random.Random(1)
    for keys in (10, 30, 60, 5, 70):  # live records grow past what a compaction fits
        for _ in range(1500):
            key = f"t{rng.randrange(keys)}"
            want[key] = {"pad": "r" * rng.randrange(300)}
            s.put(key, want[key])
    assert s.stats()["compactions"] >= 1 and s.stats()["live_bytes"] > 25000, s.stats()
    s.close()
    with Store(folder, segment_size=3600) as s:
        assert contents(s) == want


def test_a_queue_compacted_into_several_segments_numbers_on(tmp_path: Path) -> None:
    # The next sequence number is in the last segment's first record: the
    # newest entries were acknowledged, their numbers are not used again.
    from fieldline.store import Queue

    with Queue(tmp_path / "q", segment_size=256) as q:
        seqs = [q.append(b"x" * 60) for _ in range(30)]
        q.ack(seqs[10:])
        q.compact()
        assert len([n for n in os.listdir(tmp_path / "q") if n.endswith(".seg")]) > 1
    with Queue(tmp_path / "q", segment_size=256) as q:
        assert [s for s, _ in q.peek(30)] == seqs[:10] and q.stats()["damaged"] == []
        assert q.append(b"y") == seqs[-1] + 1


def test_a_compaction_that_cannot_switch_backs_out(tmp_path: Path) -> None:
    # The new segments are renamed into place oldest first; if a rename fails
    # before the last one (the switch), the ones renamed are removed again:
    # left there, they would replay after the old segments at the next open
    # and put back values the writes after the failure had replaced.
    from fieldline.store import StoreFullError

    folder = tmp_path / "kv"
    s = Store(folder, segment_size=512, fsync=False)
    for i in range(60):
        s.put(f"k{i % 20}", {"i": i, "pad": "x" * 50})
    last = int(sorted(p.name for p in folder.glob("*.seg"))[-1][:8])
    blocker = folder / f"{last + 3:08d}.seg"  # the third new segment's name: a folder
    blocker.mkdir()
    before = sorted(p.name for p in folder.glob("*.seg"))
    with pytest.raises(StoreFullError, match="not switched"):
        s.compact()
    assert not list(folder.glob("*.tmp"))
    assert sorted(p.name for p in folder.glob("*.seg")) == before  # the blocker is one
    for i in range(60, 80):
        s.put(f"k{i % 20}", {"i": i})
    s.close()
    blocker.rmdir()
    with Store(folder, segment_size=512) as s:
        assert contents(s) == {f"k{i}": {"i": 60 + i} for i in range(20)}


def test_a_large_compaction_writes_at_most_16_segments(tmp_path: Path) -> None:
    # More than 32 segments call for a compaction: one that wrote as many
    # would run again at the next write, and the next.
    s = Store(tmp_path / "kv", segment_size=256, compact_ratio=0.9, fsync=False)
    for i in range(300):  # 36 KB of live records: 140 segments of 256 bytes
        s.put(f"k{i}", "x" * 100)
    assert 3 < s.stats()["compactions"] < 30, s.stats()
    s.compact()
    assert 8 < s.stats()["segments"] <= 16, s.stats()
    s.close()
    with Store(tmp_path / "kv", segment_size=256) as s:
        assert len(s) == 300 and s.stats()["damaged"] == []


def test_records_move_without_the_reserve_when_room_was_freed_first(small_fs: Path) -> None:
    # The oldest segment holds nothing live and goes first: the records of the
    # next one then move into the room it left, and the reserve is neither
    # given back nor written again (flash wears with every write).
    folder = small_fs / "kv"
    s = Store(folder, segment_size=3600, compact_ratio=0.99)  # no compaction
    for i in range(15):  # the first segment, deleted below
        s.put(f"a{i}", "a" * 230)
    for i in range(3):  # the second: settings that stay
        s.put(f"cfg{i}", "c" * 1000)
    s.delete_batch([f"a{i}" for i in range(15)])
    reserve = (folder / "reserve").stat().st_ino
    i = 0
    while not [n for n in os.listdir(folder) if n.endswith(".cut")]:
        assert i < 1000
        i += 1
        s.put(f"t{i % 30}", "t" * 230)
    assert (folder / "reserve").stat().st_ino == reserve
    assert (folder / "reserve").stat().st_size == 3600 + 4096
    s.close()
    with Store(folder, segment_size=3600) as s:
        assert s.get("cfg2") == "c" * 1000 and s.get("a0") is None
        assert s.stats()["damaged"] == []
