"""Every state of the folder while a full Store makes room by moving records,
for tests/test_store_room.py (CPython: it watches the file operations with an
audit hook, which changes nothing they do).

``room_states.py FOLDER STATES``: settings first, then readings that replace
each other until the medium (a small tmpfs) is nearly full; then puts one by
one, each watched: before every operation that changes the folder (a file
opened for writing, a removal, a rename) the folder is copied to
``STATES/NNN``, and after the put to ``STATES/NNN`` too. The states of a put
that made no room are thrown away; the first put whose states show the
reserve removed (records moved) ends it. Prints ``before <contents as
JSON>``, ``after <contents as JSON>``, ``put <key>`` and ``done``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

from fieldline.store import Store

SEGMENT_SIZE = 3600  # shared with the test, which opens the states so


def main() -> None:
    folder, states = sys.argv[1], sys.argv[2]
    os.mkdir(states)
    taken: list[str] = []
    moved = [False]
    watching = [False]

    def snapshot() -> None:
        dst = os.path.join(states, f"{len(taken):03d}")
        shutil.copytree(folder, dst, ignore=shutil.ignore_patterns("lock"))
        taken.append(dst)

    def inside(path: Any) -> bool:
        return isinstance(path, str) and os.path.dirname(os.path.abspath(path)) == folder

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if not watching[0]:
            return
        if event == "open" and inside(args[0]) and any(c in str(args[1] or "") for c in "wa+"):
            snapshot()
        elif event in ("os.remove", "os.rename") and inside(args[0]):
            if event == "os.remove" and args[0].endswith("/reserve"):
                moved[0] = True
            snapshot()

    folder = os.path.abspath(folder)
    sys.addaudithook(hook)
    store = Store(folder, segment_size=SEGMENT_SIZE, fsync=False)
    model: dict[str, Any] = {}
    for i in range(20):
        model[f"cfg{i}"] = {"cfg": i, "pad": "c" * (700 + 10 * i)}
        store.put(f"cfg{i}", model[f"cfg{i}"])
    n = 0
    while not moved[0]:
        n += 1
        key, value = f"t{n % 50}", {"n": n, "pad": "r" * (n * 37 % 300)}
        before = dict(model)
        watching[0] = n > 60  # by then the medium is nearly full
        if watching[0]:
            for name in taken:
                shutil.rmtree(name)
            taken.clear()
        store.put(key, value)
        model[key] = value
        if watching[0]:
            snapshot()
            watching[0] = False
    store.close()
    print("before " + json.dumps(before))
    print("after " + json.dumps(model))
    print("put " + key)
    print("done")


if __name__ == "__main__":
    main()
