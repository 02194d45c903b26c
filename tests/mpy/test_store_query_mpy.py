"""fieldline.store._query on MicroPython: plain test_* functions using assert only."""

from mpytest import raises

from fieldline.store._errors import QueryError
from fieldline.store._query import check, matches, order

DOC = {
    "n": 5,
    "f": 2.5,
    "s": "hello world",
    "t": True,
    "z": None,
    "tags": ["red", "green", 3],
    "nums": [1, 7, 12],
    "a": {"b": {"c": 1}},
    "items": [{"name": "x", "qty": 2}, {"name": "y", "qty": 0}],
}

# (query, expected) against DOC
CASES = (  # type: tuple
    ({}, True),
    ({"n": 5}, True),
    ({"n": 5.0}, True),
    ({"n": "5"}, False),
    ({"t": 1}, False),
    ({"n": True}, False),
    ({"z": None}, True),
    ({"missing": None}, False),
    ({"a": {"b": {"c": 1}}}, True),
    ({"a": {"b": {"c": True}}}, False),
    ({"tags": "red"}, True),
    ({"tags": ["red", "green", 3]}, True),
    ({"tags": "blue"}, False),
    ({"a.b.c": 1}, True),
    ({"items.0.name": "x"}, True),
    ({"items.1.qty": 0}, True),
    ({"items.2.name": {"$exists": True}}, False),
    ({"items.-1.name": {"$exists": True}}, False),
    ({"items.name": {"$exists": True}}, False),
    ({"n.x": {"$exists": False}}, True),
    ({"n": {"$eq": 5}}, True),
    ({"n": {"$ne": 5}}, False),
    ({"tags": {"$ne": "red"}}, False),
    ({"missing": {"$ne": 1}}, True),
    ({"n": {"$gt": 4}}, True),
    ({"n": {"$gt": 5}}, False),
    ({"n": {"$gte": 5}}, True),
    ({"n": {"$lt": 5}}, False),
    ({"n": {"$lte": 5}}, True),
    ({"f": {"$gt": 2, "$lt": 3}}, True),
    ({"f": {"$gt": 2, "$lt": 2.5}}, False),
    ({"s": {"$gt": "hello"}}, True),
    ({"nums": {"$gt": 10}}, True),
    ({"nums": {"$gt": 12}}, False),
    ({"n": {"$gt": "4"}}, False),
    ({"s": {"$lt": 1}}, False),
    ({"z": {"$lt": 1}}, False),
    ({"t": {"$gt": 0}}, False),
    ({"missing": {"$gt": 0}}, False),
    ({"n": {"$in": [1, 5]}}, True),
    ({"n": {"$in": (1, 2)}}, False),
    ({"tags": {"$in": ["blue", "green"]}}, True),
    ({"t": {"$in": [1]}}, False),
    ({"n": {"$nin": [1, 2]}}, True),
    ({"n": {"$nin": [5]}}, False),
    ({"missing": {"$nin": [1]}}, True),
    ({"s": {"$contains": "lo wo"}}, True),
    ({"s": {"$contains": "xyz"}}, False),
    ({"tags": {"$contains": "red"}}, True),
    ({"tags": {"$contains": "re"}}, False),
    ({"n": {"$contains": 5}}, False),
    ({"z": {"$exists": True}}, True),
    ({"missing": {"$exists": False}}, True),
    ({"missing": {"$exists": True}}, False),
    ({"$and": [{"n": 5}, {"s": {"$contains": "hello"}}]}, True),
    ({"$and": [{"n": 5}, {"s": "x"}]}, False),
    ({"$or": [{"n": 1}, {"s": {"$contains": "world"}}]}, True),
    ({"$or": [{"n": 1}, {"s": "x"}]}, False),
    ({"$or": [{"n": 1}, {"$and": [{"t": True}, {"a.b.c": 1}]}]}, True),
    ({"$or": [{"n": 1}, {"$and": [{"t": True}, {"a.b.c": 2}]}]}, False),
    ({"n": 6, "$or": [{"f": 1}, {"f": 2.5}]}, False),
)


def test_matches():
    for query, want in CASES:
        check(query)
        assert matches(DOC, query) is want, (query, want)


def test_non_dict_doc():
    for doc in (None, 0, 1.5, "s", True, [1, 2]):
        assert matches(doc, {}) is True
        qs = ({"a": 1}, {"a": {"$exists": False}}, {"a": {"$ne": 1}}, {"$or": [{}]})  # type: tuple
        for q in qs:
            assert matches(doc, q) is False, (doc, q)


BAD = (  # type: tuple
    (None, "query must be a dict, not NoneType"),
    ([1], "query must be a dict, not list"),
    ({"$where": "x"}, "unknown operator $where"),
    ({"a": {"$regex": "x"}}, "unknown operator $regex on 'a'"),
    ({"a": {"$in": 3}}, "$in on 'a' wants a list, not int"),
    ({"a": {"$nin": "ab"}}, "$nin on 'a' wants a list, not str"),
    ({"$and": []}, "$and wants a non-empty list of dicts"),
    ({"$or": [{"a": 1}, 2]}, "$or wants a non-empty list of dicts"),
    ({"a": {"$exists": 1}}, "$exists on 'a' wants True or False, not int"),
    ({"a": {"$gt": None}}, "$gt on 'a' wants a number or str, not NoneType"),
    ({"a": {"$contains": [1]}}, "$contains on 'a' wants a scalar, not list"),
    ({"a": {"$gt": 1, "b": 2}}, "condition on 'a' mixes operators and fields"),
    ({"$or": [{"$and": [{"b": {"$foo": 1}}]}]}, "unknown operator $foo on 'b'"),
)


def test_invalid_queries():
    for query, message in BAD:
        e = raises(QueryError, check, query)
        assert message in str(e), (query, str(e))


def _keys(pairs):
    return [k for k, _ in pairs]


ITEMS = [
    ("k0", {"n": 3, "s": "b"}),
    ("k1", {"n": 1, "s": "a"}),
    ("k2", {"n": 2, "s": "b"}),
    ("k3", {"n": 1, "s": "b"}),
    ("k4", {"n": 3, "s": "a"}),
]


def test_order_keys_and_directions():
    assert _keys(order(ITEMS, "n")) == ["k1", "k3", "k2", "k0", "k4"]
    assert _keys(order(ITEMS, "-n")) == ["k0", "k4", "k2", "k1", "k3"]
    assert _keys(order(ITEMS, "-s")) == ["k0", "k2", "k3", "k1", "k4"]
    assert _keys(order(ITEMS, [("n", 1), ("s", 1)])) == ["k1", "k3", "k2", "k4", "k0"]
    assert _keys(order(ITEMS, [("n", 1), ("s", -1)])) == ["k3", "k1", "k2", "k0", "k4"]
    assert _keys(order(ITEMS, [("n", -1), ("s", 1)])) == ["k4", "k0", "k2", "k1", "k3"]
    assert _keys(order(ITEMS, [("n", -1), ("s", -1)])) == ["k0", "k4", "k2", "k3", "k1"]
    assert _keys(order(ITEMS, [])) == _keys(ITEMS)


def test_order_mixed_types():
    values = [[1], "b", {"k": 1}, None, 2, True, 1.5, "a", False, {"j": 9}, [0, 5]]
    items = [(i, {"v": v}) for i, v in enumerate(values)] + [(99, {}), (100, 7)]
    got = [d["v"] if isinstance(d, dict) and "v" in d else "-" for _, d in order(items, "v")]
    want = ["-", "-", None, 1.5, 2, "a", "b", {"j": 9}, {"k": 1}, [0, 5], [1], False, True]
    assert got == want, got
    assert _keys(order(items, "-v"))[-2:] == [99, 100]


def test_order_is_stable():
    # Many ties, so an unstable sort (MicroPython's) would show.
    items = [(i, {"g": i % 3, "h": "x"}) for i in range(60)]
    asc = [i for g in range(3) for i in range(60) if i % 3 == g]
    desc = [i for g in (2, 1, 0) for i in range(60) if i % 3 == g]
    assert _keys(order(items, "g")) == asc
    assert _keys(order(items, "-g")) == desc
    assert _keys(order(items, [("h", -1), ("g", -1)])) == desc
    assert _keys(order(items, "-h")) == list(range(60))


def test_order_bad_sort():
    for sort in (None, {"n": 1}, [("n", 2)], ["n"], ("n", 1)):
        e = raises(QueryError, order, ITEMS, sort)
        assert "bad sort" in str(e), sort
