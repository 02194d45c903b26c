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

A position is ``slot << 24 | offset``: the segment's index in ``nums`` and the
record's byte offset in it (segments stay under 16 MiB).
"""

import os
import struct
from binascii import crc32

from ._errors import StoreError, StoreFullError

PUT = 1
DELETE = 2

MORE = 1  # flag: the next record belongs to the same batch
RAW = 2  # flag: the value is bytes, not JSON

DEAD = 0xFFFFFFFF  # a position that points nowhere

_MAGIC = 0xF1
_HEADER = "<BBBBIII"
_H = 16
_MAX_SEGMENT = 1 << 24
_MAX_SLOTS = 255


def encode(kind, flags, key, value, expires):
    """One record as bytes."""
    head = struct.pack("<BBBBII", _MAGIC, kind, flags, len(key), len(value), expires)
    crc = crc32(value, crc32(key, crc32(head))) & 0xFFFFFFFF
    return head + struct.pack("<I", crc) + key + value


def _name(num, suffix=".seg"):
    return "%08d%s" % (num, suffix)


class Log:
    """Append-only segments in the folder ``path``, or in RAM when ``path`` is
    None (same format, nothing survives a restart)."""

    def __init__(self, path=None, segment_size=65536, fsync=True):
        if not 256 <= segment_size <= _MAX_SEGMENT:
            raise ValueError("segment_size must be 256 bytes to 16 MiB")
        self.path = path
        self.segment_size = segment_size
        self.fsync = fsync
        self._mem = {} if path is None else None  # type: dict | None
        self.nums = []  # segment numbers, oldest first; slot = index
        self.size = 0  # bytes in all segments, garbage included
        self.damage = []  # (segment file, offset, length) of damaged regions skipped at open
        self._end = 0  # where the next record goes in the active (last) segment
        self._active = None
        self._reader = None  # (slot, file): the last segment read from
        if path is not None:
            try:
                os.mkdir(path)
            except OSError:
                pass
            for name in os.listdir(path):
                if name.endswith(".tmp"):  # a compaction that did not finish
                    os.remove(self._file(name))
                elif name.endswith(".seg"):
                    self.nums.append(int(name[:-4]))
            self.nums.sort()

    # -- files or RAM -----------------------------------------------------

    def _file(self, name):
        return self.path + "/" + name

    def _open(self, num, mode="r+b"):
        if self._mem is not None:
            if mode == "wb":
                from io import BytesIO

                self._mem[num] = BytesIO()
            return self._mem[num]
        return open(self._file(_name(num, ".tmp" if mode == "wb" else ".seg")), mode)

    def _close(self, f):
        if self._mem is None:
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
        if self.fsync and hasattr(os, "O_DIRECTORY"):  # CPython: make the rename durable
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _new_segment(self):
        num = self.nums[-1] + 1 if self.nums else 1
        f = self._open(num, "wb")
        self._sync(f)
        self._close(f)
        self._commit(num)
        self.nums.append(num)
        if self._active is not None:
            self._close(self._active)
        self._active = self._open(num)
        self._end = 0
        self._drop_reader()

    def _drop_reader(self):
        if self._reader is not None:
            if self._reader[1] is not self._active:
                self._close(self._reader[1])
            self._reader = None

    def _seg(self, slot):
        if slot == len(self.nums) - 1 and self._active is not None:
            return self._active
        r = self._reader
        if r is None or r[0] != slot:
            self._drop_reader()
            self._reader = r = (slot, self._open(self.nums[slot], "rb"))
        return r[1]

    # -- reading ----------------------------------------------------------

    def _parse(self, f, off, size):
        # The record at off, checked: (kind, flags, key, value, expires, length),
        # or None if it is torn or damaged.
        if size - off < _H:
            return None
        f.seek(off)
        head = f.read(_H)
        magic, kind, flags, klen, vlen, expires, crc = struct.unpack(_HEADER, head)
        if magic != _MAGIC or not 0 < kind < 3 or klen == 0 or off + _H + klen + vlen > size:
            return None
        key = f.read(klen)
        value = f.read(vlen)
        if crc32(value, crc32(key, crc32(head[:12]))) & 0xFFFFFFFF != crc:
            return None
        return kind, flags, key, value, expires, _H + klen + vlen

    def _resync(self, f, off, size):
        # The offset of the next valid record after damage at off, or None.
        while True:
            off += 1
            f.seek(off)
            chunk = f.read(min(512, size - off))
            if not chunk:
                return None
            i = chunk.find(b"\xf1")
            if i < 0:
                off += len(chunk) - 1
                continue
            off += i
            if self._parse(f, off, size) is not None:
                return off

    def read(self, pos):
        """The record at ``pos``: (kind, flags, key, value, expires)."""
        f = self._seg(pos >> 24)
        f.seek(pos & 0xFFFFFF)
        head = f.read(_H)
        _, kind, flags, klen, vlen, expires, _ = struct.unpack(_HEADER, head)
        key = f.read(klen)
        return kind, flags, key, f.read(vlen), expires

    def head(self, pos):
        """The key, total length and expiry of the record at ``pos``."""
        f = self._seg(pos >> 24)
        f.seek(pos & 0xFFFFFF)
        head = f.read(_H)
        _, _, _, klen, vlen, expires, _ = struct.unpack(_HEADER, head)
        return f.read(klen), _H + klen + vlen, expires

    def scan(self, visit):
        """Call ``visit(kind, flags, key, pos, length, expires)`` for every
        complete record, oldest first, then make the log ready to append.
        A batch whose last record is missing is skipped as a whole."""
        last = len(self.nums) - 1
        roll = False
        for slot in range(len(self.nums)):
            num = self.nums[slot]
            f = self._open(num, "rb")
            f.seek(0, 2)
            size = f.tell()
            self.size += size
            off = 0
            batch = []  # type: list
            while off < size:
                r = self._parse(f, off, size)
                if r is None:
                    nxt = self._resync(f, off, size)
                    if nxt is None:
                        break  # a torn tail: the write a crash cut short
                    self.damage.append((_name(num), off, nxt - off))
                    roll = roll or slot == last
                    batch = []
                    off = nxt
                    continue
                batch.append((r[0], r[1], r[2], slot << 24 | off, r[5], r[4]))
                off += r[5]
                if not r[1] & MORE:
                    for rec in batch:
                        visit(*rec)
                    batch = []
            if batch:  # an unfinished batch is part of the torn tail
                off = batch[0][3] & 0xFFFFFF
            if slot == last:
                self._end = off
                if off < size:
                    if hasattr(f, "truncate"):
                        self._close(f)
                        f = self._open(num)
                        f.truncate(off)
                        self._sync(f)
                        self.size -= size - off
                    else:  # MicroPython files cannot shrink: append elsewhere
                        roll = True
            self._close(f)
        if self.nums and not roll:
            self._active = self._open(self.nums[-1])
        elif len(self.nums) < _MAX_SLOTS:
            self._new_segment()

    # -- writing ----------------------------------------------------------

    def append(self, records, what):
        """Write ``records`` ((kind, flags, key, value, expires), ...) as one
        batch with one sync; return their positions. ``what`` names them in
        the StoreFullError raised if the write fails."""
        if self._end >= self.segment_size or self._active is None:
            if len(self.nums) >= _MAX_SLOTS:
                raise StoreError("too many segments; compact() the store")
            self._new_segment()
        parts = []
        positions = []
        off = self._end
        n = len(records)
        for i in range(n):
            kind, flags, key, value, expires = records[i]
            if len(key) > 255:
                raise StoreError("key longer than 255 bytes: %r" % key[:32])
            rec = encode(kind, flags | (MORE if i < n - 1 else 0), key, value, expires)
            positions.append((len(self.nums) - 1) << 24 | off)
            parts.append(rec)
            off += len(rec)
        if off > _MAX_SEGMENT:
            raise StoreError("a batch of %d bytes does not fit a segment" % (off - self._end))
        data = b"".join(parts)
        f = self._active
        assert f is not None
        try:
            f.seek(self._end)
            if f.write(data) != len(data):
                raise OSError(28, "short write")
            self._sync(f)
        except OSError as e:
            # Whatever part of it reached the file lies past _end: the next
            # write covers it, and a reopen sees it as a torn tail.
            raise StoreFullError("not written: " + what, e) from None
        self.size += len(data)
        self._end = off
        return positions

    def compact(self, positions):
        """Copy the records at ``positions`` (in order) to a new segment, switch
        to it, delete the old ones; return the records' new positions."""
        num = self.nums[-1] + 1
        f = self._open(num, "wb")
        new = []
        off = 0
        try:
            for pos in positions:
                kind, flags, key, value, expires = self.read(pos)
                rec = encode(kind, flags & RAW, key, value, expires)
                if f.write(rec) != len(rec):
                    raise OSError(28, "short write")
                new.append(off)
                off += len(rec)
            self._sync(f)
        except OSError as e:
            self._close(f)
            self._discard(num)
            raise StoreFullError("compaction not written; the old segments are kept", e) from None
        self._close(f)
        self._commit(num)
        self._drop_reader()
        self._close(self._active)
        old = self.nums
        self.nums = [num]
        self._active = self._open(num)
        self._end = off
        self.size = off
        self.damage = []
        for n in old:  # oldest first, so a crash here leaves a replayable prefix
            self._remove(n)
        return new

    def _discard(self, num):
        if self._mem is not None:
            self._mem.pop(num, None)
        else:
            try:
                os.remove(self._file(_name(num, ".tmp")))
            except OSError:
                pass

    def close(self):
        self._drop_reader()
        if self._active is not None:
            self._close(self._active)
            self._active = None
