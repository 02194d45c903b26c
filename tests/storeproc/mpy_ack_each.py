"""Fills a Store on MicroPython until the medium is full, then deletes the
oldest half one ``delete`` at a time and writes again; then a Queue the same
way with one ``ack`` at a time, for tests/test_store_full.py (the folder is
on a small tmpfs: writes fail with ENOSPC, and MicroPython cannot cut a
failed one off).

``micropython mpy_ack_each.py REPO FOLDER``: the Store in FOLDER + "kv"
prints "keys N" (the records that fitted), "deleted N", and once
reopened "list KEY ..." and "damaged N", then purges it; the Queue in
FOLDER, "seqs N N ..." (every number appended),
"acked N" and "after SEQ" (an append once room is back); then "done".
"""

import sys

sys.path.insert(0, sys.argv[1])

from fieldline.store import REFUSE, Queue, Store, StoreFullError  # noqa: E402

s = Store(sys.argv[2] + "kv", segment_size=1024)
keys = []  # type: list
try:
    while True:
        s.put("k" + str(len(keys)), {"v": "x" * 200})
        keys.append("k" + str(len(keys)))
except StoreFullError:
    pass
print("keys", len(keys))
n = 0
for k in keys[: len(keys) // 2]:
    n += s.delete(k)
print("deleted", n)
s.put("after", 1)
s.close()
s = Store(sys.argv[2] + "kv", segment_size=1024)
print("list", " ".join(s.list()))
print("damaged", len(s.stats()["damaged"]))
s.delete(purge=True)  # the room, for the queue
s.close()

q = Queue(sys.argv[2], segment_size=4096, max_entries=100000, policy=REFUSE)
seqs = []
try:
    while True:
        seqs.append(q.append(b"p" * 300))
except StoreFullError:
    pass
print("seqs", " ".join([str(s) for s in seqs]))
n = 0
for s in seqs[: len(seqs) // 2]:
    n += q.ack(s)
print("acked", n)
print("after", q.append(b"after"))
q.close()
print("done")
