"""The offline queue: entries leave only when acknowledged, and survive a
crash, on the same record log as the store.

RAM holds two arrays (sequence number, position) in FIFO order, 8 bytes an
entry; payloads stay on flash. ``put``/``done``/``pending`` make a Queue the
``persistence=`` of ``fieldline.mqtt.Client``: QoS 1/2 messages published
while offline are sent after a restart, even if the process was killed.
"""

import json
import struct
import time
from array import array
from binascii import hexlify, unhexlify

from ._errors import QueueFull, StoreError, StoreFullError
from ._log import DEAD, DELETE, PUT, RAW, Log, bisect_left, bulk, expiry

DROP_OLDEST = "drop_oldest"
REFUSE = "refuse"


def _seq(key):
    return struct.unpack(">I", key)[0]


def _props_out(v):
    # Property values JSON lacks: bytes become {"$b": hex}.
    if type(v) is bytes:
        return {"$b": hexlify(v).decode()}
    if type(v) is dict:
        return {k: _props_out(x) for k, x in v.items()}
    if type(v) is list or type(v) is tuple:
        return [_props_out(x) for x in v]
    return v


def _props_in(v):
    if type(v) is dict:
        if "$b" in v:
            return unhexlify(v["$b"])
        return {k: (_pairs(x) if k == "user_property" else _props_in(x)) for k, x in v.items()}
    return v


def _pairs(v):
    return [tuple(p) for p in v]


class Queue:
    """A persistent FIFO in the folder ``path`` (RAM when None).

    ``max_entries`` / ``max_bytes`` bound it; when full, ``policy``
    DROP_OLDEST drops the oldest entry to make room (counted in
    ``dropped``) and REFUSE raises QueueFull (counted in ``refused``). On a
    full medium an append first deletes whole the oldest segments holding
    only acknowledged entries; then DROP_OLDEST drops the oldest segment's
    entries to make room and REFUSE raises StoreFullError. There an ack with
    no room to be written is held in RAM (see ``ack``).
    ``ttl``: seconds an entry lives unless ``append`` says otherwise
    (None: forever). The other options are the Store's."""

    def __init__(
        self,
        path=None,
        max_entries=1000,
        max_bytes=None,
        policy=DROP_OLDEST,
        ttl=None,
        segment_size=65536,
        compact_ratio=0.5,
        fsync=True,
        clock=time.time,
    ):
        if policy not in (DROP_OLDEST, REFUSE):
            raise ValueError("policy must be DROP_OLDEST or REFUSE")
        if not max_entries > 0 or max_bytes is not None and not max_bytes > 0:
            raise ValueError("max_entries and max_bytes must be above 0")
        expiry(0, ttl)  # a bad ttl fails here, not at every append
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.policy = policy
        self.ttl = ttl
        self._clock = clock
        self._log = Log(path, segment_size, fsync, compact_ratio)
        self._seqs = array("I")
        self._pos = array("I")
        self._head = 0  # entries before it are all gone
        self._lens = {}  # seq -> record length, for the byte bounds
        self._held = []  # [(seq, pos)]: acks a full medium had no room for
        self.count = 0
        self.bytes = 0
        self.dropped = 0
        self.refused = 0
        self.expired = 0
        self.compactions = 0
        self._next = 1
        self._now = clock()
        try:
            bulk().scan(self._log, self._replay)
            # Where a compaction left no record of the numbers used, its BASE
            # record keeps the next one: a number is never handed out twice.
            if self._log.mark > self._next:
                self._next = self._log.mark
            self._trim()
            self._maybe_compact()
        except BaseException:
            self.close()  # and its lock: a retry must not find the folder taken
            raise

    # -- internals --------------------------------------------------------

    def _find(self, seq):
        seqs = self._seqs
        lo = bisect_left(seqs, seq, self._head)
        if lo < len(seqs) and seqs[lo] == seq and self._pos[lo] != DEAD:
            return lo
        return -1

    def _add(self, seq, pos, length):
        i = self._find(seq)
        if i >= 0:  # the same entry again: a compaction was cut short
            self._pos[i] = pos
            return
        self._seqs.append(seq)
        self._pos.append(pos)
        self._lens[seq] = length
        self.count += 1
        self.bytes += length
        if seq >= self._next:
            self._next = seq + 1

    def _forget(self, i):
        seq = self._seqs[i]
        self._pos[i] = DEAD
        self.count -= 1
        self.bytes -= self._lens.pop(seq)

    def _trim(self):
        # Move the head past the entries that are gone; drop them once they
        # are half the arrays.
        seqs = self._seqs
        while self._head < len(seqs) and self._pos[self._head] == DEAD:
            self._head += 1
        if self._head > 32 and self._head * 2 > len(seqs):
            h = self._head
            self._seqs = array("I", seqs[h:])
            self._pos = array("I", self._pos[h:])
            self._head = 0

    def _replay(self, kind, flags, key, pos, length, expires):
        if len(key) != 4:  # no entry: what recovery found in a payload after damage
            return
        seq = _seq(key)
        if kind == PUT and not (expires and expires <= self._now):
            self._add(seq, pos, length)
        else:
            i = self._find(seq)
            if i >= 0:
                self._forget(i)
            if seq >= self._next:
                self._next = seq + 1

    def _maybe_compact(self):
        if self._log.worth_compacting(self.bytes):
            try:
                bulk().compact_queue(self)  # not compact(): the damage report stays
            except StoreError:
                pass

    # -- the API ----------------------------------------------------------

    def append(self, value, ttl=None):
        """Add ``value`` (bytes, bytearray or memoryview: TypeError otherwise)
        at the end; return its sequence number once it is on the medium.
        Raises QueueFull (policy REFUSE) when full, and under either policy
        for an entry larger than ``max_bytes`` alone (20 bytes of it are the
        record's header and sequence number)."""
        if type(value) is not bytes:
            # bytes(5) would be five zero bytes, bytes("x") a TypeError without a reason
            if not isinstance(value, (bytearray, memoryview, bytes)):
                raise TypeError("a queue entry is bytes, not %s" % type(value).__name__)
            value = bytes(value)
        now = self._clock()
        expires = expiry(now, self.ttl if ttl is None else ttl)
        length = 20 + len(value)
        if self.max_bytes and length > self.max_bytes:  # dropping all would not make room
            self.refused += 1
            raise QueueFull("an entry of %d bytes exceeds max_bytes" % length)
        records = []
        drop = []
        n = self.count
        b = self.bytes
        i = self._head
        while (n >= self.max_entries or (self.max_bytes and b + length > self.max_bytes)) and n:
            while self._pos[i] == DEAD:
                i += 1
            seq = self._seqs[i]
            n -= 1
            b -= self._lens[seq]
            e = self._log.read(self._pos[i])[4]
            if e and e <= now:  # expired at the head: it makes room, no drop
                self._forget(i)
                self.expired += 1
            elif self.policy == REFUSE:
                self.refused += 1
                raise QueueFull("queue full: %d entries, %d bytes" % (self.count, self.bytes))
            else:
                drop.append(seq)
                records.append((DELETE, 0, struct.pack(">I", seq), b"", 0))
            i += 1
        seq = self._next
        records.append((PUT, RAW, struct.pack(">I", seq), value, expires))
        try:
            positions = self._append(records, "queue entry %d" % seq)
        except StoreFullError as e:
            # A full medium: the oldest segments holding no entry go whole (no
            # write needed); then DROP_OLDEST makes room there as within its
            # bounds, by deleting the oldest segment whole.
            if not bulk().drop_oldest_segment(self, e):
                raise
            return self.append(value, ttl)
        self._next = seq + 1
        for s in drop:
            self._forget(self._find(s))
            self.dropped += 1
        self._add(seq, positions[-1], length)
        self._trim()
        self._maybe_compact()
        return seq

    def peek(self, n=1):
        """Up to ``n`` entries, oldest first, as (seq, value); they stay
        until ``ack``ed. Expired entries are skipped and forgotten."""
        out = []  # type: list
        now = self._clock()
        i = self._head
        while len(out) < n and i < len(self._pos):
            pos = self._pos[i]
            if pos != DEAD:
                _, _, key, value, expires = self._log.read(pos)
                if expires and expires <= now:
                    self._forget(i)
                    self.expired += 1
                else:
                    out.append((_seq(key), value))
            i += 1
        self._trim()
        return out

    def ack(self, seqs):
        """Remove the entries ``seqs`` (one or a list), in one write; return
        how many were there (a number given twice counts once). On a full
        medium, an acknowledgement with no room to be written is held in RAM
        (``stats()["unwritten"]``) until a write finds room or its segment,
        acknowledged whole, is deleted: a crash before then brings the entry
        back. StoreFullError only for an I/O error, removing nothing."""
        if type(seqs) is int:
            seqs = (seqs,)
        found = []
        for s in sorted(set(seqs)):
            if self._find(s) >= 0:
                found.append(s)
        if found:
            try:
                self._delete(found)
            except StoreFullError as e:
                bulk().hold(self, found, e)  # a full medium: see _bulk.hold
            self._trim()
            self._maybe_compact()
        return len(found)

    def _append(self, records, what):
        # The acks held for want of room go first, in the same write.
        held = self._held
        if held:
            records = [(DELETE, 0, struct.pack(">I", s), b"", 0) for s, _ in held] + records
        positions = self._log.append(records, what)
        self._held = []
        return positions

    def _delete(self, seqs):
        if seqs or self._held:
            self._append(
                [(DELETE, 0, struct.pack(">I", s), b"", 0) for s in seqs],
                "acknowledgement of %d entries" % len(seqs),
            )
            for s in seqs:
                self._forget(self._find(s))

    def compact(self):
        """Rewrite the entries still queued into a fresh segment (and drop
        ``stats()["damaged"]``, which automatic compactions keep)."""
        bulk().compact_queue(self)
        self._log.damage = []

    def __len__(self):
        return self.count

    def stats(self):
        log = self._log
        return {
            "entries": self.count,
            "bytes": self.bytes,
            "dropped": self.dropped,
            "refused": self.refused,
            "expired": self.expired,
            "file_bytes": log.size,
            "segments": len(log.nums),
            "compactions": self.compactions,
            "damaged": list(log.damage),
            "unwritten": len(self._held),
        }

    def close(self):
        if self._held:
            bulk().flush(self)
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the clients' persistence= contract -----------------------------

    def put(self, topic, payload, qos, retain, properties, packet_id=None):
        head = json.dumps([topic, qos, retain, _props_out(properties), packet_id]).encode()
        return self.append(head + b"\n" + bytes(payload))

    def done(self, key):
        self.ack(key)

    def released(self, key):
        # The QoS 2 message ``key`` was released (its PUBREC came): written
        # again, so marked, at the end, in one write with the removal of the
        # old entry; returns its new key (the old one if it is gone, or if
        # a full medium leaves no room to note it).
        i = self._find(key)
        if i < 0:
            return key
        _, _, _, value, expires = self._log.read(self._pos[i])
        n = value.find(b"\n")
        h = (json.loads(value[:n]) + [None])[:5] + [1]
        value = json.dumps(h).encode() + value[n:]
        seq = self._next
        records = [
            (DELETE, 0, struct.pack(">I", key), b"", 0),
            (PUT, RAW, struct.pack(">I", seq), value, expires),
        ]
        try:
            positions = self._append(records, "release of queue entry %d" % key)
        except StoreFullError as e:
            # No room to note it: not noted, as the client does with an
            # OSError (which this is not on MicroPython). After a restart the
            # message goes again: a duplicate, never a loss.
            if not bulk()._no_room(e):
                raise
            return key
        self._next = seq + 1
        self._forget(i)
        self._add(seq, positions[-1], 20 + len(value))
        self._trim()
        self._maybe_compact()
        return seq

    def pending(self):
        out = []  # type: list
        for seq, value in self.peek(self.count):
            i = value.find(b"\n")
            # [topic, qos, retain, props, packet id, 1 once released]; older
            # records lack the last two
            h = json.loads(value[:i]) + [None, None]
            m = (h[0], value[i + 1 :], h[1], h[2], _props_in(h[3]), h[4], h[5] == 1)
            out.append((seq, m))
        return out
