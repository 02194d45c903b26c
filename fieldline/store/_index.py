"""Key -> record position, in about 8 bytes of RAM a record.

Keys stay on flash: RAM holds two arrays sorted by the key's CRC32 (hash,
position), plus a small dict of the keys written since the last merge. Two
keys with the same hash are told apart by reading the key from the log. A
dict of key strings would cost 40+ bytes a record, too much for a board with
100 KiB of heap.
"""

import sys
from array import array
from binascii import crc32

from ._log import DEAD, bisect_left

# Merge the recent keys into the arrays when they are n/16 of them on a board,
# where RAM is what is short; n/2 on CPython, where RAM is cheap and merges not.
_SHIFT = 4 if sys.implementation.name == "micropython" else 1


def _h(key):
    return crc32(key) & 0xFFFFFFFF


class Index:
    """``read_key(pos)`` returns the key bytes of the record at ``pos``."""

    def __init__(self, read_key):
        self._read_key = read_key
        self._hs = array("I")
        self._ps = array("I")
        self._new = {}  # key bytes -> position, not yet merged
        self._dead = 0  # DEAD slots in the arrays
        self.count = 0

    def _find(self, key):
        # The array slot holding key, or -1.
        h = _h(key)
        hs = self._hs
        i = bisect_left(hs, h)
        ps = self._ps
        while i < len(hs) and hs[i] == h:
            p = ps[i]
            if p != DEAD and self._read_key(p) == key:
                return i
            i += 1
        return -1

    def live(self, key, pos):
        """True if the record at ``pos`` (holding ``key``) is the live one:
        no read from the medium."""
        p = self._new.get(key)
        if p is not None:
            return p == pos
        h = _h(key)
        i = bisect_left(self._hs, h)
        hs = self._hs
        while i < len(hs) and hs[i] == h:
            if self._ps[i] == pos:
                return True
            i += 1
        return False

    def get(self, key):
        p = self._new.get(key)
        if p is not None:
            return p
        i = self._find(key)
        return None if i < 0 else self._ps[i]

    def set(self, key, pos):
        """Point ``key`` at ``pos``; return its previous position or None."""
        new = self._new
        old = new.get(key)
        if old is None:
            i = self._find(key)
            if i >= 0:
                old = self._ps[i]
                self._ps[i] = DEAD
                self._dead += 1
            else:
                self.count += 1
        new[key] = pos
        if len(new) > 16 + (len(self._hs) >> _SHIFT):
            self.merge()
        return old

    def remove(self, key):
        """Forget ``key``; return its position or None."""
        old = self._new.pop(key, None)
        if old is None:
            i = self._find(key)
            if i < 0:
                return None
            old = self._ps[i]
            self._ps[i] = DEAD
            self._dead += 1
        self.count -= 1
        return old

    def merge(self):
        """Fold the recent keys into the sorted arrays (and drop dead slots)."""
        new = sorted([(_h(k), p) for k, p in self._new.items()])
        hs = self._hs
        ps = self._ps
        h2 = array("I", bytearray(4 * self.count))
        p2 = array("I", bytearray(4 * self.count))
        i = j = k = 0
        n = len(hs)
        m = len(new)
        while i < n or j < m:
            if i < n and (j >= m or hs[i] <= new[j][0]):
                if ps[i] != DEAD:
                    h2[k] = hs[i]
                    p2[k] = ps[i]
                    k += 1
                i += 1
            else:
                h2[k], p2[k] = new[j]
                k += 1
                j += 1
        self._hs = h2
        self._ps = p2
        self._new = {}
        self._dead = 0

    def relocate(self, old, new):
        """After a compaction: ``old`` is ``positions()`` as it was, ``new``
        the records' positions in the new segment, in the same order."""
        self.merge()
        ps = self._ps
        for i in range(len(ps)):
            ps[i] = new[bisect_left(old, ps[i])]

    def clear(self):
        self._hs = array("I")
        self._ps = array("I")
        self._new = {}
        self._dead = 0
        self.count = 0
