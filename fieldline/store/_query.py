"""Mongo-style queries over JSON documents: ``check``, ``matches``, ``order``.

``check`` validates a query once, before any record is read, so ``matches``
can trust it and stay small and fast on the board.

Semantics, where they differ from or narrow MongoDB's:

* An absent field is its own value: ``{"f": None}`` matches only a null, not
  an absent ``f``; ``$ne``/``$nin`` are exactly ``not $eq``/``not $in`` and so
  match an absent field.
* Booleans are not numbers: ``{"f": 1}`` does not match ``True``, and
  ``$gt``/``$gte``/``$lt``/``$lte`` compare numbers with numbers and strings
  with strings only; anything else is no match (never a ``TypeError``).
* On a list field, ``$eq``/``$gt``/.../``$in`` match if the list itself or any
  element does (so ``$ne``/``$nin`` need every element to differ).
* Path segments that are digits index lists (``"items.0.name"``); there is no
  implicit walk over a list's elements (``"items.name"`` is absent).
* ``$contains`` takes a scalar: a substring of a string field, or an element
  of a list field. A list or dict operand is refused, as it would read like
  MongoDB's ``$all``/``$elemMatch``, which may come later.
"""

from ._errors import QueryError

_ABSENT = object()  # what a missing path yields; distinct from None
_CMP = ("$gt", "$gte", "$lt", "$lte")
_OPS = ("$eq", "$ne", "$in", "$nin", "$contains", "$exists") + _CMP


def _nops(c):
    # Number of $-keys of a field condition; 0 means "compare to this value".
    if not isinstance(c, dict):
        return 0
    return sum(1 for k in c if isinstance(k, str) and k[:1] == "$")


def _num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _fail(msg, *args):
    raise QueryError(msg % args)


def check(query):
    """Validate ``query``; return None or raise ``QueryError`` naming the
    field and operator at fault."""
    if not isinstance(query, dict):
        _fail("query must be a dict, not %s", type(query).__name__)
    for k, c in query.items():
        if k in ("$and", "$or"):
            if not (isinstance(c, (list, tuple)) and c and all(isinstance(q, dict) for q in c)):
                _fail("%s wants a non-empty list of dicts, not %r", k, c)
            for q in c:
                check(q)
        elif not isinstance(k, str):
            _fail("field path %r is not a str", k)
        elif k[:1] == "$":
            _fail("unknown operator %s", k)
        elif _nops(c):
            if _nops(c) < len(c):
                _fail("condition on %r mixes operators and fields", k)
            for op, a in c.items():
                ok = True
                if op not in _OPS:
                    _fail("unknown operator %s on %r", op, k)
                elif op in ("$in", "$nin"):
                    ok, w = isinstance(a, (list, tuple)), "a list"
                elif op == "$exists":
                    ok, w = isinstance(a, bool), "True or False"
                elif op in _CMP:
                    ok, w = _num(a) or isinstance(a, str), "a number or str"
                elif op == "$contains":
                    ok, w = not isinstance(a, (list, tuple, dict)), "a scalar"
                if not ok:
                    _fail("%s on %r wants %s, not %s", op, k, w, type(a).__name__)


def _get(doc, segs):
    v = doc
    for s in segs:
        if isinstance(v, dict):
            v = v.get(s, _ABSENT)
        elif isinstance(v, list) and s.isdigit():
            try:
                v = v[int(s)]
            except (ValueError, IndexError):  # out of range, or a non-ASCII digit
                return _ABSENT
        else:
            return _ABSENT
    return v


def _eq(a, b):
    # JSON equality: unlike ==, True is not 1; lists equal tuples.
    r = _rank(a)
    if r != _rank(b):
        return False
    if r == 4:
        return len(a) == len(b) and all(k in b and _eq(a[k], b[k]) for k in a)
    if r == 5:
        return len(a) == len(b) and all(_eq(a[i], b[i]) for i in range(len(a)))
    return a == b


def _test(op, v, a):
    # One operator on one value, not on a list's elements.
    if op == "$eq":
        return _eq(v, a)
    if op == "$in":
        return any(_eq(v, x) for x in a)
    if not (_num(v) and _num(a) or isinstance(v, str) and isinstance(a, str)):
        return False
    if op == "$gt":
        return v > a
    if op == "$gte":
        return v >= a
    if op == "$lt":
        return v < a
    return v <= a


def _any(v, op, a):
    # Mongo: a list field matches if it, or any element, does.
    return _test(op, v, a) or isinstance(v, list) and any(_test(op, e, a) for e in v)


def _field(v, c):
    if not _nops(c):
        return _any(v, "$eq", c)
    for op, a in c.items():
        if op == "$exists":
            ok = (v is not _ABSENT) == a
        elif op == "$contains":
            if isinstance(v, str):
                ok = isinstance(a, str) and a in v
            else:
                ok = isinstance(v, list) and any(_eq(e, a) for e in v)
        elif op == "$ne":
            ok = not _any(v, "$eq", a)
        elif op == "$nin":
            ok = not _any(v, "$in", a)
        else:
            ok = _any(v, op, a)
        if not ok:
            return False
    return True


def _match(doc, query):
    for k, c in query.items():
        if k == "$and":
            ok = all(_match(doc, q) for q in c)
        elif k == "$or":
            ok = any(_match(doc, q) for q in c)
        else:
            ok = _field(_get(doc, k.split(".")), c)
        if not ok:
            return False
    return True


def matches(doc, query):
    """Return whether ``doc`` matches ``query`` (already passed ``check``).
    A ``doc`` that is not a dict has no fields: only ``{}`` matches it."""
    if not isinstance(doc, dict):
        return not query
    return _match(doc, query)


def needles(query):
    """Bytes that the JSON of every document matching ``query`` contains:
    the plain ASCII strings it requires by equality, quoted. The store skips
    decoding a record that lacks one; most records of a selective query."""
    out = []
    for k, c in query.items():
        if k == "$and":
            for q in c:
                out.extend(needles(q))
        elif k[:1] != "$":
            if isinstance(c, dict) and _nops(c):
                c = c.get("$eq")
            if isinstance(c, str):
                b = c.encode()
                # Printable ASCII without quote or backslash: JSON writes it as is
                # (not DEL, which CPython's json writes as \u007f).
                if (
                    len(b) == len(c)
                    and b"\\" not in b
                    and b'"' not in b
                    and b"\x7f" not in b
                    and min(b, default=32) >= 32
                ):
                    out.append(b'"' + b + b'"')
    return out


def _rank(x):
    # Type rank, so that any two JSON values order without a TypeError:
    # absent < None < numbers < str < dict < list < bool < anything else.
    if x is _ABSENT:
        return 0
    if x is None:
        return 1
    if isinstance(x, bool):
        return 6
    if _num(x):
        return 2
    if isinstance(x, str):
        return 3
    if isinstance(x, dict):
        return 4
    if isinstance(x, (list, tuple)):
        return 5
    return 7


def _key(x):
    # Sort key: (rank, value), the value made comparable within its rank.
    r = _rank(x)
    if r == 4:
        x = sorted((str(k), _key(v)) for k, v in x.items())
    elif r == 5:
        x = [_key(e) for e in x]
    elif r < 2 or r == 7:
        x = 0
    return (r, x)


def order(items, sort):
    """Return a new list of the ``(key, doc)`` pairs of ``items`` sorted by
    ``sort``: a field path (ascending), ``"-path"`` (descending) or a list of
    ``(path, 1 | -1)`` pairs. Values of different types sort by type rank
    (see ``_rank``); ties keep their input order. Raises ``QueryError`` for a
    bad ``sort``."""
    if isinstance(sort, str):
        sort = [(sort[1:], -1) if sort[:1] == "-" else (sort, 1)]
    ok = isinstance(sort, (list, tuple))
    for p in sort if ok else ():
        ok = ok and isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str)
        ok = ok and p[1] in (1, -1)
    if not ok:
        _fail("bad sort %r: want a path, '-path' or (path, 1 or -1) pairs", sort)
    out = list(items)
    for j in range(len(sort) - 1, -1, -1):  # last key first: one stable pass each
        segs, d = sort[j][0].split("."), sort[j][1]
        # MicroPython's sort is not stable: the index breaks ties, and is
        # negated when descending so that reverse=True keeps it ascending.
        dec = [(_key(_get(p[1], segs)), i * d, p) for i, p in enumerate(out)]
        dec.sort(reverse=d < 0)
        out = [t[2] for t in dec]
    return out
