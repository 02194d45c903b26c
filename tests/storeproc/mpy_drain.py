"""Fills a Queue on MicroPython until the medium is full, then acknowledges
the oldest half, for tests/test_store_full_segments.py (the folder is on a small
tmpfs: writes fail with ENOSPC, and MicroPython cannot cut a failed one off).

``micropython mpy_drain.py REPO FOLDER``: prints "full ERRNO" when 300-byte
and then 1-byte entries no longer fit, "seqs N N ..." (every number
appended), "acked N", "after SEQ" (an append once room is back), "done".
"""

import sys

sys.path.insert(0, sys.argv[1])

from fieldline.store import REFUSE, Queue, StoreFullError  # noqa: E402

q = Queue(sys.argv[2], segment_size=4096, max_entries=100000, policy=REFUSE)
seqs = []
for size in (300, 1):
    try:
        while True:
            seqs.append(q.append(b"p" * size))
    except StoreFullError as e:
        print("full", e.errno)
print("seqs", " ".join([str(s) for s in seqs]))
print("acked", q.ack(seqs[: len(seqs) // 2]))
print("after", q.append(b"after"))
q.close()
print("done")
