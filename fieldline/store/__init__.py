"""Device-side storage: a key-value store with TTL and Mongo-style queries,
and a crash-safe offline queue, on one append-only record format.

Runs on MicroPython and CPython. See docs/store.md.
"""
