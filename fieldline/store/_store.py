"""The key-value store: JSON documents under string keys, with a TTL and
Mongo-style queries, on the crash-safe record log (``_log``).

Values stay on flash; RAM holds only the compact index (``_index``), so the
store's footprint grows by about 8 bytes a record, not by the data.
"""

import json
import time

from ._errors import EncodeError, StoreError, StoreFullError
from ._index import Index
from ._log import DELETE, PUT, Log, bulk, expiry

_MISSING = object()
_INF = float("inf")


def _plain(v):
    # What JSON can carry and give back unchanged. MicroPython's json.dumps
    # writes bytes and NaN without complaint, so the check is ours.
    t = type(v)
    if t is str or t is int or t is bool or v is None:
        return True
    if t is float:
        return v == v and v != _INF and v != -_INF
    if t is list or t is tuple:
        for x in v:
            if not _plain(x):
                return False
        return True
    if t is dict:
        for k in v:
            if type(k) is not str or not _plain(v[k]):
                return False
        return True
    return False


def _key(key):
    if type(key) is not str or not key:
        raise StoreError("a key must be a non-empty str, not %r" % (key,))
    return key.encode()


class Store:
    """A key-value store in the folder ``path`` (created if missing), or in RAM
    when ``path`` is None.

    ``segment_size``: bytes a segment file grows to before the next one
    starts. ``compact_ratio``: the share of garbage (replaced, deleted and
    expired records) at which the store rewrites its live records into a
    fresh segment. ``fsync``: sync each write to the medium before it
    returns (CPython; MicroPython's flush does it). ``strict``: raise
    CorruptError at open if a segment is damaged in the middle, instead of
    opening with every record that could be read (see ``stats()``)."""

    def __init__(
        self,
        path=None,
        segment_size=65536,
        compact_ratio=0.5,
        fsync=True,
        strict=False,
        clock=time.time,
    ):
        self.path = path
        self._clock = clock
        self._log = Log(path, segment_size, fsync, compact_ratio)
        self._index = Index(self._key_at)
        self._live_bytes = 0  # bytes of the records the index points at
        self._held = []  # [(key, pos)]: deletions a full medium had no room for
        self._seq = 0
        self._t = 0  # the second in the last made-up key
        self._now = clock()
        self.compactions = 0
        self.expired = 0
        try:
            bulk().scan(self._log, self._replay, strict)
            self._index.merge()
            self._maybe_compact()
        except BaseException:
            self.close()  # and its lock: a retry must not find the folder taken
            raise

    # -- internals --------------------------------------------------------

    def _key_at(self, pos):
        return self._log.read(pos)[2]

    def _drop(self, pos):
        if pos is not None:
            _, _, key, value, _ = self._log.read(pos)
            self._live_bytes -= 16 + len(key) + len(value)

    def _replay(self, kind, flags, key, pos, length, expires):
        if kind == PUT and not (expires and expires <= self._now):
            self._drop(self._index.set(key, pos))
            self._live_bytes += length
        else:
            self._drop(self._index.remove(key))

    def _expires(self, ttl):
        return expiry(self._clock(), ttl)

    def _dump(self, key, value):
        if not _plain(value):
            raise EncodeError("value for key %r is not JSON-serialisable" % key)
        return json.dumps(value).encode()

    def _append(self, records, what):
        # The deletions held for want of room go first, in the same write.
        if self._held:
            records = [(DELETE, 0, k, b"", 0) for k, _ in self._held] + records
        return self._log.append(records, what)

    def _write(self, records, what, hold=False):
        try:
            try:
                positions = self._append(records, what)
            except StoreFullError as e:
                # A full medium: the oldest segments that hold nothing live go
                # whole (no room needed), with the records these deletions kill.
                rest = bulk().make_room(self, records, e)
                if rest is None:
                    raise
                records = rest
                positions = self._append(records, what) if records or self._held else []
        except StoreFullError as e:
            if not hold:
                raise
            bulk().hold_deletions(self, records, e)  # deletions: held in RAM
            return
        self._held = []
        n = len(positions) - len(records)
        idx = self._index
        for i in range(len(records)):
            kind, _, key, value, _ = records[i]
            if kind == PUT:
                self._drop(idx.set(key, positions[n + i]))
                self._live_bytes += 16 + len(key) + len(value)
            else:
                self._drop(idx.remove(key))
        self._maybe_compact()

    def _maybe_compact(self):
        if self._log.worth_compacting(self._live_bytes):
            try:
                bulk().compact_store(self)  # not compact(): the damage report stays
            except StoreError:
                pass  # no room to compact into: the store works on, compact() says why

    def _new_key(self):
        # The clock's second and a 16-bit counter. When the counter wraps the
        # key moves on to the next second, not back to a key already made (in
        # this batch, or past the 65536 keys of a stopped clock).
        t = int(self._clock()) & 0xFFFFFFFF
        if t > self._t:
            self._t = t
        while True:
            self._seq = (self._seq + 1) & 0xFFFF
            if not self._seq:
                self._t += 1
            key = "%08x%04x" % (self._t, self._seq)
            if self._index.get(key.encode()) is None:
                return key

    def _find(self, k):
        # The position of the record under key bytes k, or None if there is
        # none or it has expired (then it is forgotten: gone for delete too).
        pos = self._index.get(k)
        if pos is not None:
            expires = self._log.read(pos)[4]
            if expires and expires <= self._clock():
                self._drop(self._index.remove(k))
                self.expired += 1
                return None
        return pos

    # -- the API ----------------------------------------------------------

    def put(self, key, value=_MISSING, ttl=None):
        """``put(key, value, ttl=None)`` or ``put(value, ttl=None)`` (a key is
        made up). Returns the key once the record is on the medium."""
        if value is _MISSING:
            key, value = self._new_key(), key
        k = _key(key)
        self._write([(PUT, 0, k, self._dump(key, value), self._expires(ttl))], "key %r" % key)
        return key

    def get(self, key, default=None):
        """The value under ``key``, or ``default`` if there is none (or it expired)."""
        pos = self._find(_key(key))
        if pos is None:
            return default
        return json.loads(self._log.read(pos)[3])

    def __contains__(self, key):
        return self.get(key, _MISSING) is not _MISSING

    def delete(self, key=None, purge=False):
        """Delete ``key``: True if it was there (an expired key was not).
        ``delete(purge=True)`` deletes everything in one atomic switch and
        returns how many records went, as ``len()`` counts them. On a full
        medium a deletion with no room to be written is held in RAM
        (``stats()["unwritten"]``) until a write finds room or the segment of
        the record is deleted whole: a crash before then brings the key back."""
        if purge:
            n = self._index.count
            try:
                bulk().compact(self._log, ())
            except StoreFullError as e:  # no room to compact into: every segment goes whole
                bulk().drop_all(self, e)
            self._index.clear()
            self._live_bytes = 0
            self._held = []
            return n
        k = _key(key)
        if self._find(k) is None:
            return False
        self._write([(DELETE, 0, k, b"", 0)], "deletion of key %r" % key, True)
        return True

    def put_batch(self, items, ttl=None, ttls=None):
        """Store many values in one write that lands whole or not at all:
        ``items`` is a dict of key -> value, or a list of values (keys are
        made up). ``ttls``: a TTL per item (None: none), in the order of
        ``items``, instead of ``ttl`` for all. Returns the keys."""
        if isinstance(items, dict):  # an OrderedDict too: a board's ordered batch
            pairs = list(items.items())
        else:
            pairs = [(self._new_key(), v) for v in items]
        if ttls is None:
            ttls = [ttl] * len(pairs)
        elif ttl is not None or len(ttls) != len(pairs):
            raise ValueError("ttls wants one TTL per item, and no ttl")
        now = self._clock()
        records = [
            (PUT, 0, _key(pairs[i][0]), self._dump(*pairs[i]), expiry(now, ttls[i]))
            for i in range(len(pairs))
        ]
        if records:
            self._write(records, "batch of %d records" % len(records))
        return [k for k, _ in pairs]

    def get_batch(self, keys, default=None):
        """The values under ``keys``, in order (``default`` where missing)."""
        return [self.get(k, default) for k in keys]

    def delete_batch(self, keys):
        """Delete ``keys`` in one atomic write; return how many were there
        (a key given twice counts once). Held in RAM on a full medium, as
        ``delete``: then no longer atomic across a crash (each key is
        deleted or back)."""
        records = []
        seen = set()
        for key in keys:
            k = _key(key)
            if k not in seen and self._find(k) is not None:
                seen.add(k)
                records.append((DELETE, 0, k, b"", 0))
        if records:
            self._write(records, "deletion of %d keys" % len(records), True)
        return len(records)

    def list(self):
        """Every key, oldest write first."""
        return bulk().list_keys(self)

    def query(self, query=None, limit=None, sort=None, keys=False):
        """The values matching a Mongo-style ``query`` (all when None), in
        write order or by ``sort`` ("field", "-field" or [(field, 1|-1), ...]),
        at most ``limit`` of them. ``keys=True``: (key, value) pairs."""
        return bulk().query(self, query, limit, sort, keys)

    def cleanup(self):
        """Forget expired records now; return how many. (Reads see expiry on
        their own; this frees the index and lets compaction reclaim space.)"""
        n = bulk().forget_expired(self)
        self._maybe_compact()
        return n

    def compact(self):
        """Rewrite the live records into a fresh segment and drop the old ones
        (and ``stats()["damaged"]``, which automatic compactions keep)."""
        bulk().compact_store(self)
        self._log.damage = []

    def stats(self):
        log = self._log
        return {
            "records": self._index.count,
            "live_bytes": self._live_bytes,
            "file_bytes": log.size,
            "garbage_ratio": (log.size - self._live_bytes) / log.size if log.size else 0.0,
            "segments": len(log.nums),
            "compactions": self.compactions,
            "expired": self.expired,
            "damaged": list(log.damage),
            "in_memory": self.path is None,
            "unwritten": len(self._held),
        }

    def __len__(self):
        """The records in the index: one that has expired counts until a read,
        a delete or ``cleanup()`` finds it so (knowing sooner means reading
        every record)."""
        return self._index.count

    def close(self):
        if self._held:
            bulk().flush(self)
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
