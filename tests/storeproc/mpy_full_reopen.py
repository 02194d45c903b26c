"""A Queue on MicroPython on a full medium, across a power cut, for
tests/test_store_full.py (the folder is on a small tmpfs: writes fail with
ENOSPC, and MicroPython cannot cut a failed one off).

``micropython mpy_full_reopen.py REPO FOLDER fill``: segments of 10,000
bytes, which a page of the tmpfs does not divide; appends 300-byte entries,
then smaller ones, until none fits (the failed writes leave what reached
the file at its end), acks the oldest (held in RAM) and exits without
closing, as a power cut would; prints "seqs N N ..." (every number
appended) and "done".

``... reopen``: opens the queue again (a new segment to write to does not
fit), prints "entries N", acks the oldest half one at a time, prints
"acked N" and "after SEQ" (an append once room is back), and "done".
"""

import sys

sys.path.insert(0, sys.argv[1])

from fieldline.store import REFUSE, Queue, StoreFullError  # noqa: E402

q = Queue(sys.argv[2], segment_size=10000, max_entries=100000, policy=REFUSE)
if sys.argv[3] == "fill":
    seqs = []
    for size in (300, 100, 20, 5):
        try:
            while True:
                seqs.append(q.append(b"p" * size))
        except StoreFullError:
            pass
    q.ack(seqs[0])
    print("seqs", " ".join([str(s) for s in seqs]))
else:
    print("entries", len(q))
    n = 0
    for s, _ in q.peek(len(q) // 2):
        n += q.ack(s)
    print("acked", n)
    print("after", q.append(b"after"))
    q.close()
print("done")
