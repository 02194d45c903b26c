"""fieldline.store made, closed and opened again: options checked when a Store or Queue is
made, a closed one refuses what would touch its folder, and a queue's sequence numbers go
on across reopening and compaction (old format included). Real files on disk.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldline.store import Queue, Store, StoreError

# -- a closed store or queue ---------------------------------------------------------------------


def test_a_closed_store_refuses_what_would_touch_the_folder(tmp_path: Path) -> None:
    # close() lets go of the folder's lock, but a put on the closed Store still
    # succeeded: it started a new segment behind the back of the Store that
    # opened the folder next, whose confirmed writes then vanished at the next
    # open (cut off by that segment's SEAL); a purge on the closed Store wiped
    # them all. Now anything that would read or write the folder raises.
    folder = str(tmp_path / "kv")
    old = Store(folder)
    old.put("a", 1)
    old.close()
    with Store(folder) as s:
        s.put("b", 2)
        with pytest.raises(StoreError, match="closed"):
            old.put("x", 1)
        with pytest.raises(StoreError, match="closed"):
            old.delete(purge=True)
        with pytest.raises(StoreError, match="closed"):
            old.get("a")
        with pytest.raises(StoreError, match="closed"):
            old.list()
        s.put("c", 3)
    with Store(folder) as s:
        assert {k: s.get(k) for k in s.list()} == {"a": 1, "b": 2, "c": 3}
    old.close()  # twice is fine


def test_a_closed_queue_refuses_appends(tmp_path: Path) -> None:
    folder = str(tmp_path / "q")
    old = Queue(folder)
    old.append(b"one")
    old.close()
    with Queue(folder) as q:
        q.append(b"two")
        with pytest.raises(StoreError, match="closed"):
            old.append(b"ghost")
        with pytest.raises(StoreError, match="closed"):
            old.peek()
        q.append(b"three")
    with Queue(folder) as q:
        assert [v for _, v in q.peek(10)] == [b"one", b"two", b"three"]


# -- a queue's default ttl -----------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [0, -5])
def test_a_queue_refuses_a_bad_default_ttl_when_made(tmp_path: Path, ttl: int) -> None:
    # Queue(ttl=0) was accepted, and then every append raised ValueError: as the
    # clients' persistence=, each QoS 1/2 publish failed deep inside, long
    # after the mistake. A TTL is checked where it is given, as put's is.
    with pytest.raises(ValueError, match="ttl"):
        Queue(str(tmp_path / "q"), ttl=ttl)
    with Queue(str(tmp_path / "q"), ttl=60) as q:  # and the folder is not left locked
        assert q.append(b"x") == 1


# -- a queue's compact_ratio -----------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.5])
def test_a_queue_checks_compact_ratio_as_the_store_does(tmp_path: Path, ratio: float) -> None:
    # Store refused a compact_ratio outside (0, 1); Queue took any. With 0 a
    # queue past one segment rewrote every entry at every append and ack (on a
    # board, flash worn out by a typo); with 1 or more only the 32-segment
    # limit ever compacted it.
    with pytest.raises(ValueError, match="compact_ratio"):
        Queue(str(tmp_path / "q"), compact_ratio=ratio)
    with pytest.raises(ValueError, match="compact_ratio"):
        Store(str(tmp_path / "kv"), compact_ratio=ratio)
    with Queue(str(tmp_path / "q"), compact_ratio=0.25) as q:  # the folder was let go
        assert q.append(b"x") == 1


# -- sequence numbers never go back -------------------------------------------------------


def test_sequence_numbers_do_not_restart_after_reopening_an_emptied_queue(tmp_path: Path) -> None:
    # A consumer peeks entry N, the device restarts before it acks, and the
    # ack of N arrives after the restart: N must not name a new entry. Once
    # every entry is acknowledged, a compaction leaves no record that holds a
    # number; the compacted segment must still say where numbering stands.
    folder = tmp_path / "q"
    q = Queue(folder, segment_size=512)
    last = 0
    for _ in range(60):
        last = q.append(b"x" * 40)
        q.ack(last)
    q.compact()
    assert len(q) == 0
    q.close()
    with Queue(folder, segment_size=512) as q:
        assert q.append(b"new") == last + 1
        assert q.ack(last) == 0  # the old number names nothing
        assert q.peek(5) == [(last + 1, b"new")]


def test_sequence_numbers_go_on_after_a_compaction_at_open(tmp_path: Path) -> None:
    # The compaction runs while opening (the garbage left by a previous run):
    # the number it records is the one the replay found, not 1.
    folder = tmp_path / "q"
    with Queue(folder) as q:
        seqs = [q.append(b"y" * 60) for _ in range(20)]
        q.ack(seqs)
        assert q.stats()["compactions"] == 0
    with Queue(folder, segment_size=512) as q:
        assert q.stats()["compactions"] == 1
    with Queue(folder, segment_size=512) as q:
        assert q.append(b"z") == seqs[-1] + 1


def test_a_compacted_queue_of_the_old_format_still_opens(tmp_path: Path) -> None:
    # Files written before the compacted segment carried the next number: its
    # first record has an empty value. They open, with what they hold.
    from fieldline.store._log import BASE, FIRST, PUT, RAW, encode

    folder = tmp_path / "q"
    folder.mkdir()
    data = encode(BASE, 0, b"-", b"", 0) + encode(PUT, RAW | FIRST, b"\0\0\0\x07", b"seven", 0)
    (folder / "00000003.seg").write_bytes(data)
    with Queue(folder) as q:
        assert q.peek(5) == [(7, b"seven")]
        assert q.stats()["damaged"] == []
        assert q.append(b"eight") == 8
