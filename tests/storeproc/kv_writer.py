"""Random writes to a Store until killed, for tests/test_store_crash.py.

``kv_writer.py FOLDER SEED ROUND``. Prints ``ready`` once the store is open;
then, for each operation, ``B <op as JSON>`` before the call and ``C <store
compactions so far>`` after it returned, each line flushed at once. Ops:
{"op": "put", "k", "v"}, {"op": "del", "k"}, {"op": "batch", "items"},
{"op": "delb", "keys"}. Values are unique (they carry ROUND and the op's
number), of many JSON types and sizes (some larger than a segment).
"""

from __future__ import annotations

import json
import random
import sys
from typing import Any

from fieldline.store import Store

# Shared with the test, which reopens the store with the same options.
SEGMENT_SIZE = 4096
COMPACT_RATIO = 0.3
KEYS = 48  # a small pool of keys, so that overwrites and deletes are frequent


def value(rng: random.Random, tag: str) -> Any:
    r = rng.random()
    size = rng.choice((0, 1, 10, 50, 100, 300)) if r < 0.8 else rng.randint(500, 6000)
    kind = rng.randrange(5)
    if kind == 0:
        return tag + "x" * size
    if kind == 1:
        return {"t": tag, "pad": "p" * size, "n": size, "f": size / 7, "ok": size % 2 == 0}
    if kind == 2:
        return [tag, None, size, ["é" * (size // 2)]]
    if kind == 3:
        return {"t": tag, "nested": {"list": list(range(size // 10)), "s": "ü€" * (size // 4)}}
    return [tag] * (1 + size // 20)


def next_op(rng: random.Random, live: list[str], tag: str) -> dict[str, Any]:
    r = rng.random()
    if r < 0.35 or not live:
        return {"op": "put", "k": f"k{rng.randrange(KEYS)}", "v": value(rng, tag)}
    if r < 0.5:
        return {"op": "put", "k": rng.choice(live), "v": value(rng, tag)}
    if r < 0.7:
        return {"op": "del", "k": rng.choice(live) if rng.random() < 0.9 else "absent"}
    if r < 0.9:
        keys = {f"k{rng.randrange(KEYS)}" for _ in range(rng.randint(1, 5))}
        return {"op": "batch", "items": {k: value(rng, f"{tag}.{k}") for k in keys}}
    return {"op": "delb", "keys": rng.sample(live, min(len(live), rng.randint(1, 4)))}


def main() -> None:
    folder, seed, round_ = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rng = random.Random(seed)
    out = sys.stdout
    # fsync=False for speed: the test kills the process (SIGKILL), which does
    # not lose what write() put in the page cache; only a power cut would.
    store = Store(folder, segment_size=SEGMENT_SIZE, compact_ratio=COMPACT_RATIO, fsync=False)
    live = set(store.list())
    out.write("ready\n")
    out.flush()
    n = 0
    while True:
        n += 1
        op = next_op(rng, sorted(live), f"{round_}-{n}")
        out.write("B " + json.dumps(op) + "\n")
        out.flush()
        if op["op"] == "put":
            store.put(op["k"], op["v"])
            live.add(op["k"])
        elif op["op"] == "del":
            store.delete(op["k"])
            live.discard(op["k"])
        elif op["op"] == "batch":
            store.put_batch(op["items"])
            live.update(op["items"])
        else:
            store.delete_batch(op["keys"])
            live.difference_update(op["keys"])
        out.write(f"C {store.compactions}\n")
        out.flush()


if __name__ == "__main__":
    main()
