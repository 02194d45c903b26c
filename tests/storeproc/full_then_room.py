"""A batch that fails for want of room, then room again, for
tests/test_store_crash.py.

``full_then_room.py FOLDER ROOM``: put 5 records; lower the file size limit
(RLIMIT_FSIZE, SIGXFSZ ignored) to ROOM bytes past the end of the segment, so
that a batch of 3 records (5019, 319 and 319 bytes) fails (EFBIG); raise the
limit again, as when the application frees space; put one small record.
Prints one JSON object a line: {"batch": error message}, then {"after":
"ok"} or {"after": error}, then {"closed": true}.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
from typing import Any

from fieldline.store import Store, StoreFullError


def say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    folder, room = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    store = Store(folder, fsync=False)
    for i in range(5):
        store.put(f"k{i}", i)
    size = os.path.getsize(os.path.join(folder, "00000001.seg"))
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + room, resource.RLIM_INFINITY))
    try:
        store.put_batch({"a": "A" * 5000, "b": "B" * 300, "c": "C" * 300})
        say({"batch": None})
    except StoreFullError as e:
        say({"batch": str(e)})
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    try:
        store.put("n", 1)
        say({"after": "ok"})
    except Exception as e:
        say({"after": repr(e)})
    store.close()
    say({"closed": True})


if __name__ == "__main__":
    main()
