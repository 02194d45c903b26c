"""fieldline.store: the second review's defects and gaps, each with the test that shows it.

Real files on disk, a real size-limited file system, the MicroPython Unix port
where the board's behaviour differs from CPython's.
"""

from __future__ import annotations

import os
from pathlib import Path

from fieldline.store import Queue


def segment_names(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".seg"))


# -- 1. sequence numbers never go back -------------------------------------------------------


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
