"""Appends to a Queue until the medium is full, then acknowledges the oldest
entries one ``ack`` at a time (as a client does, a PUBACK at a time), over
and over until killed, for tests/test_store_full.py (the folder is on a
small file system).

``full_ack_each.py FOLDER SEED ROUND``. Prints ``ready`` once the queue is
open; then, for each operation, ``B append <payload hex>`` or ``B ack
<seq>`` before the call, and after it ``H <acks held in RAM as JSON>`` and
``C <seq>`` (append) or ``C <entries removed>`` (ack), or ``F`` if an append
raised StoreFullError, each line flushed at once. It exits (status 1) if an
ack raises, or if five appends in a row raise with nothing to ack.
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
    acks = 0  # acks left in this run of acks
    stuck = 0
    while True:
        n += 1
        if acks and len(q):
            acks -= 1
            seq = q.peek(1)[0][0]
            out.write(f"B ack {seq}\n")
            out.flush()
            k = q.ack(seq)
            out.write(f"H {json.dumps([s for s, _ in q._held])}\nC {k}\n")
        else:
            payload = f"{round_}-{n}:".encode() + rng.randbytes(rng.choice((0, 40, 300)))
            out.write(f"B append {payload.hex()}\n")
            out.flush()
            try:
                seq = q.append(payload)
                stuck = 0
                out.write(f"H {json.dumps([s for s, _ in q._held])}\nC {seq}\n")
            except StoreFullError:
                out.write("F\n")
                acks = rng.randint(1, 40)
                stuck += 1
                if stuck == 5 and not len(q):
                    raise SystemExit("stuck: the medium stays full") from None
        out.flush()


if __name__ == "__main__":
    main()
