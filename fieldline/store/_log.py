"""The record log under the store and the queue.

Records are appended to segment files and never rewritten in place, so a
power cut can only damage the record being written. Each record carries its
length and a CRC32; at open every complete record is kept and a torn tail is
skipped. Compaction copies the live records to a new segment and switches to
it with one rename, so a crash at any point leaves either the old segments or
the new one whole. Hand-written because the device target has neither SQLite
nor a journaling key-value store.

Record layout, little-endian (16-byte header, then key, then value)::

    0 u8  magic 0xF1      4 u32 value length
    1 u8  kind            8 u32 expiry, seconds since the clock's epoch (0 = never)
    2 u8  flags          12 u32 CRC32 of bytes 0-11, key and value
    3 u8  key length

Flags: MORE, the next record belongs to the same write (a batch); RAW, the
value is bytes, not JSON; FIRST, the record starts a write (a single record,
a batch's first, every record a compaction copies). A power cut can keep a
later page of a batch and lose an earlier one: after damage, recovery skips
records up to one with FIRST, so the rest of a torn batch is never applied.
Files written before FIRST existed have it nowhere; they read as before
unless damaged, where the write after the damage is skipped.

A position is ``slot << 24 | offset``: the segment's index in ``nums`` and the
record's byte offset in it (segments stay under 16 MiB).

This module holds what every put, get and append needs. The passes over the
whole log (recovery at open, compaction, reading in file order) are in
``_bulk``, which ``bulk()`` loads for each pass.
"""

import os
import struct
from binascii import crc32

from .. import _use
from ._errors import StoreError, StoreFullError

PUT = 1
DELETE = 2
BASE = 3  # first record of a compacted segment: every older segment is superseded
# (its value: empty, or a queue's next sequence number, u32 little-endian)
SEAL = 4  # first record of any other segment but the first: where the one before ends

MORE = 1  # flag: the next record belongs to the same batch
RAW = 2  # flag: the value is bytes, not JSON
FIRST = 4  # flag: the first record of a write

DEAD = 0xFFFFFFFF  # a position that points nowhere

_MAGIC = 0xF1
_HEADER = "<BBBBIII"
_H = 16
_MAX_SEGMENT = 1 << 24
_MAX_SLOTS = 255
_READERS = 3  # segment files kept open for reading
_SEAL = _H + 1 + 4  # bytes of a SEAL record


def expiry(now, ttl):
    """The expiry field for ``ttl`` seconds after ``now``: whole seconds, rounded
    up, at most the field's largest value (the year 2106); 0 (never) for None.
    Raises ValueError unless ``ttl`` is a positive number."""
    if ttl is None:
        return 0
    if not ttl > 0:
        raise ValueError("ttl must be a positive number of seconds")
    t = now + ttl
    if t >= DEAD:
        return DEAD
    e = int(t)
    return e + 1 if e < t else e


def encode(kind, flags, key, value, expires):
    """One record as bytes."""
    head = struct.pack("<BBBBII", _MAGIC, kind, flags, len(key), len(value), expires)
    crc = crc32(value, crc32(key, crc32(head))) & 0xFFFFFFFF
    return head + struct.pack("<I", crc) + key + value


try:
    from bisect import bisect_left  # CPython: the search in C
except ImportError:  # MicroPython has no bisect

    def bisect_left(a, x, lo=0):  # type: ignore[no-redef]
        """The first index at or after ``lo`` whose item is >= ``x`` in the
        sorted sequence ``a`` (the index, the queue and compaction search)."""
        hi = len(a)
        while lo < hi:
            mid = (lo + hi) >> 1
            if a[mid] < x:
                lo = mid + 1
            else:
                hi = mid
        return lo


_BULK = __name__[: __name__.rfind(".")] + "._bulk"


def bulk():
    """The module of whole-log passes, ``_bulk``, loaded for one pass (on
    MicroPython it is let go after it: see ``fieldline._use``)."""
    return _use(_BULK)


def _write(f, data):
    # All of data, or the OSError that stopped it (a short write is retried,
    # so the error is the file system's own: ENOSPC, EFBIG, EIO).
    n = f.write(data)
    while n < len(data):
        k = f.write(memoryview(data)[n:])
        if not k:
            raise OSError(28, "no space left")
        n += k


def _lock(path):
    # Two processes appending to one folder would write over each other's
    # records: hold an exclusive lock while open (CPython; a board runs one
    # program). Returns the lock file, or None.
    try:
        import fcntl
    except ImportError:
        return None
    f = open(path + "/lock", "a")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise StoreError("%s is open in another process or Store" % path) from None
    return f


def _name(num, suffix=".seg"):
    return "%08d%s" % (num, suffix)


class Log:
    """Append-only segments in the folder ``path``, or in RAM when ``path`` is
    None (same format, nothing survives a restart). ``ratio``: the share of
    garbage at which ``worth_compacting`` says yes (the owner's compact_ratio,
    checked here for the Store and the Queue alike)."""

    closed = False
    retry = 0  # no automatic compaction before the log is this big (one failed)
    mark = 0  # the owner's number found at open (a queue's next sequence number)
    floor = 0  # segments up to this number were deleted whole, on purpose
    cut = None  # the file that says so (see _bulk.drop_acked)

    def __init__(self, path=None, segment_size=65536, fsync=True, ratio=0.5):
        if not 256 <= segment_size <= _MAX_SEGMENT:
            raise ValueError("segment_size must be 256 bytes to 16 MiB")
        if not 0 < ratio < 1:
            raise ValueError("compact_ratio must be between 0 and 1")
        self.ratio = ratio
        if path is not None and type(path) is not str:
            path = str(path)  # a pathlib.Path, say
        self.path = path
        self.segment_size = segment_size
        self.fsync = fsync
        self._mem = {} if path is None else None  # type: dict | None
        self.nums = []  # segment numbers, oldest first; slot = index
        self.size = 0  # bytes in all segments, garbage included
        self.damage = []  # (segment file, offset, length) of damaged regions skipped at open
        self._end = 0  # where the next record goes in the active (last) segment
        self._active = None
        self._readers = []  # [(slot, file)], most recently used last
        self._last = None  # (pos, record): the record read last
        self._lock = None
        self._stale = False  # a failed write could not be cut off: write elsewhere
        self.cuts = []  # names of the files saying segments were deleted whole
        if path is not None:
            try:
                os.mkdir(path)
            except OSError:
                pass
            self._lock = _lock(path)
            try:
                for name in os.listdir(path):
                    if name.endswith(".tmp"):  # a compaction that did not finish
                        os.remove(self._file(name))
                    elif name.endswith(".seg"):
                        self.nums.append(int(name[:-4]))
                    elif name.endswith(".cut"):
                        self.cuts.append(name)
            except BaseException:
                self.close()
                raise
            self.nums.sort()

    # -- files or RAM -----------------------------------------------------

    def _file(self, name):
        return self.path + "/" + name

    def _open(self, num, mode="r+b"):
        # Every file opens here: once closed (and the lock let go), a write
        # would go behind the back of whoever opened the folder next.
        if self.closed:
            raise StoreError("closed")
        if self._mem is not None:
            if mode == "wb":
                from io import BytesIO

                self._mem[num] = BytesIO()
            return self._mem[num]
        name = self._file(_name(num, ".tmp" if mode == "wb" else ".seg"))
        # The segment written to is unbuffered: a write that fails must not
        # linger in a buffer and reach the file later, somewhere else.
        return open(name, mode, 0) if mode == "r+b" else open(name, mode)

    def _close(self, f):
        if self._mem is None and f is not None:  # None: no segment to write to
            f.close()

    def _sync(self, f):
        f.flush()
        if self.fsync and self._mem is None and hasattr(os, "fsync"):
            os.fsync(f.fileno())

    def _remove(self, num):
        if self._mem is not None:
            del self._mem[num]
        else:
            os.remove(self._file(_name(num)))

    def _commit(self, num):
        # The switch: the new segment becomes real in one rename.
        if self._mem is not None:
            return
        os.rename(self._file(_name(num, ".tmp")), self._file(_name(num)))
        self._sync_dir()

    def _sync_dir(self):
        if self.fsync and hasattr(os, "O_DIRECTORY"):  # CPython: make a rename durable
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _new_segment(self):
        # It starts with a SEAL holding where the valid records of the segment
        # before end: a reopen reads nothing past that (what a failed write
        # left where files cannot shrink) and reports anything missing before
        # it as damage, rather than as a torn tail.
        num = self.nums[-1] + 1 if self.nums else self.floor + 1
        seal = encode(SEAL, 0, b"-", struct.pack("<I", self._end), 0) if self.nums else b""
        f = self._open(num, "wb")
        try:
            try:
                _write(f, seal)
                self._sync(f)
            finally:
                self._close(f)  # a board has few file handles: none may leak
            self._commit(num)
        except OSError:
            # A full medium, most likely: the .tmp file would hold a block of
            # it until the next open.
            if self._mem is None:
                try:
                    os.remove(self._file(_name(num, ".tmp")))
                except OSError:
                    pass
            raise
        self.nums.append(num)
        if self._active is not None:
            self._close(self._active)
        self._active = self._open(num)
        self._end = len(seal)
        self.size += len(seal)
        self._stale = False

    def _drop_readers(self):
        for _, f in self._readers:
            self._close(f)
        self._readers = []
        self._last = None

    def _seg(self, slot):
        if slot == len(self.nums) - 1 and self._active is not None:
            return self._active
        rs = self._readers
        for i in range(len(rs)):
            if rs[i][0] == slot:
                return rs[i][1]
        if len(rs) >= _READERS:
            self._close(rs.pop(0)[1])
        f = self._open(self.nums[slot], "rb")
        rs.append((slot, f))
        return f

    # -- reading ----------------------------------------------------------

    def read(self, pos):
        """The record at ``pos``: (kind, flags, key, value, expires)."""
        last = self._last
        if last is not None and last[0] == pos:
            return last[1]
        f = self._seg(pos >> 24)
        f.seek(pos & 0xFFFFFF)
        _, kind, flags, klen, vlen, expires, _ = struct.unpack(_HEADER, f.read(_H))
        body = f.read(klen + vlen)
        rec = (kind, flags, body[:klen], body[klen:], expires)
        self._last = (pos, rec)
        return rec

    def worth_compacting(self, live):
        """Whether to compact now, with ``live`` bytes of records in use: past 32
        segments, or when the rest is ``ratio`` of the bytes on the medium.
        Never when the live records would not fit one segment (16 MiB)."""
        if live + _SEAL > _MAX_SEGMENT or self.size < self.retry:
            return False
        size = self.size
        return len(self.nums) > 32 or (
            size > self.segment_size and size - live >= self.ratio * size
        )

    # -- writing ----------------------------------------------------------

    def append(self, records, what):
        """Write ``records`` ((kind, flags, key, value, expires), ...) as one
        batch with one sync; return their positions. ``what`` names them in
        the StoreFullError raised if the write fails."""
        parts = []
        n = len(records)
        for i in range(n):
            kind, flags, key, value, expires = records[i]
            if len(key) > 255:
                raise StoreError("key longer than 255 bytes: %r" % key[:32])
            flags |= (MORE if i < n - 1 else 0) | (0 if i else FIRST)
            parts.append(encode(kind, flags, key, value, expires))
        data = b"".join(parts)
        roll = self._end >= self.segment_size or self._active is None or self._stale
        if not roll and self._end + len(data) > _MAX_SEGMENT:
            roll = True  # it fits a segment of its own
        if roll and _SEAL + len(data) > _MAX_SEGMENT:
            raise StoreError("a batch of %d bytes does not fit a segment" % len(data))
        if roll and len(self.nums) >= _MAX_SLOTS:
            raise StoreError("too many segments; compact() the store")
        off = (_SEAL if self.nums else 0) if roll else self._end
        slot = len(self.nums) if roll else len(self.nums) - 1
        positions = []
        for rec in parts:
            positions.append(slot << 24 | off)
            off += len(rec)
        try:
            if roll:
                self._new_segment()
            f = self._active
            assert f is not None
            f.seek(self._end)
            _write(f, data)
            self._sync(f)
        except OSError as e:
            self._undo()
            raise StoreFullError("not written: " + what, e) from None
        self.size += len(data)
        self._end = off
        return positions

    def _undo(self):
        # Whatever part of a failed write reached the file must never be read
        # back: cut it off, or (where files cannot shrink) write elsewhere
        # from now on, leaving it as an unfinished batch at a segment's end.
        try:
            self._active.truncate(self._end)  # type: ignore[union-attr]
        except Exception:
            self._stale = True
            # And move on now, not at the next write: the new segment's SEAL says
            # where the valid records end, so a restart before any other write
            # does not replay what the caller was told was not written.
            if len(self.nums) < _MAX_SLOTS:
                try:
                    self._new_segment()
                except OSError:
                    pass  # no room even for that: the next write tries again

    def close(self):
        self.closed = True
        self._drop_readers()
        if self._active is not None:
            self._close(self._active)
            self._active = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None
