"""A crash at every file-system step of a full medium's paths, one by one.

The kill loops in test_store_full.py stop a child at random points; here a
run on a full 64 KiB tmpfs copies its folder before every remove
and after every write (the last before a rename too), and with a batch's
write cut in the middle: what a crash at that step leaves (a killed process
loses nothing already written; torn records are test_store_crash's).
Each copy is opened and checked against what had been confirmed then: no
key put and not deleted lost or changed, no entry appended and not acked
lost, and back only what was held in RAM or in flight.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fieldline.store import REFUSE, Queue, Store, StoreFullError, _bulk, _log

SEG = 2048
_truncate = os.truncate  # the no-shrink runs take it from the store


class Points:
    """Copies ``folder`` to ``out/<n>`` at each step, with ``note()``'s
    view of what was confirmed then."""

    def __init__(self, folder: Path, out: Path, note: Callable[[], Any]) -> None:
        self.folder, self.out, self.note = folder, out, note
        self.copies: list[tuple[Path, Any]] = []
        self.on = True

    def __call__(self, torn: tuple[str, int] | None = None) -> None:
        """``torn``: (file, size): that file of the copy cut to that size, a
        write the crash cut short."""
        if self.on and self.folder.exists():
            dest = self.out / str(len(self.copies))
            dest.mkdir(parents=True)
            for name in os.listdir(self.folder):
                if name != "lock":
                    shutil.copyfile(self.folder / name, dest / name)
            if torn is not None:
                _truncate(dest / os.path.basename(torn[0]), torn[1])
            self.copies.append((dest, self.note()))


class _NoShrink:
    """A segment file that cannot shrink, as on MicroPython; otherwise the real one."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def truncate(self, *args: Any) -> None:
        raise OSError(errno.EOPNOTSUPP, "cannot shrink")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


@pytest.fixture(params=["cpython", "no-shrink"])
def points(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Points]]:
    """The copier; and, in its no-shrink run, files that cannot be cut off
    (MicroPython's): a failed write stays, and the log moves on past it."""
    if request.param == "no-shrink":
        open_ = _log.Log._open

        def no_shrink(log: _log.Log, num: int, mode: str = "r+b") -> Any:
            f = open_(log, num, mode)
            return _NoShrink(f) if mode == "r+b" else f

        monkeypatch.setattr(_log.Log, "_open", no_shrink)
        monkeypatch.delattr(os, "truncate")
    made: list[Points] = []

    def make(folder: Path, out: Path, note: Callable[[], Any]) -> Points:
        p = Points(folder, out, note)
        made.append(p)
        remove, write = os.remove, _log._write

        def before(f: Callable[..., Any]) -> Callable[..., Any]:
            def wrapped(*args: Any) -> Any:
                p()
                return f(*args)

            return wrapped

        def written(fh: Any, data: bytes) -> None:
            write(fh, data)
            fh.flush()
            p()
            if len(data) > 2 and data[2] & _log.MORE:  # a batch, torn in the middle
                p((fh.name, fh.tell() - len(data) // 2))

        monkeypatch.setattr(os, "remove", before(remove))
        monkeypatch.setattr(_log, "_write", written)
        monkeypatch.setattr(_bulk, "_write", written)
        return p

    yield make
    for p in made:
        p.on = False


class StoreRun:
    """A Store on ``folder`` and what was confirmed of it: ``put`` and
    ``delete`` keep the books, ``check`` opens each copy the run left."""

    def __init__(self, folder: Path, out: Path, points: Callable[..., Points]) -> None:
        self.state: dict[str, Any] = {}  # confirmed put and not deleted
        self.gone: dict[str, Any] = {}  # confirmed deleted: its last value
        self.flight: dict[str, Any] = {}  # the keys of the operation in flight: new value or None
        self.s = Store(folder, segment_size=SEG, fsync=False)
        self.p = points(folder, out, self.note)

    def note(self) -> Any:
        held = {k.decode() for k, _ in self.s._held}
        return dict(self.state), dict(self.gone), dict(self.flight), held

    def put(self, k: str, v: Any) -> bool:
        self.flight.clear()
        self.flight[k] = v
        try:
            self.s.put(k, v)
        except StoreFullError:
            self.flight.clear()
            return False
        self.state[k] = v
        self.gone.pop(k, None)
        self.flight.clear()
        return True

    def delete(self, keys: list[str]) -> None:
        self.flight.clear()
        self.flight.update(dict.fromkeys(keys))
        if len(keys) == 1:
            assert self.s.delete(keys[0]) is True
        else:
            assert self.s.delete_batch(keys) == len(keys)
        for k in keys:
            self.gone[k] = self.state.pop(k)
        self.flight.clear()

    def fill(self) -> list[str]:
        n = 0
        self.p.on = False  # plain puts: test_store_crash's
        while self.put(f"k{n}", {"n": n, "pad": "x" * (20 + n % 7 * 40)}):
            n += 1
        self.p.on = True
        return sorted(self.state, key=lambda k: int(k[1:]))

    def check(self) -> None:
        self.s.close()
        self.p.on = False
        assert len(self.p.copies) > 20
        for dest, (want, was, inflight, held) in self.p.copies:
            with Store(dest, segment_size=SEG, fsync=False) as c:
                got = {k: c.get(k) for k in c.list()}
                assert c.stats()["damaged"] == [], dest
            for k, v in want.items():
                if k in inflight:
                    assert got.get(k) in (v, inflight[k]), (dest, k)
                else:
                    assert got.get(k) == v, (dest, k, "lost or changed")
            for k in set(got) - set(want):
                if k in inflight and got[k] == inflight[k]:
                    continue
                assert k in held | set(inflight) and got[k] == was[k], (dest, k, "came back")


def test_a_crash_at_any_step_of_a_full_store_loses_nothing(
    small_fs: Path, tmp_path: Path, points: Callable[..., Points]
) -> None:
    filler = small_fs / "filler"  # a page, to give back later
    filler.write_bytes(b"\0" * 4096)
    r = StoreRun(small_fs / "kv", tmp_path / "copies", points)
    s, state, put, delete = r.s, r.state, r.put, r.delete
    keys = r.fill()
    delete([keys[-1]])  # the newest: held
    assert s.stats()["unwritten"] == 1
    delete(keys[-2:-1])  # held too
    for k in keys[:6]:
        delete([k])
    delete(keys[6:9])
    for k in keys[9:20]:  # till a segment goes and the held deletions are written
        delete([k])
        if not s._held:
            break
    j = 0
    while not s._held:  # the slack of the last page too: puts as large as the deletion
        before = len(state)
        put("z" * (len(keys[-3]) - 3) + f"{j:02d}", 0)
        j += 1
        if len(state) == before:
            delete([keys[-3]])
    assert s._held
    filler.unlink()  # room from outside the store
    put(keys[-3], "again")  # its held deletion goes first, in the same write
    assert state[keys[-3]] == "again"
    put(keys[3], "back")  # a key deleted and written, put again
    assert state[keys[3]] == "back"
    for i, k in enumerate(keys[20:32]):
        delete([k])
        if i % 5 == 0:
            put(f"new{i}", i)
    try:
        s.compact()
    except StoreFullError:
        pass
    delete([k for k in keys[32:36] if k in state])
    put("last", 1)
    r.check()


def test_a_crash_at_any_step_of_a_compaction_with_deletions_held(
    small_fs: Path, tmp_path: Path, points: Callable[..., Points]
) -> None:
    # Held deletions are not written by a compaction: their records are not
    # copied. A crash before its switch brings them back with their values;
    # after it, they stay deleted, and every other key keeps its value.
    filler = small_fs / "filler"  # room for a compaction, to give back later
    filler.write_bytes(b"\0" * 36 * 1024)
    r = StoreRun(small_fs / "kv", tmp_path / "copies", points)
    keys = r.fill()
    r.delete([keys[-1]])
    r.delete([keys[0]])
    r.delete(keys[5:8])
    assert len(r.s._held) == 5
    filler.unlink()
    r.s.compact()
    assert r.s.stats()["unwritten"] == 0 and r.s.stats()["segments"] == 1
    assert r.put(keys[0], "new")
    r.check()


def test_a_crash_at_any_step_of_a_full_queue_loses_nothing(
    small_fs: Path, tmp_path: Path, points: Callable[..., Points]
) -> None:
    folder = small_fs / "q"
    opts: dict[str, Any] = {
        "segment_size": SEG,
        "max_entries": 100000,
        "policy": REFUSE,
        "fsync": False,
    }
    filler = small_fs / "filler"  # a page, to give back later
    filler.write_bytes(b"\0" * 4096)
    q = Queue(folder, **opts)
    state: dict[int, bytes] = {}  # confirmed appended, not acked
    gone: dict[int, bytes] = {}
    flight: dict[int, bytes | None] = {}
    top = [0]  # the highest number confirmed handed out

    def note() -> Any:
        return dict(state), dict(gone), dict(flight), {s for s, _ in q._held}, top[0]

    p = points(folder, tmp_path / "copies", note)

    def append(v: bytes) -> bool:
        flight.clear()
        flight[top[0] + 1] = v  # the number it will get (none goes back)
        try:
            seq = q.append(v)
        except StoreFullError:
            flight.clear()
            return False
        assert seq > top[0]
        state[seq] = v
        top[0] = seq
        flight.clear()
        return True

    def ack(seqs: list[int]) -> None:
        flight.clear()
        flight.update(dict.fromkeys(seqs))
        assert q.ack(seqs) == len(seqs)
        for s in seqs:
            gone[s] = state.pop(s)
        flight.clear()

    i = 0
    p.on = False  # plain appends: test_store_crash's
    while append(b"%05d" % i + b"p" * (40 + i % 5 * 60)):
        i += 1
    p.on = True
    seqs = sorted(state)
    ack([seqs[-1]])  # held: out of order
    ack(seqs[:5])
    assert len(q._held) == 6
    filler.unlink()  # room from outside the queue
    assert append(b"with the held acks")  # written first, in the same write
    assert not q._held
    for s in seqs[5:25]:
        ack([s])
        if s % 4 == 0:
            append(b"more%d" % s)
    try:
        q.compact()
    except StoreFullError:
        pass
    while append(b"x" * 200):  # full again
        pass
    left = sorted(state, reverse=True)
    p.on = False  # held, each: nothing changes on the medium but .tmp files tried
    for s in left[:-3]:
        ack([s])
    p.on = True
    for s in left[-3:]:  # held till the oldest goes: then every segment goes
        ack([s])
    assert q.stats()["entries"] == 0 and q.stats()["segments"] <= 1
    append(b"last")
    q.close()
    p.on = False
    assert len(p.copies) > 50
    for dest, (want, was, inflight, held, top_) in p.copies:
        with Queue(dest, **opts) as c:
            got = dict((s, bytes(v)) for s, v in c.peek(len(c) + 1))
            nxt = c._next
            assert c.stats()["damaged"] == [], dest
        for s, v in want.items():
            assert got.get(s) == v or s in inflight, (dest, s, "lost")
        for s in set(got) - set(want):
            if s in inflight and got[s] == inflight[s]:
                continue
            assert s in held | set(inflight) and got[s] == was[s], (dest, s, "came back")
        assert nxt > top_, (dest, "a number handed out again")
