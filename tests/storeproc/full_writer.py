"""Puts into a Store until the disk is full, for tests/test_store_crash.py.

``full_writer.py FOLDER LIMIT``: with LIMIT > 0 the process may not grow a
file past LIMIT bytes (RLIMIT_FSIZE, SIGXFSZ ignored: the write fails with
EFBIG); with LIMIT 0 the folder is on a small filesystem (ENOSPC). Prints one
JSON object a line: {"ok": key} for each confirmed put, then {"error": ...}
describing the exception that ended the loop, then {"after": name, ...} for
each call tried on the full store (a get, a delete, a smaller put, close).
"""

from __future__ import annotations

import json
import resource
import signal
import sys
from collections.abc import Callable
from typing import Any

from fieldline.store import Store, StoreError, StoreFullError

VALUE = "v" * 300


def say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def outcome(name: str, call: Callable[[], Any]) -> None:
    try:
        result = call()
    except Exception as e:
        say(
            {
                "after": name,
                "raised": type(e).__name__,
                "store_full": isinstance(e, StoreFullError),
                "store_error": isinstance(e, StoreError),
                "message": str(e),
            }
        )
    else:
        say({"after": name, "result": result})


def main() -> None:
    folder, limit = sys.argv[1], int(sys.argv[2])
    if limit:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    store = Store(folder, segment_size=1 << 20, fsync=False)
    i = 0
    try:
        while True:
            key = f"key{i}"
            store.put(key, {"i": i, "pad": VALUE})
            say({"ok": key})
            i += 1
    except Exception as e:
        say(
            {
                "error": type(e).__name__,
                "store_full": isinstance(e, StoreFullError),
                "oserror": isinstance(e, OSError),
                "errno": getattr(e, "errno", None),
                "message": str(e),
                "key": f"key{i}",
            }
        )
    outcome("get", lambda: store.get("key0"))
    outcome("delete", lambda: store.delete("key1"))
    outcome("small put", lambda: store.put("s", 1))
    outcome("close", store.close)


if __name__ == "__main__":
    main()
