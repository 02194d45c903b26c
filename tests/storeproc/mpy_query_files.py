"""Counts the files a query leaves open, for tests/test_store_batch_and_limit.py: on
MicroPython a generator dropped half-way is never closed, so a file it holds
stays open until a garbage collection (disabled here to show it).

``micropython mpy_query_files.py REPO FOLDER``: prints one line per query,
"NAME OPEN_BEFORE OPEN_AFTER", then "done". Linux only (/proc/self/fd).
"""

import gc
import os
import sys

sys.path.insert(0, sys.argv[1])

from fieldline.store import Store  # noqa: E402

gc.disable()
s = Store(sys.argv[2], segment_size=256, fsync=False)
for i in range(20):
    s.put("k" + str(i), {"i": i, "pad": "x" * 40})  # several segments
for name, q, limit in (
    ("limit1", {"i": {"$gte": 0}}, 1),
    ("limit0", None, 0),
    ("limit3-later-segment", {"i": {"$gte": 12}}, 3),
    ("all", {"i": {"$gte": 0}}, None),
):
    before = len(os.listdir("/proc/self/fd"))
    got = s.query(q, limit=limit)
    after = len(os.listdir("/proc/self/fd"))
    print(name, before, after, len(got))
s.close()
print("done")
