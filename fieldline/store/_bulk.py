"""Passes over the whole record log: recovery at open, compaction, and
reading every record in file order (the store's list, query and cleanup);
and the queue's way out of a full medium, deleting whole segments.

Point operations (put, get, delete; append, peek, ack) need only ``_log``,
``_index`` and the ``Store``/``Queue`` classes. These passes run now and
then, so they live here and ``_log.bulk()`` loads them for each pass: on
MicroPython the module is let go after the pass, and a board holds its code
in RAM only while a pass runs.
"""

import os
import struct
from binascii import crc32

from ._errors import CorruptError, QueryError, StoreError, StoreFullError
from ._log import (
    _H,
    _HEADER,
    _MAGIC,
    _MAX_SEGMENT,
    _MAX_SLOTS,
    BASE,
    DEAD,
    DELETE,
    FIRST,
    MORE,
    PUT,
    RAW,
    SEAL,
    _name,
    _write,
    encode,
)

# -- reading in file order ----------------------------------------------------


def _parse(f, off, size):
    # The record at off, checked: (kind, flags, key, value, expires, length),
    # or None if it is torn or damaged; 0 if its header looks whole but says
    # it runs past size (as a torn tail's does).
    if size - off < _H:
        return None
    f.seek(off)
    head = f.read(_H)
    magic, kind, flags, klen, vlen, expires, crc = struct.unpack(_HEADER, head)
    if magic != _MAGIC or not 0 < kind < 5 or klen == 0:
        return None
    if off + _H + klen + vlen > size:
        return 0
    body = f.read(klen + vlen)
    if crc32(body, crc32(head[:12])) & 0xFFFFFFFF != crc:
        return None
    return kind, flags, body[:klen], body[klen:], expires, _H + klen + vlen


def _resync(f, off, size):
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
        if _parse(f, off, size):
            return off


def _ends_at(f, off, nxt):
    # Whether the record at off, its length field damaged, ends at nxt: its
    # CRC checks out with the length that would make it so.
    f.seek(off)
    head = bytearray(f.read(_H))
    n = nxt - off - _H - head[3]
    if n < 0:
        return False
    head[4:8] = struct.pack("<I", n)
    crc = crc32(head[:12])
    n += head[3]
    while n:
        chunk = f.read(min(512, n))
        crc = crc32(chunk, crc)
        n -= len(chunk)
    return crc & 0xFFFFFFFF == struct.unpack("<I", head[12:])[0]


def walk(log, slot, damage=None, end=None):
    """Yield (kind, flags, key, value, expires, pos, length) for each complete
    record in segment ``slot`` of ``log``, in file order, stepping over damage
    (noted in ``damage`` as (offset, length)). It stops at a torn tail, or at
    ``end``; once it is done, ``log.tail`` is where the valid records end and
    ``log.seg_size`` the segment's size."""
    # Its own, buffered file: reads in between may evict the cached readers.
    f = log._open(log.nums[slot], "rb")
    if slot == len(log.nums) - 1 and log._active is not None:
        size = log._end
    else:
        f.seek(0, 2)
        size = f.tell()
    log.seg_size = size
    if end is not None and end < size:
        size = end
    last = slot == len(log.nums) - 1
    try:
        off = 0
        while off < size:
            r = _parse(f, off, size)
            if not r:
                nxt = _resync(f, off, size)
                # In the last segment a whole header that runs past the end
                # is a torn tail: whatever looks like a record after it is in
                # its value, unless it is its length alone that is damaged.
                if r == 0 and last and nxt is not None and not _ends_at(f, off, nxt):
                    nxt = None
                if nxt is None:
                    break  # a torn tail: the write a crash cut short
                if damage is not None:
                    damage.append((off, nxt - off))
                off = nxt
                continue
            yield r[0], r[1], r[2], r[3], r[4], slot << 24 | off, r[5]
            off += r[5]
        log.tail = off
    finally:
        log._close(f)


def records(log):
    """Every complete record of every segment, oldest first (as ``walk``)."""
    for slot in range(len(log.nums)):
        for r in walk(log, slot):
            yield r


# -- recovery at open ---------------------------------------------------------


def _firsts(log):
    # Per segment, its first record (kind, value), or None.
    out = []
    for num in log.nums:
        f = log._open(num, "rb")
        f.seek(0, 2)
        r = _parse(f, 0, f.tell())
        log._close(f)
        out.append((r[0], r[3]) if r else None)
    return out


def _limits(log):
    # Segments deleted whole by drop_acked: the newest .cut file says up to
    # which one, and any left (a drop cut short) go now. A compaction cut
    # short by a crash leaves old segments behind its new one: delete those
    # older than the newest segment that starts with a BASE record, as the
    # compaction would have. Then: per segment, where its valid records end
    # as the next one's SEAL says; a SEAL with no segment before it means
    # that one is lost (damage), unless it was deleted on purpose.
    cuts = sorted(log.cuts)
    if cuts:
        name = log.cut = cuts.pop()
        log.floor = int(name[:8])
        log.mark = int(name[9:-4])
        for n in cuts:
            os.remove(log._file(n))
        for n in log.nums:
            if n <= log.floor:
                log._remove(n)
        log.nums = [n for n in log.nums if n > log.floor]
    firsts = _firsts(log)
    for slot in range(len(firsts) - 1, 0, -1):
        if firsts[slot] is not None and firsts[slot][0] == BASE:
            for n in log.nums[:slot]:
                log._remove(n)
            log.nums = log.nums[slot:]
            firsts = firsts[slot:]
            break
    nums = log.nums
    limits = [None] * len(nums)
    for slot in range(len(nums)):
        r = firsts[slot]
        if r and r[0] == SEAL:
            end = struct.unpack("<I", r[1])[0]
            if slot and nums[slot - 1] == nums[slot] - 1:
                limits[slot - 1] = end
            elif nums[slot] - 1 != log.floor:  # the one it follows is lost, and its records
                log.damage.append((_name(nums[slot] - 1), 0, end))
    return limits


def scan(log, visit, strict=False):
    """Call ``visit(kind, flags, key, pos, length, expires)`` for every
    complete record of ``log``, oldest first, then make the log ready to
    append. A batch whose last record is missing is skipped as a whole.
    ``strict``: raise CorruptError at the end if a segment is damaged."""
    limits = _limits(log)
    last = len(log.nums) - 1
    roll = False
    for slot in range(len(log.nums)):
        damage = []  # type: list
        batch = []  # type: list
        limit = limits[slot]
        nxt = slot << 24  # where the next record starts unless damage is in between
        skip = False
        for r in walk(log, slot, damage, limit):
            if r[5] != nxt:  # damage before it: the batch it cut short is lost,
                batch = []  # and so is the rest of a write whose start it took
                skip = not r[1] & FIRST
            nxt = r[5] + r[6]
            if skip:
                skip = bool(r[1] & MORE)
                continue
            batch.append(r)
            if not r[1] & MORE:
                for kind, flags, key, value, expires, pos, length in batch:
                    if kind < BASE:
                        visit(kind, flags, key, pos, length, expires)
                    elif kind == BASE and len(value) == 4:  # older files: empty
                        log.mark = max(log.mark, struct.unpack("<I", value)[0])
                batch = []
        num = log.nums[slot]
        if limit is not None and log.tail < limit:  # lost at the end, not torn
            damage.append((log.tail, limit - log.tail))
        for off, n in damage:
            log.damage.append((_name(num), off, n))
        end = batch[0][5] & 0xFFFFFF if batch else log.tail
        size = log.seg_size
        log.size += size
        if slot == last:
            log._end = end
            roll = bool(damage)
            if end < size:
                if log._mem is None and hasattr(os, "truncate"):  # CPython
                    os.truncate(log._file(_name(num)), end)
                    log.size -= size - end
                else:  # MicroPython files cannot shrink: append elsewhere
                    roll = True
    # Readers cached while replaying may hold bytes of a torn tail cut off above,
    # or of a last segment that grows from here: read afresh from now on.
    log._drop_readers()
    if log.nums and not roll:
        log._active = log._open(log.nums[-1])
    elif len(log.nums) < _MAX_SLOTS:
        try:
            log._new_segment()
        except OSError as e:
            # A full medium: open all the same, what is stored readable and
            # droppable; each write tries the new segment first (and fails
            # until room is made), never the end that could not be cut off.
            # So too with no segment left but a .cut file: every one went whole.
            if not (log.nums or log.cut) or not _no_room(e):
                raise StoreFullError("no room for a segment to write to", e) from None
            log._stale = True
    d = log.damage
    if strict and d:
        err = CorruptError("damaged segments: %r" % (d,), d)
        err.segments = sorted(set([x[0] for x in d]))
        raise err


# -- compaction -----------------------------------------------------------------


def compact(log, positions, mark=0):
    """Copy the records at ``positions`` (in order) to a new segment, switch
    to it, delete the old ones; return the records' new positions. ``mark``
    (a queue's next sequence number) goes in the new segment's BASE record:
    the records that held it may all be gone."""
    num = log.nums[-1] + 1 if log.nums else log.floor + 1  # none: all went whole
    f = log._open(num, "wb")
    new = []
    try:
        base = encode(BASE, 0, b"-", struct.pack("<I", mark) if mark else b"", 0)
        _write(f, base)
        off = len(base)
        for pos in positions:
            kind, flags, key, value, expires = log.read(pos)
            rec = encode(kind, flags & RAW | FIRST, key, value, expires)
            if off + len(rec) > _MAX_SEGMENT:
                raise StoreError(
                    "the live records exceed 16 MiB, what one compacted segment holds: "
                    "delete some; the old segments are kept"
                )
            _write(f, rec)
            new.append(off)
            off += len(rec)
        log._sync(f)
    except OSError as e:
        _discard(log, num, f)
        raise StoreFullError("compaction not written; the old segments are kept", e) from None
    except StoreError:
        _discard(log, num, f)
        raise
    log._close(f)
    log._commit(num)
    log._drop_readers()
    log._close(log._active)
    old = log.nums
    log.nums = [num]
    log._active = log._open(num)
    log._end = off
    log.size = off
    log.retry = 0
    for n in old:  # a crash here leaves some: the BASE record says to ignore them
        log._remove(n)
    return new


def _drop_front(log, m, mark, what):
    # Delete whole the oldest m segments (needs no room). The commit is an
    # empty file, ``<last segment>.<mark>.cut``, made before any segment goes:
    # a reopen deletes every segment up to it that a crash left, reports none
    # of them lost, and takes ``mark`` as the owner's (a queue's next
    # sequence number). Records after them move m slots down: the caller
    # renumbers its positions.
    nums = log.nums
    name = "%08d.%d.cut" % (nums[m - 1], mark)
    if log._mem is None:
        try:
            open(log._file(name), "wb").close()
            log._sync_dir()
        except OSError as e:
            raise StoreFullError(what + " not written", e) from None
    log._drop_readers()
    if m == len(nums):
        log._close(log._active)
        log._active = None
    for n in nums[:m]:
        f = log._open(n, "rb")
        f.seek(0, 2)
        log.size -= f.tell()
        log._close(f)
        log._remove(n)
    if log.cut is not None:
        try:
            os.remove(log._file(log.cut))
        except OSError:
            pass  # the next open removes it
    log.cut = name
    log.floor = nums[m - 1]
    log.nums = nums[m:]
    if log._active is None:
        try:
            log._new_segment()
        except OSError:
            pass  # the next write tries again


def drop_acked(queue, found):
    """``Queue.ack`` of ``found`` on a full medium, where the acknowledgement
    cannot be written: delete whole the oldest segments that hold no entry
    once ``found`` are gone (all of them if none stays), which needs no room,
    and forget their entries. Returns how many segments went (0: none could).
    A crash midway: see _drop_front."""
    pos = queue._pos
    gone = set(found)
    m = len(queue._log.nums)
    for i in range(queue._head, len(pos)):
        if pos[i] != DEAD and queue._seqs[i] not in gone:
            m = pos[i] >> 24  # entries are in order: none before it stays
            break
    if not m:
        return 0
    _drop_front(queue._log, m, queue._next, "acknowledgement")
    for i in range(queue._head, len(pos)):
        p = pos[i]
        if p != DEAD:
            if p >> 24 < m:
                queue._forget(i)
            else:
                pos[i] = p - (m << 24)
    queue._held = _shift(queue._held, m)
    return m


def _shift(held, m):
    # The held acks or deletions once the oldest m segments went: those of
    # records in them are done (nothing to write), the others move m down.
    return [(k, p - (m << 24)) for k, p in held if p >> 24 >= m]


def hold(queue, found, e):
    """``Queue.ack`` of ``found`` where the acknowledgement could not be
    written (the StoreFullError ``e``, raised again unless it is for want of
    room): forget the entries and hold their acks in RAM, then delete whole
    the oldest segments that hold no entry any more (needs no room; a crash
    midway: see _drop_front) and write the acks still held, in the room that
    made. Held acks are written by the next write that finds room too (they
    go first in its batch), or made moot by a compaction."""
    if not _no_room(e):
        raise e
    for s in found:
        i = queue._find(s)
        queue._held.append((s, queue._pos[i]))
        queue._forget(i)
    try:
        if drop_acked(queue, ()):
            queue._delete(())
    except StoreFullError:
        pass  # held: the next write, or the next ack, tries again


def flush(owner):
    """``close()`` of a Queue or Store with acks or deletions held: write
    them if room came back (files deleted beside it); else they are lost, as
    in a crash, and those entries or keys are back at the next open."""
    log = owner._log
    if not log.closed:
        held = owner._held
        try:
            log.append(
                [
                    (DELETE, 0, k if type(k) is bytes else struct.pack(">I", k), b"", 0)
                    for k, _ in held
                ],
                "%d held deletions" % len(held),
            )
        except StoreError:
            pass


def _no_room(e):
    # The medium is full (ENOSPC, EFBIG, EDQUOT), not broken: deleting
    # segments makes room then, where an I/O error asks for care.
    return e.errno in (28, 27, 122)


def drop_oldest_segment(queue, e):
    """A ``queue``'s append found the medium full (the StoreFullError ``e``):
    delete whole the oldest segments that hold no entry; if there are none,
    and the policy is DROP_OLDEST, forget the entries of its oldest segment
    (counted as dropped) and delete it, with any after it that hold no
    entry. False if none could go, or ``e`` is not for want of room."""
    if not _no_room(e):
        return False
    try:
        if queue._log.size and drop_acked(queue, ()):  # size 0: nothing would go
            return True
    except StoreFullError:
        return False
    old = []
    for i in range(queue._head, len(queue._pos)):
        p = queue._pos[i]
        if p != DEAD and not p >> 24:
            old.append(queue._seqs[i])
    if not old or queue.policy != "drop_oldest":
        return False
    n = queue.count
    if not drop_acked(queue, old):
        return False
    queue.dropped += n - queue.count
    return True


def drop_all(store, e):
    """``Store.delete(purge=True)`` on a full medium, where a compaction has no
    room (the StoreFullError ``e``, raised again if it is not for want of
    room): every segment goes whole. A crash midway: see _drop_front."""
    if not _no_room(e):
        raise e
    log = store._log
    if log.nums:
        _drop_front(log, len(log.nums), 0, "purge")
    store._index.clear()
    store._live_bytes = 0


def _free_front(store):
    # How many of the oldest segments hold no live record: read from the
    # oldest on up to the first live one, forgetting the expired ones on the
    # way. A full store asks at every held deletion, so the answer "none" is
    # kept as the record that blocks (segment number, key, offset, expiry):
    # while that record is live, in the oldest segment, and unexpired, no
    # segment can go and nothing is read.
    log = store._log
    idx = store._index
    now = store._clock()
    b = getattr(store, "_blocker", None)
    if b is not None and log.nums and log.nums[0] == b[0] and idx.live(b[1], b[2]):
        if not (b[3] and b[3] <= now):
            return 0
    for slot in range(len(log.nums)):
        recs = walk(log, slot)
        try:
            for kind, _, key, _, expires, pos, _ in recs:
                if kind == PUT and idx.live(key, pos):
                    if not (expires and expires <= now):
                        store._blocker = (log.nums[slot], key, pos & 0xFFFFFF, expires)
                        return slot
                    store._drop(idx.remove(key))
                    store.expired += 1
        finally:
            recs.close()  # its file, now (see query)
    return len(log.nums)


def make_room(store, records, e):
    """A write of ``records`` to ``store`` found the medium full (the
    StoreFullError ``e``; None is returned if it is not for want of room):
    delete whole the oldest segments that hold no live record once the
    write's deletions are done and the expired records forgotten, which
    needs no room (a deletion whose record went with them is done too).
    Returns the records still to write, or None if no segment could go
    (nothing changed then but expired records forgotten). A crash midway:
    see _drop_front."""
    if not _no_room(e):
        return None
    idx = store._index
    held = []  # (key, position) of the records the write deletes
    for r in records:
        if r[0] == DELETE:
            p = idx.remove(r[2])
            if p is not None:
                held.append((r[2], p))
    m = _free_front(store)
    if m:
        idx.merge()  # the positions in one array, the dead ones out
        ps = idx._ps
        for p in ps:  # what the index says live stays, whatever was read
            if p >> 24 < m:
                m = p >> 24
    if not m:
        for key, p in held:
            idx.set(key, p)
        return None
    done = set()
    live_bytes = store._live_bytes
    for key, p in held:
        if p >> 24 < m:
            store._drop(p)  # read now: it is about to go
            done.add(key)
    try:
        _drop_front(store._log, m, 0, "deletion")
    except StoreFullError:
        # Not even the .cut file fits: nothing went. The keys go back in the
        # index, for the caller to hold their deletions (or report the error).
        store._live_bytes = live_bytes
        for key, p in held:
            idx.set(key, p)
        raise
    store._held = _shift(store._held, m)
    for i in range(len(ps)):
        ps[i] -= m << 24
    for key, p in held:
        if key not in done:
            idx.set(key, p - (m << 24))
    return [r for r in records if r[0] != DELETE or r[2] not in done]


def hold_deletions(store, records, e):
    """``Store.delete`` of ``records`` (DELETE records) where they could not
    be written (the StoreFullError ``e``, raised again unless it is for
    want of room): drop the keys from the index and hold the deletions in
    RAM, then delete whole the oldest segments that hold nothing live any
    more and write the deletions still held, in the room that made. Held
    deletions are written by the next write that finds room too."""
    if not _no_room(e):
        raise e
    for r in records:
        p = store._index.remove(r[2])
        if p is not None:
            store._drop(p)
            store._held.append((r[2], p))
    try:
        if make_room(store, [], e) is not None and store._held:
            store._write([], "held deletions")
    except StoreFullError:
        pass  # held: the next write tries again


def _discard(log, num, f):
    # Closing flushes what the buffer holds, which fails as the writes did (a
    # full disk): that must not escape, nor keep the .tmp file. Automatic
    # compaction waits for a segment more before it tries again: on a full
    # medium each write would otherwise write a doomed .tmp file.
    log.retry = log.size + log.segment_size
    try:
        log._close(f)
    except OSError:
        pass
    if log._mem is not None:
        log._mem.pop(num, None)
    else:
        try:
            os.remove(log._file(_name(num, ".tmp")))
        except OSError:
            pass


# -- the store's passes ----------------------------------------------------------


def live(store):
    """(pos, key, value, expires) of every live record of ``store``, in write
    order: the log read in file order, each record checked against the index."""
    is_live = store._index.live
    for kind, _, key, value, expires, pos, _ in records(store._log):
        if kind == PUT and is_live(key, pos):
            yield pos, key, value, expires


def _unexpired(store):
    # (key, value) of every live, unexpired record.
    now = store._clock()
    for _, key, value, expires in live(store):
        if not (expires and expires <= now):
            yield key, value


def list_keys(store):
    """Every key, oldest write first."""
    return [key.decode() for key, _ in _unexpired(store)]


def query(store, query, limit, sort, keys):
    """``Store.query``: the documents matching ``query``."""
    import json

    from ._query import check, matches, needles, order

    if query is None:
        query = {}
    if isinstance(query, dict) and "$limit" in query:  # the limit, in the query
        query = dict(query)
        n = query.pop("$limit")
        if limit is not None or n is None:
            raise QueryError("$limit wants an int >= 0, and no limit=")
        limit = n
    check(query)
    if limit is not None and (type(limit) is not int or limit < 0):
        raise QueryError("limit must be an int >= 0 or None, not %r" % (limit,))
    need = needles(query)
    out = []  # type: list
    # The count that stops the scan (a limit without a sort), else -1.
    stop = limit if sort is None and limit is not None else -1
    is_live = store._index.live
    now = store._clock()
    log = store._log
    slot = 0
    while slot < len(log.nums) and not (0 <= stop <= len(out)):
        recs = walk(log, slot)
        try:
            for kind, _, key, value, expires, pos, _ in recs:
                if kind != PUT or not is_live(key, pos) or expires and expires <= now:
                    continue
                for n in need:
                    if n not in value:
                        break
                else:
                    doc = json.loads(value)
                    if matches(doc, query):
                        out.append((key.decode(), doc))
                        if 0 <= stop <= len(out):
                            break
        finally:
            # Closes its segment file now: MicroPython never closes a generator
            # it drops (nor the ones it iterates), so the file would stay open
            # until a garbage collection.
            recs.close()
        slot += 1
    if sort is not None:
        out = order(out, sort)
    if limit is not None:
        out = out[:limit]  # 0 is none at all (MongoDB's 0 means no limit: None here)
    return out if keys else [doc for _, doc in out]


def forget_expired(store):
    """Drop expired records from the index; return how many."""
    now = store._clock()
    gone = [key for _, key, _, e in live(store) if e and e <= now]
    for key in gone:
        store._drop(store._index.remove(key))
    store.expired += len(gone)
    return len(gone)


def compact_store(store):
    """``Store.compact``: the live records into a fresh segment."""
    forget_expired(store)
    old = [pos for pos, _, _, _ in live(store)]
    new = compact(store._log, old)
    store._held = []  # the records they delete were not copied
    store._index.relocate(old, new)
    store._live_bytes = store._log.size
    store.compactions += 1


def compact_queue(queue):
    """``Queue.compact``: the entries still queued into a fresh segment."""
    pos = queue._pos
    old = [pos[i] for i in range(queue._head, len(pos)) if pos[i] != DEAD]
    new = compact(queue._log, old, queue._next)
    queue._held = []  # the entries they ack were not copied
    j = 0
    for i in range(queue._head, len(pos)):
        if pos[i] != DEAD:
            pos[i] = new[j]
            j += 1
    queue.compactions += 1
