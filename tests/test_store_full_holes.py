"""fieldline.store on a full medium: the rare paths of held deletions.

What the tests in test_store_full.py do not reach: a medium so full that not
even the empty ``.cut`` file that deletes segments whole can be made (a
tmpfs with few inodes here, a full directory block on a board's flash), a
store left with no segment at all, and what a held deletion costs.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

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
