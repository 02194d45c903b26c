"""Puts to a Store until the medium is full, then deletes the oldest keys one
``delete`` at a time (now and then a few in one ``delete_batch``) and puts
again, some under keys just deleted, over and over until killed, for
tests/test_store_full.py (the folder is on a small file system).

``full_kv_each.py FOLDER SEED ROUND``. Prints ``ready`` once the store is
open; then, for each operation, ``B <op as JSON>`` before the call (["put",
key, value] or ["delete", [keys]]), and after it ``H <keys whose deletion
is held in RAM, as JSON>`` and ``C ok``, or ``F`` if a put raised
StoreFullError, each line flushed at once. It exits (status 1) if a
deletion raises, or if five puts in a row raise with nothing to delete.
"""

from __future__ import annotations

import json
import random
import sys

from fieldline.store import Store, StoreFullError

SEGMENT_SIZE = 2048  # shared with the test, which reopens the store so


def open_store(folder: str) -> Store:
    # fsync=False for speed: SIGKILL does not lose the page cache.
    return Store(folder, segment_size=SEGMENT_SIZE, fsync=False)


def main() -> None:
    folder, seed, round_ = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rng = random.Random(seed)
    out = sys.stdout
    s = open_store(folder)
    out.write("ready\n")
    out.flush()
    n = 0
    deletes = 0  # deletions left in this run of them
    stuck = 0
    gone: list[str] = []  # keys deleted lately, to put again
    while True:
        n += 1
        keys = s.list() if deletes else []
        if keys:
            deletes -= 1
            batch = keys[: rng.choice((1, 1, 1, 3))]
            out.write(f"B {json.dumps(['delete', batch])}\n")
            out.flush()
            if len(batch) == 1:
                assert s.delete(batch[0]) is True
            else:
                assert s.delete_batch(batch) == len(batch)
            gone += batch
            out.write(f"H {json.dumps([k.decode() for k, _ in s._held])}\nC ok\n")
        else:
            deletes = 0
            key = gone.pop(rng.randrange(len(gone))) if gone and rng.random() < 0.2 else None
            key = key or f"{round_}-{n}"
            value = rng.randbytes(rng.choice((0, 40, 300))).hex()
            out.write(f"B {json.dumps(['put', key, value])}\n")
            out.flush()
            try:
                s.put(key, value)
                stuck = 0
                out.write(f"H {json.dumps([k.decode() for k, _ in s._held])}\nC ok\n")
            except StoreFullError:
                out.write("F\n")
                deletes = rng.randint(1, 30)
                stuck += 1
                if stuck == 5 and not len(s):
                    raise SystemExit("stuck: the medium stays full") from None
        out.flush()


if __name__ == "__main__":
    main()
