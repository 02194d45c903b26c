"""Random appends and acks on a Queue until killed, for tests/test_store_crash.py.

``queue_writer.py FOLDER SEED ROUND``. Prints ``ready`` once the queue is
open; then, for each operation, ``B append <payload hex>`` or ``B ack <seqs as
JSON>`` before the call, and after it returned ``C <seq> <compactions so far>``
(append) or ``C <entries removed> <compactions so far>`` (ack), each line
flushed at once.
"""

from __future__ import annotations

import json
import random
import sys

from fieldline.store import DROP_OLDEST, Queue

# Shared with the test, which reopens the queue with the same options.
SEGMENT_SIZE = 4096
COMPACT_RATIO = 0.3
MAX_ENTRIES = 40  # appends beyond it drop the oldest entry in the same write


def open_queue(folder: str) -> Queue:
    # fsync=False for speed: SIGKILL does not lose the page cache.
    return Queue(
        folder,
        max_entries=MAX_ENTRIES,
        policy=DROP_OLDEST,
        segment_size=SEGMENT_SIZE,
        compact_ratio=COMPACT_RATIO,
        fsync=False,
    )


def main() -> None:
    folder, seed, round_ = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rng = random.Random(seed)
    out = sys.stdout
    q = open_queue(folder)
    out.write("ready\n")
    out.flush()
    n = 0
    while True:
        n += 1
        if rng.random() < 0.55 or not len(q):
            size = rng.choice((0, 5, 50, 200)) if rng.random() < 0.85 else rng.randint(500, 5000)
            payload = f"{round_}-{n}:".encode() + rng.randbytes(size)
            out.write(f"B append {payload.hex()}\n")
            out.flush()
            seq = q.append(payload)
            out.write(f"C {seq} {q.compactions}\n")
        else:
            entries = [s for s, _ in q.peek(len(q))]
            if rng.random() < 0.6:  # in order, as the MQTT client mostly acks
                seqs = entries[: rng.randint(1, 3)]
            else:
                seqs = rng.sample(entries, min(len(entries), rng.randint(1, 3)))
            if rng.random() < 0.1:
                seqs.append(10**6 + n)  # never appended: ack finds nothing for it
            out.write(f"B ack {json.dumps(seqs)}\n")
            out.flush()
            done = q.ack(seqs)
            out.write(f"C {done} {q.compactions}\n")
        out.flush()


if __name__ == "__main__":
    main()
