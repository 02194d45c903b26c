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
    _SEAL,
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

_FROM = 5  # first record of the last segment of a compaction written as several:
# every segment before the one its value names (u32; then the queue's mark, u32)
# is superseded (see compact)

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
    if magic != _MAGIC or not 0 < kind < 6 or klen == 0:
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
    # older than the newest segment that starts with a BASE record (or than
    # the first segment of the newest compaction whose last one starts with
    # a _FROM record), as the compaction would have. Then: per segment, where its valid records end
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
    start = 0  # a compaction written as several segments starts at this one
    for slot in range(len(firsts) - 1, 0, -1):
        r = firsts[slot]
        if r is not None and (r[0] == BASE or r[0] == _FROM):
            if r[0] == _FROM:
                start = struct.unpack("<I", r[1][:4])[0]
                while slot and log.nums[slot - 1] >= start:
                    slot -= 1
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
            elif nums[slot] - 1 != log.floor and nums[slot] != start:
                # the one it follows is lost, and its records
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
                    elif kind == _FROM:
                        log.mark = max(log.mark, struct.unpack("<I", value[4:])[0])
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
            raise StoreFullError("no room for a segment to write to", e) from None
    if log.reserve != 0:  # a Store's (see make_room)
        top_up(log)
    d = log.damage
    if strict and d:
        e = CorruptError("damaged segments: %r" % (d,), d)
        e.segments = sorted(set([x[0] for x in d]))
        raise e


# -- compaction -----------------------------------------------------------------


def _plan(log, positions, per):
    # How many segments the records at positions fill, one starting where
    # the one before holds per bytes of records or more; and their bytes.
    k = 1
    fill = total = 0
    for pos in positions:
        if fill >= per:
            k += 1
            fill = 0
        n = _length(log, pos)
        fill += n
        total += n
    return k, total


def compact(log, positions, mark=0):
    """Copy the records at ``positions`` (in order) to new segments, switch to
    them, delete the old ones; return the records' new positions. ``mark``
    (a queue's next sequence number) goes in the BASE record: the records
    that held it may all be gone.

    The new segments hold about ``segment_size`` of records each, so that
    on a full medium the oldest can move (see make_room); at most 16 of
    them (larger ones then), well below the 32 that call for a compaction.
    One starts with a BASE record. Of several, each but the last starts
    with a SEAL, as a segment appended to the log does (the
    first one's says where the old last segment ends), and the last with a
    _FROM record naming the first: every segment older than that one is
    superseded. They are renamed into place oldest first, so the last
    rename is the switch: before it, the new segments renamed hold copies
    of live records after the old ones, which read as the same."""
    num = log.nums[-1] + 1
    per = log.segment_size
    k, total = _plan(log, positions, per)
    if total + _SEAL > _MAX_SEGMENT:
        log.retry = log.size + log.segment_size
        raise StoreError(
            "the live records exceed 16 MiB, what a compaction holds: "
            "delete some; the old segments are kept"
        )
    if k > 16:
        per = total // 16 + 1
        k = _plan(log, positions, per)[0]
    new = []
    slot = -1
    f = None
    off = fill = written = 0
    try:
        for i in range(len(positions) + 1):
            last = i == len(positions)
            if f is None or not last and fill >= per:
                end = log._end  # where the segment before this one ends
                if f is not None:
                    log._sync(f)
                    log._close(f)
                    f = None
                    end = off
                    written += off
                slot += 1
                if k == 1:
                    head = encode(BASE, 0, b"-", struct.pack("<I", mark) if mark else b"", 0)
                elif slot < k - 1:
                    head = encode(SEAL, 0, b"-", struct.pack("<I", end), 0)
                else:
                    head = encode(_FROM, 0, b"-", struct.pack("<II", num, mark), 0)
                f = log._open(num + slot, "wb")
                _write(f, head)
                off = len(head)
                fill = 0
            if last:
                break
            kind, flags, key, value, expires = log.read(positions[i])
            rec = encode(kind, flags & RAW | FIRST, key, value, expires)
            _write(f, rec)
            new.append(slot << 24 | off)
            off += len(rec)
            fill += len(rec)
        log._sync(f)
        log._close(f)
    except OSError as e:
        _discard(log, num, slot + 1, f)
        raise StoreFullError("compaction not written; the old segments are kept", e) from None
    count = slot + 1
    try:
        for n in range(num, num + count):  # the last rename is the switch
            log._commit(n)
    except OSError as e:
        # Back out, the switch first: the new segments renamed are copies.
        for n in range(num + count - 1, num - 1, -1):
            for suffix in (".seg", ".tmp"):
                try:
                    os.remove(log._file(_name(n, suffix)))
                except OSError:
                    pass
        log.retry = log.size + log.segment_size
        raise StoreFullError("compaction not switched to; the old segments are kept", e) from None
    log._drop_readers()
    log._close(log._active)
    old = log.nums
    log.nums = list(range(num, num + count))
    log._active = log._open(num + count - 1)
    log._end = off
    log.size = written + off
    log.retry = 0
    for n in old:  # a crash here leaves some: the BASE or _FROM record says to ignore them
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
    return m


def _no_room(e):
    # The medium is full (ENOSPC, EFBIG, EDQUOT), not broken: deleting
    # segments makes room then, where an I/O error asks for care.
    return e.errno in (28, 27, 122)


def drop_oldest_segment(queue, e):
    """A DROP_OLDEST ``queue``'s append found the medium full (the
    StoreFullError ``e``): forget the entries of its oldest segment (counted
    as dropped) and delete it, with any after it that hold no entry. False
    if none could go, or ``e`` is not for want of room."""
    if not _no_room(e):
        return False
    old = []
    for i in range(queue._head, len(queue._pos)):
        p = queue._pos[i]
        if p != DEAD and not p >> 24:
            old.append(queue._seqs[i])
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


# -- a full medium: making room -----------------------------------------------------
#
# A Store on a full medium can only free room by deleting whole segments, and
# only the oldest ones: a deletion record in a later segment must outlive the
# records it deleted. When the oldest segment holds live records (a few
# settings written first, say, then the churn of readings that replace each
# other), its live records are moved first: written again at the end of the
# log, as the caller would write them, after which that segment holds nothing
# live and goes, with any after it that hold nothing live either. Segment by
# segment this needs room for one segment's live records, not for all of
# them as a compaction does; the file ``reserve`` keeps that room. Every step
# is one the log already survives a crash in: a move is an ordinary write
# (torn, it is dropped whole at open, and the originals stay; whole, it only
# replaces records by equal copies), and a drop is _drop_front's.

_CHUNK = 2048  # bytes of records moved in one write: a board holds them in RAM


def _reserve_size(log):
    r = log.reserve
    if log._mem is not None:
        return 0
    if r is None:  # a segment and the blocks it straddles, at most 1/8 of the medium
        r = log.segment_size + 4096
        try:
            st = os.statvfs(log.path)
            r = min(r, st[1] * st[2] >> 3)
        except (AttributeError, OSError):
            pass
    elif type(r) is not int or r < 0:
        raise ValueError("reserve must be a number of bytes >= 0, or None")
    return r


def top_up(log):
    """Write the file ``reserve`` in ``log``'s folder up to its size, as far as
    the room allows (a full medium leaves it short until the next pass)."""
    size = _reserve_size(log)
    if not size:
        return
    name = log._file("reserve")
    try:
        have = os.stat(name)[6]
    except OSError:
        have = 0
    if have >= size:
        return
    try:
        f = open(name, "ab")
    except OSError:
        return
    zero = bytes(512)
    try:
        while have < size:
            n = min(512, size - have)
            _write(f, zero[:n])
            have += n
        log._sync(f)
    except OSError:
        pass  # no more room: the part written stays
    try:
        f.close()
    except OSError:
        pass


def _release(log):
    # The room kept for moving records: free it now.
    if log._mem is None:
        try:
            os.remove(log._file("reserve"))
        except OSError:
            pass


def _length(log, pos):
    # The length of the record at pos, from its header alone.
    f = log._seg(pos >> 24)
    f.seek(pos & 0xFFFFFF)
    head = f.read(_H)
    return _H + head[3] + struct.unpack("<I", head[4:8])[0]


def _size(log, slot):
    if slot == len(log.nums) - 1 and log._active is not None:
        return log._end
    f = log._seg(slot)
    f.seek(0, 2)
    return f.tell()


def _free_bytes(log, n):
    # (bytes free on the medium, bytes of the blocks a move of n bytes takes
    # there: see _move), or None if the platform does not say.
    if log._mem is not None:
        return None
    try:
        st = os.statvfs(log.path)
    except (AttributeError, OSError):
        return None
    bs = st[1] or 1
    if log._end + n <= log.segment_size:  # into the last segment, after its last block's slack
        n -= -log._end % bs
    return st[1] * st[4], (n + bs - 1) // bs * bs


def _move(store, olds, n):
    # Write the live records at olds (in file order, n bytes and a SEAL's)
    # again at the end of the log, a few at a time, and point the index at the copies. All of them
    # go to one segment: the last one if they fit it, else a new one, which
    # then takes no more blocks than the segment they come from.
    log = store._log
    idx = store._index
    size = log.segment_size
    if log._end + n > size:
        log._stale = True  # a new segment, and no other after it
        log.segment_size = _MAX_SEGMENT
    try:
        i = 0
        while i < len(olds):
            recs = []
            n = 0
            while i < len(olds) and n < _CHUNK:
                kind, flags, key, value, expires = log.read(olds[i])
                recs.append((kind, flags & RAW, key, value, expires))
                n += _H + len(key) + len(value)
                i += 1
            new = log.append(recs, "records moved to make room")
            for j in range(len(recs)):
                idx.set(recs[j][2], new[j])
    finally:
        log.segment_size = size


def _free(store, held, need):
    # One pass: move and drop the oldest segments until about need bytes and
    # a segment more are free. held: [key, position] of the records the write
    # deletes, out of the index (position DEAD once its segment went). False
    # if no segment holds enough garbage to be worth it (nothing changed).
    log = store._log
    idx = store._index
    idx.merge()
    n = len(log.nums)
    live = [0] * n
    for p in idx._ps:
        live[p >> 24] += _length(log, p)
    # The fewest oldest segments whose garbage is need and a segment more, or
    # else every one up to the last that has garbage, if that is need at
    # least. The last segment is written to: it stays.
    target = need + log.segment_size
    gain = best = 0
    stop = -1
    for slot in range(n - 1):
        g = _size(log, slot) - live[slot]
        gain += g
        if g > _SEAL:
            stop, best = slot, gain
        if gain >= target:
            stop = slot
            break
    if stop < 0 or best < need and gain < target:
        return False
    stop = log.nums[stop]
    released = False
    dropped = False
    try:
        while log.nums and log.nums[0] <= stop:
            idx.merge()
            olds = sorted([p for p in idx._ps if not p >> 24])
            if olds:
                n = _SEAL
                for p in olds:
                    n += _length(log, p)
                room = _free_bytes(log, n)
                if room is not None:
                    have = room[0]
                    if not released:
                        try:
                            have += os.stat(log._file("reserve"))[6]
                        except OSError:
                            pass
                    if n > have:
                        break  # it cannot fit: move nothing, rather than half
                if not released and (room is None or room[1] > room[0]):
                    _release(log)  # (else the reserve need not be written again)
                    released = True
                try:
                    _move(store, olds, n)
                except StoreFullError:
                    if released:
                        raise
                    _release(log)  # the blocks were not as the file system said
                    released = True
                    continue  # the records not moved yet
                idx.merge()
            ps = idx._ps
            m = len(log.nums)
            for p in ps:
                if p >> 24 < m:
                    m = p >> 24
            for h in held:
                if h[1] != DEAD and h[1] >> 24 < m:
                    store._drop(h[1])  # read now: it is about to go
                    h[1] = DEAD
            _drop_front(log, m, 0, "deletion")
            for i in range(len(ps)):
                ps[i] -= m << 24
            for h in held:
                if h[1] != DEAD:
                    h[1] -= m << 24
            dropped = True
    finally:
        if released:
            top_up(log)
    return dropped


def make_room(store, records, what, e):
    """A write of ``records`` to ``store`` found the medium full (the
    StoreFullError ``e``, raised again if it is not for want of room): forget
    the expired records, then free room by deleting whole the oldest
    segments, after writing their live records again at the end of the log
    (records the write deletes are not kept: a deletion whose record went
    with its segment is done), and write. Returns (the records written, their
    positions): those deletions are left out. Raises ``e`` (or the error of
    the last try) when no segment holds enough garbage: the live records and
    the write do not fit. A crash midway: see the comment above."""
    if not _no_room(e):
        raise e
    forget_expired(store)
    idx = store._index
    held = []  # [key, position] of the records the write deletes
    need = _SEAL
    for r in records:
        need += _H + len(r[2]) + len(r[3])
        if r[0] == DELETE:
            p = idx.remove(r[2])
            if p is not None:
                held.append([r[2], p])
    log = store._log
    try:
        for _ in range(len(log.nums) + 2):
            try:
                if not _free(store, held, need):
                    raise e
            except StoreFullError:
                raise e from None  # no room even to move records: the write's error
            done = set([h[0] for h in held if h[1] == DEAD])
            records = [r for r in records if r[0] != DELETE or r[2] not in done]
            if not records:
                return records, []
            try:
                return records, log.append(records, what)
            except StoreFullError as again:
                if not _no_room(again):
                    raise
                e = again
        raise e
    finally:
        for key, p in held:
            if p != DEAD:
                idx.set(key, p)


def _discard(log, num, count, f):
    # Closing flushes what the buffer holds, which fails as the writes did (a
    # full disk): that must not escape, nor keep the .tmp files. Automatic
    # compaction waits for a segment more before it tries again: on a full
    # medium each write would otherwise write doomed .tmp files.
    log.retry = log.size + log.segment_size
    try:
        if f is not None:
            log._close(f)
    except OSError:
        pass
    for n in range(num, num + count):
        if log._mem is not None:
            log._mem.pop(n, None)
        else:
            try:
                os.remove(log._file(_name(n, ".tmp")))
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
    stop = sort is None and limit is not None
    is_live = store._index.live
    now = store._clock()
    log = store._log
    slot = 0
    while slot < len(log.nums) and not (stop and len(out) >= limit):
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
                        if stop and len(out) >= limit:
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
    store._index.relocate(old, new)
    store._live_bytes = store._log.size
    store.compactions += 1


def compact_queue(queue):
    """``Queue.compact``: the entries still queued into a fresh segment."""
    pos = queue._pos
    old = [pos[i] for i in range(queue._head, len(pos)) if pos[i] != DEAD]
    new = compact(queue._log, old, queue._next)
    j = 0
    for i in range(queue._head, len(pos)):
        if pos[i] != DEAD:
            pos[i] = new[j]
            j += 1
    queue.compactions += 1
