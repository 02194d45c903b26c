"""Device-side storage: a key-value store with TTL and Mongo-style queries,
and a crash-safe offline queue, on one append-only record format.

Runs on MicroPython and CPython. See docs/store.md. ``Store`` and ``Queue``
load on first use (as ``fieldline.mqtt`` does), so a board that keeps only
a queue never holds the store's code in RAM, nor the query engine until it
runs a query.
"""

from ._errors import CorruptError, EncodeError, QueryError, QueueFull, StoreError, StoreFullError

_LAZY = {"Store": "_store", "Queue": "_queue", "DROP_OLDEST": "_queue", "REFUSE": "_queue"}

__all__ = [
    "CorruptError",
    "DROP_OLDEST",
    "EncodeError",
    "Queue",
    "QueryError",
    "QueueFull",
    "REFUSE",
    "Store",
    "StoreError",
    "StoreFullError",
]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        if name[:1] == "_" and name[:2] != "__":  # MicroPython: `from . import _log`
            try:
                return __import__(__name__ + "." + name, None, None, [name])
            except ImportError:
                pass
        raise AttributeError(name)
    value = getattr(__import__(__name__ + "." + module, None, None, [name]), name)
    globals()[name] = value
    return value
