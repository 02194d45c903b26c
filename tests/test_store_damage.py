"""fieldline.store with damage it must report and read around: a segment file gone (the first
or one in the middle), damage found at open and an automatic compaction after it, a
damaged queue entry that uncovers a record inside its payload. Real files on disk,
damaged by hand as a failing medium or file system would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from storeproc.child import segment_names

from fieldline.store import CorruptError, Queue, Store

# -- a segment file that is gone -------------------------------------------------------------


def three_segments(folder: Path) -> dict[str, str]:
    """A store whose second segment is short and whose first is long: a big
    record ends the first segment, two small ones fill the second, one small
    one starts the third. Returns what it holds."""
    want = {}
    with Store(str(folder), segment_size=256, fsync=False) as s:
        for key, value in [
            ("a1", "x" * 10),
            ("a2", "x" * 10),
            ("a3", "L" * 600),  # segment 1 ends well past segment 2's end
            ("b1", "y" * 200),
            ("b2", "y" * 10),
            ("c1", "z" * 10),
        ]:
            s.put(key, value)
            want[key] = value
    names = segment_names(folder)
    assert names == ["00000001.seg", "00000002.seg", "00000003.seg"], names
    assert (folder / names[0]).stat().st_size > (folder / names[1]).stat().st_size
    return want


def test_a_missing_middle_segment_is_reported_and_its_neighbours_are_read(tmp_path: Path) -> None:
    # A segment file lost from the middle (a file system repair, a bad block
    # under its directory entry): the records it held are gone, and that is
    # damage, not silence. The segment after it starts with a record saying
    # where *the lost one* ends; it must not be applied to the one before it,
    # whose records past that offset would vanish unreported.
    folder = tmp_path / "kv"
    want = three_segments(folder)
    lost_len = (folder / "00000002.seg").stat().st_size
    os.remove(folder / "00000002.seg")
    with Store(str(folder)) as s:
        assert {k: s.get(k) for k in s.list()} == {k: v for k, v in want.items() if k[0] != "b"}
        assert s.stats()["damaged"] == [("00000002.seg", 0, lost_len)]
    with pytest.raises(CorruptError) as e:
        Store(str(folder), strict=True)
    assert e.value.segments == ["00000002.seg"]


def test_a_missing_first_segment_is_reported(tmp_path: Path) -> None:
    folder = tmp_path / "kv"
    want = three_segments(folder)
    lost_len = (folder / "00000001.seg").stat().st_size
    os.remove(folder / "00000001.seg")
    with Store(str(folder)) as s:
        assert {k: s.get(k) for k in s.list()} == {k: v for k, v in want.items() if k[0] != "a"}
        assert s.stats()["damaged"] == [("00000001.seg", 0, lost_len)]
    with pytest.raises(CorruptError):
        Store(str(folder), strict=True)


# -- damage found at open, then an automatic compaction -----------------------------------------


def damage_record(
    folder: Path, marker: bytes, head: int, length: int
) -> list[tuple[str, int, int]]:
    """Flip a byte inside the record whose key or value holds ``marker`` (``head``
    bytes into the record), in whichever segment has it; the damage to expect."""
    for name in segment_names(folder):
        data = bytearray((folder / name).read_bytes())
        at = data.find(marker)
        if at >= 0:
            data[at + 1] ^= 0xFF
            (folder / name).write_bytes(bytes(data))
            return [(name, at - head, length)]
    raise AssertionError(marker)


@pytest.mark.parametrize("kind", ["store", "queue"])
def test_damage_found_at_open_is_reported_after_an_automatic_compaction(
    tmp_path: Path, kind: str
) -> None:
    # stats()["damaged"] is how a caller learns that records were lost. When the
    # garbage share called for a compaction at open (or at a later write), the
    # compaction copied what was readable and cleared the report: the loss went
    # unreported. The report now stays until the caller compacts on purpose.
    folder = tmp_path / kind
    opts: dict[str, Any] = {"segment_size": 1024, "fsync": False}
    db: Any
    if kind == "store":
        with Store(str(folder), compact_ratio=0.99, **opts) as db:
            for i in range(5):
                for k in range(8):
                    db.put(f"k{k}", [i, "x" * 40])
            db.put("victim", "v" * 40)
            for k in range(8):
                db.put(f"tail{k}", k)
        damage = damage_record(folder, b"victim", 16, 16 + 6 + 42)
        db = Store(str(folder), compact_ratio=0.5, **opts)
        assert "victim" not in db and len(db) == 16
    else:
        with Queue(str(folder), compact_ratio=0.99, **opts) as db:
            for i in range(40):
                db.append(b"<%d>" % i + b"x" * 40)
            db.ack(list(range(1, 31)))
        damage = damage_record(folder, b"<35>", 20, 20 + 44)
        db = Queue(str(folder), compact_ratio=0.5, **opts)
        assert len(db) == 9
    with db:
        assert db.stats()["compactions"] == 1  # at open: the garbage called for it
        assert db.stats()["damaged"] == damage
        db.compact()  # on purpose: the caller has what it needs from the report
        assert db.stats()["damaged"] == []


# -- a queue whose damaged entry held a record of another store --------------------------------


def test_a_queue_opens_when_damage_uncovers_a_record_inside_a_payload(tmp_path: Path) -> None:
    # An entry's payload holds a record of a key-value store (a segment file
    # being uploaded in chunks), and the power cut lost the entry's first page
    # but kept a later one. Recovery steps over the damage to the next
    # well-formed record, which is the one inside the payload; its key is not
    # a queue's 4-byte sequence number, and the Queue failed to open at all
    # (struct.error), with every entry in it out of reach. A record that is no
    # queue entry is now passed over: the damage is reported, the rest read.
    from fieldline.store._log import FIRST, PUT, encode

    folder = tmp_path / "q"
    with Queue(str(folder), fsync=False) as q:
        q.append(b"before")
        inner = encode(PUT, FIRST, b"sensor-1", b'{"t": 21.5}', 0)
        q.append(b"A" * 5000 + inner + b"B" * 100)
        q.append(b"after")
    seg = folder / "00000001.seg"
    data = bytearray(seg.read_bytes())
    start = data.index(b"A" * 16) - 20  # the entry's header
    data[start : start + 4096] = bytes(4096)
    seg.write_bytes(bytes(data))
    with Queue(str(folder)) as q:
        assert q.peek(10) == [(1, b"before"), (3, b"after")]
        [(name, off, _), *_] = q.stats()["damaged"]
        assert (name, off) == (seg.name, start)
        assert q.append(b"next") == 4
