"""Settings written first, then the churn of readings that replace and delete
each other, on a small medium that fills many times over, for
tests/test_store_room.py. Runs on CPython and on the MicroPython Unix port.

``churn_writer.py REPO FOLDER SEED ROUND N``. Opens the store (writing the
settings if ``cfg0`` is missing), prints ``ready``; then, for each operation,
``B <op as JSON>`` before the call and ``C`` after it returned, each line
flushed at once. Ops: {"op": "put", "k", "v"}, {"op": "del", "k"},
{"op": "batch", "items"}, {"op": "delb", "keys"}. After N operations (N > 0)
it closes the store and prints ``done``; with N = 0 it goes on until killed.
Any exception ends it with a traceback and a non-zero status: with live data
far below the medium's size, the store must never say it is full.
"""

import json
import random
import sys

if __name__ == "__main__":
    sys.path.insert(0, sys.argv[1])

from fieldline.store import Store  # noqa: E402

# Shared with the test, which reopens the store with the same options. Segments
# stay below a 4 KiB page of the tmpfs.
SEGMENT_SIZE = 3600
SETTINGS = 20  # keys cfg0..: written first, then rarely
READINGS = 60  # keys t0..: written, replaced and deleted all along


def open_store(folder):  # type: (str) -> Store
    # fsync=False for speed: SIGKILL does not lose the page cache.
    return Store(folder, segment_size=SEGMENT_SIZE, fsync=False)


def settings():  # type: () -> dict
    return {f"cfg{i}": {"cfg": i, "pad": "c" * (700 + 10 * i)} for i in range(SETTINGS)}


def next_op(tag):  # type: (str) -> dict
    rng = random  # seeded in main()
    r = rng.randrange(100)
    k = f"t{rng.randrange(READINGS)}"
    if r < 60:
        return {"op": "put", "k": k, "v": {"t": tag, "pad": "r" * rng.randrange(300)}}
    if r < 75:
        return {"op": "del", "k": k}
    if r < 85:
        items = {}
        for _ in range(1 + rng.randrange(3)):
            items[f"t{rng.randrange(READINGS)}"] = [tag, "b" * rng.randrange(120)]
        return {"op": "batch", "items": items}
    if r < 95:
        keys = [f"t{rng.randrange(READINGS)}" for _ in range(1 + rng.randrange(3))]
        return {"op": "delb", "keys": keys}
    i = rng.randrange(SETTINGS)
    return {"op": "put", "k": f"cfg{i}", "v": {"cfg": tag, "pad": "C" * (700 + 10 * i)}}


def say(line):  # type: (str) -> None
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main():  # type: () -> None
    folder, seed, round_, n = sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    random.seed(seed)
    store = open_store(folder)
    if store.get("cfg0") is None:  # one put each, in segments of the usual size
        for k, v in settings().items():
            say("B " + json.dumps({"op": "put", "k": k, "v": v}))
            store.put(k, v)
            say("C")
    say("ready")
    i = 0
    while not n or i < n:
        i += 1
        op = next_op(f"{round_}-{i}")
        say("B " + json.dumps(op))
        if op["op"] == "put":
            store.put(op["k"], op["v"])
        elif op["op"] == "del":
            store.delete(op["k"])
        elif op["op"] == "batch":
            store.put_batch(op["items"])
        else:
            store.delete_batch(op["keys"])
        say("C")
    say("stats " + json.dumps(store.stats()))
    store.close()
    say("done")


if __name__ == "__main__":
    main()
