"""Fills a Queue on MicroPython with QoS 2 messages (the clients'
``persistence=`` calls) until the medium is full, then notes a PUBREC with
``released``, for tests/test_store_full.py (the folder is on a small tmpfs).

``micropython mpy_released_full.py REPO FOLDER``: prints "stored N" (the
messages that fitted), "released KEY NEW" (the key ``released`` returned
for the oldest: the same key, not noted, on a full medium), "pending N
FLAG" (the messages pending, and the oldest one's released flag), "done".
"""

import sys

sys.path.insert(0, sys.argv[1])

from fieldline.store import REFUSE, Queue, StoreFullError  # noqa: E402

q = Queue(sys.argv[2], segment_size=4096, max_entries=100000, policy=REFUSE)
keys = []  # type: list
try:
    while True:
        keys.append(q.put("t/x", b"p" * 300, 2, False, {}, len(keys) + 1))
except StoreFullError:
    pass
print("stored", len(keys))
print("released", keys[0], q.released(keys[0]))
p = q.pending()
print("pending", len(p), int(p[0][1][6]))
q.close()
print("done")
