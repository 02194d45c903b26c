"""fieldline.store on a full medium: the rare paths of held deletions.

What the tests in test_store_full.py do not reach: a medium so full that not
even the empty ``.cut`` file that deletes segments whole can be made (a
tmpfs with few inodes here, a full directory block on a board's flash), a
store left with no segment at all, and what a held deletion costs.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fieldline.store import Store, StoreFullError


@pytest.fixture
def few_inodes(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs with room for 64 files (root to mount: skipped without)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,nr_inodes=64", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill_store(s: Store) -> list[str]:
    keys: list[str] = []
    with pytest.raises(StoreFullError) as e:
        while True:
            s.put(f"k{len(keys)}", {"v": "x" * 200})
            keys.append(f"k{len(keys)}")
    assert e.value.errno == errno.ENOSPC
    return keys


def use_up_inodes(where: Path) -> list[Path]:
    """Empty files in ``where`` until no file can be made; the files."""
    where.mkdir()
    made: list[Path] = []
    while True:
        p = where / f"f{len(made)}"
        try:
            p.touch()
        except OSError as e:
            assert e.errno == errno.ENOSPC
            return made
        made.append(p)


def test_a_deletion_is_held_when_not_even_a_cut_file_can_be_made(few_inodes: Path) -> None:
    # Deleting the last live key of the oldest segment deletes that segment
    # whole, which first makes an empty .cut file. With no room for that
    # either, the deletion was neither written nor held: the key was gone
    # for get and for stats()["unwritten"], and came back at the next open
    # even after a clean close with room to write it.
    folder = few_inodes / "kv"
    s = Store(folder, segment_size=4096)
    keys = fill_store(s)
    first = [k for k in keys if s._index.get(k.encode()) >> 24 == 0]
    fillers = use_up_inodes(few_inodes / "other")
    for n, k in enumerate(first):
        assert s.delete(k) is True
        assert s.get(k) is None
        assert s.stats()["unwritten"] == n + 1  # held, every one: no segment could go
    assert len(s) == len(keys) - len(first)
    for p in fillers:
        p.unlink()  # room for a file again, from outside the store
    s.put("after", 1)  # the oldest segment goes whole now, and this fits
    assert s.stats()["unwritten"] == 0
    s.close()
    with Store(folder, segment_size=4096) as s:
        assert sorted(s.list()) == sorted(set(keys) - set(first) | {"after"})
        assert s.stats()["damaged"] == []


def test_a_store_left_with_no_segment_compacts_and_purges(
    few_inodes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every key deleted, so every segment deleted whole, and no room for a
    # new one (the medium taken meanwhile by another writer): compact() and
    # delete(purge=True) raised IndexError, looking for the last segment.
    from fieldline.store import _log

    folder = few_inodes / "kv"
    s = Store(folder, segment_size=4096)
    keys = fill_store(s)
    new_segment = _log.Log._new_segment

    def no_room(log: _log.Log) -> None:
        if not log.nums:  # the drop took every segment; another writer took the room
            raise OSError(errno.ENOSPC, "no space left")
        new_segment(log)

    monkeypatch.setattr(_log.Log, "_new_segment", no_room)
    assert s.delete_batch(keys) == len(keys)  # no room to write: all segments go whole
    assert s.stats()["segments"] == 0 and len(s) == 0
    monkeypatch.setattr(_log.Log, "_new_segment", new_segment)
    s.compact()
    assert s.stats()["segments"] == 1
    s.put("after", 1)
    assert s.delete(purge=True) == 1
    s.put("again", 2)
    s.close()
    with Store(folder, segment_size=4096) as s:
        assert s.list() == ["again"]
        assert s.stats()["damaged"] == []


def test_a_held_deletion_reads_the_oldest_segment_at_most(
    few_inodes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each deletion held on a full store looked for room by reading every
    # record of every segment (to forget the expired ones first), twice: on
    # a board, seconds per delete. Only the oldest segment can go, and only
    # once its first live record is gone: that is all it reads now, and not
    # even that while the record it found last time is still there.
    from fieldline.store import _log

    s = Store(few_inodes / "kv", segment_size=4096)
    keys = fill_store(s)
    assert s.stats()["segments"] >= 8
    opened: list[int] = []
    open_ = _log.Log._open

    def counting(log: _log.Log, num: int, mode: str = "r+b") -> object:
        if mode == "rb":
            opened.append(num)
        return open_(log, num, mode)

    monkeypatch.setattr(_log.Log, "_open", counting)
    for k in reversed(keys[-20:]):  # the newest: no segment can go
        assert s.delete(k) is True
    assert s.stats()["unwritten"] == 20
    assert len(opened) <= 4, opened  # a pass read each segment twice a delete
    for k in keys[:40]:  # the oldest: segments go, each read once
        assert s.delete(k) is True
    assert len(opened) <= 4 + 40, opened
    s.close()
    with Store(few_inodes / "kv", segment_size=4096) as s:
        assert sorted(s.list()) == sorted(keys[40:-20])


def test_expired_records_make_room_on_a_full_store(few_inodes: Path) -> None:
    # A put on a full store forgets the expired records of the oldest
    # segments and deletes those segments whole, also when a held deletion
    # found them unexpired a moment before.
    now = [1000.0]
    folder = few_inodes / "kv"
    s = Store(folder, segment_size=4096, clock=lambda: now[0])
    for i in range(120):
        s.put(f"t{i}", {"v": "x" * 200}, ttl=100)
    keys = fill_store(s)
    assert s.stats()["segments"] >= 8
    assert s.delete(keys[-1]) is True  # held: the oldest record lives on
    assert s.stats()["unwritten"] == 1
    with pytest.raises(StoreFullError):
        s.put("new", 1)
    now[0] = 1101.0
    s.put("new", 1)  # the expired segments go
    assert s.stats()["unwritten"] == 0
    s.close()
    with Store(folder, segment_size=4096, clock=lambda: now[0]) as s:
        assert sorted(s.list()) == sorted(keys[:-1] + ["new"])
        assert s.stats()["damaged"] == []


def test_a_queue_whose_segments_all_went_opens_on_a_full_medium(
    few_inodes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every entry acknowledged, so every segment deleted whole, and no room
    # for a new one: the folder holds only its .cut file. Opening it on a
    # medium still full raised StoreFullError, as for a new, empty folder:
    # the device could not open its queue at all. It opens now, empty,
    # numbering on from the .cut file, and appends once there is room.
    from fieldline.store import REFUSE, Queue, _log

    opts: dict[str, Any] = {"segment_size": 4096, "max_entries": 100000, "policy": REFUSE}
    folder = few_inodes / "q"
    q = Queue(folder, **opts)
    seqs: list[int] = []
    with pytest.raises(StoreFullError):
        while True:
            seqs.append(q.append(b"p" * 300))
    new_segment = _log.Log._new_segment

    def no_room(log: _log.Log) -> None:
        if not log.nums:  # the drop took every segment; another writer took the room
            raise OSError(errno.ENOSPC, "no space left")
        new_segment(log)

    monkeypatch.setattr(_log.Log, "_new_segment", no_room)
    for s in reversed(seqs):  # newest first: all held, then every segment goes at once
        assert q.ack(s) == 1
    monkeypatch.setattr(_log.Log, "_new_segment", new_segment)
    assert q.stats()["segments"] == 0
    q.close()
    names = [n for n in os.listdir(folder) if n != "lock"]
    assert len(names) == 1 and names[0].endswith(".cut"), names
    fillers = use_up_inodes(few_inodes / "other")
    with Queue(folder, **opts) as q:
        assert len(q) == 0
        with pytest.raises(StoreFullError):
            q.append(b"no room")
        fillers[0].unlink()
        assert q.append(b"room") == seqs[-1] + 1
    with Queue(folder, **opts) as q:
        assert q.peek(5) == [(seqs[-1] + 1, b"room")]
