"""Fills a Store on MicroPython until the medium is full, then deletes the
oldest half and writes again, for tests/test_store_full_segments.py (the folder is
on a small tmpfs: writes fail with ENOSPC, and MicroPython cannot cut a
failed one off).

``micropython mpy_store_full.py REPO FOLDER``: prints "full ERRNO N" (N
records fitted), "newest ERRNO" (deleting the newest record still fails),
"deleted N" (the oldest half), "put" (a write once room is back), "done".
"""

import sys

sys.path.insert(0, sys.argv[1])

from fieldline.store import Store, StoreFullError  # noqa: E402

s = Store(sys.argv[2], segment_size=4096)
keys = []  # type: list
try:
    while True:
        s.put("k" + str(len(keys)), {"v": "x" * 200})
        keys.append("k" + str(len(keys)))
except StoreFullError as e:
    print("full", e.errno, len(keys))
try:
    s.delete(keys[-1])
    print("newest deleted")
except StoreFullError as e:
    print("newest", e.errno)
print("deleted", s.delete_batch(keys[: len(keys) // 2]))
s.put("after", 1)
print("put")
s.close()
print("done")
