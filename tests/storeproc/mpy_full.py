"""Puts into a Store on MicroPython past a file size limit, for
tests/test_store_crash.py: run under ``ulimit -f`` with SIGXFSZ ignored, a
write past the limit fails with EFBIG, and MicroPython cannot cut it off.

``micropython mpy_full.py REPO FOLDER``: prints "C key" for each confirmed
put and "F key errno" for each refused one, then "done".
"""

import sys

sys.path.insert(0, sys.argv[1])

from fieldline.store import Store, StoreFullError  # noqa: E402

s = Store(sys.argv[2], segment_size=1 << 20, fsync=False)
for i in range(40):
    key = "k" + str(100 + i)
    try:
        s.put(key, {"i": i, "pad": "x" * 900})
        print("C", key)
    except StoreFullError as e:
        print("F", key, e.errno)
s.close()
print("done")
