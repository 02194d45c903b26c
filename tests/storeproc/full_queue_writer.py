"""Appends to a Queue until the medium is full, then acknowledges the oldest
entries, over and over until killed, for tests/test_store_full_segments.py (the
folder is on a small file system).

``full_queue_writer.py FOLDER SEED ROUND``. Prints ``ready`` once the queue
is open; then, for each operation, ``B append <payload hex>`` or ``B ack
<seqs as JSON>`` before the call, and after it ``C <seq> <held>`` (append)
or ``C <entries removed> <held>`` (ack), ``<held>`` being the acks held in RAM
for want of room (``stats()["unwritten"]``: 0, every ack so far is written),
or ``F <entries left as JSON>`` if it raised StoreFullError (an ack may have
removed some before it did), each line flushed at once. An ack that raised
is followed by one of every entry (a prefix may free no whole segment, and
five such in a row are only chance).
It exits (status 1) if five calls in a row raise: the medium stays full,
nothing can be drained.
"""

from __future__ import annotations

import json
import random
import sys

from fieldline.store import REFUSE, Queue, StoreFullError

SEGMENT_SIZE = 2048  # shared with the test, which reopens the queue so


def open_queue(folder: str) -> Queue:
    # fsync=False for speed: SIGKILL does not lose the page cache.
    return Queue(folder, max_entries=100000, segment_size=SEGMENT_SIZE, fsync=False, policy=REFUSE)


def main() -> None:
    folder, seed, round_ = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rng = random.Random(seed)
    out = sys.stdout
    q = open_queue(folder)
    out.write("ready\n")
    out.flush()
    n = 0
    filling = True
    stuck = 0
    ack_all = False
    while True:
        n += 1
        try:
            if filling or not len(q):
                payload = f"{round_}-{n}:".encode() + rng.randbytes(rng.choice((0, 40, 300)))
                out.write(f"B append {payload.hex()}\n")
                out.flush()
                seq = q.append(payload)
                out.write(f"C {seq} {q.stats()['unwritten']}\n")
            else:
                entries = [s for s, _ in q.peek(len(q))]
                # The oldest, as a broker acks; all of them after an ack that raised.
                seqs = entries if ack_all else entries[: rng.randint(1, len(entries))]
                out.write(f"B ack {json.dumps(seqs)}\n")
                out.flush()
                removed = q.ack(seqs)
                out.write(f"C {removed} {q.stats()['unwritten']}\n")
                filling = rng.random() < 0.7
                ack_all = False
            stuck = 0
        except StoreFullError:
            out.write(f"F {json.dumps([s for s, _ in q.peek(len(q))])}\n")
            ack_all = ack_all or not filling
            filling = not filling
            stuck += 1
            if stuck == 5:
                raise SystemExit("stuck: the medium stays full") from None
        out.flush()


if __name__ == "__main__":
    main()
