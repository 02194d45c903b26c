"""Device-side storage: a key-value store with TTL and Mongo-style queries,
and a crash-safe offline queue, on one append-only record format.

Runs on MicroPython and CPython. See docs/store.md.
"""

from ._errors import CorruptError, EncodeError, QueryError, QueueFull, StoreError, StoreFullError
from ._queue import DROP_OLDEST, REFUSE, Queue
from ._store import Store

__all__ = [
    "DROP_OLDEST",
    "REFUSE",
    "CorruptError",
    "EncodeError",
    "QueryError",
    "Queue",
    "QueueFull",
    "Store",
    "StoreError",
    "StoreFullError",
]
