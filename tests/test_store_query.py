"""Tests for fieldline.store._query: check, matches and order."""

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldline.store import Store
from fieldline.store._errors import QueryError, StoreError
from fieldline.store._query import check, matches, needles, order

DOC: dict[str, Any] = {
    "n": 5,
    "f": 2.5,
    "s": "hello world",
    "t": True,
    "z": None,
    "tags": ["red", "green", 3],
    "nums": [1, 7, 12],
    "a": {"b": {"c": 1}},
    "items": [{"name": "x", "qty": 2}, {"name": "y", "qty": 0}],
    "grid": [[1, 2], [3, 4]],
}


def m(query: dict[str, Any], doc: Any = DOC) -> bool:
    """``matches`` after ``check``, as the store calls them."""
    check(query)
    return matches(doc, query)


# -- equality ---------------------------------------------------------------


@pytest.mark.parametrize(
    "query, expected",
    [
        ({}, True),
        ({"n": 5}, True),
        ({"n": 5.0}, True),  # 5 == 5.0, as in JSON
        ({"n": 6}, False),
        ({"n": "5"}, False),
        ({"s": "hello world"}, True),
        ({"t": True}, True),
        ({"t": 1}, False),  # a bool is not a number
        ({"n": True}, False),
        ({"z": None}, True),
        ({"missing": None}, False),  # absent is not null
        ({"a": {"b": {"c": 1}}}, True),  # exact dict equality
        ({"a": {"b": {"c": 1, "d": 2}}}, False),
        ({"a": {"b": {}}}, False),
        ({"a": {"b": {"c": True}}}, False),  # nested bool is not 1 either
        ({"tags": "red"}, True),  # any element equals (Mongo)
        ({"tags": 3}, True),
        ({"tags": "blue"}, False),
        ({"tags": ["red", "green", 3]}, True),  # the whole list
        ({"tags": ["green", "red", 3]}, False),
        ({"grid": [3, 4]}, True),  # an element that is a list
        ({"n": 5, "s": "hello world"}, True),
        ({"n": 5, "s": "nope"}, False),
    ],
)
def test_equality(query: dict[str, Any], expected: bool) -> None:
    assert m(query) is expected


# -- paths --------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, expected",
    [
        ({"a.b.c": 1}, True),
        ({"a.b": {"c": 1}}, True),
        ({"a.b.c": 2}, False),
        ({"items.0.name": "x"}, True),
        ({"items.1.qty": 0}, True),
        ({"items.1.name": "x"}, False),
        ({"grid.1.0": 3}, True),
        ({"nums.2": 12}, True),
        ({"items.2.name": {"$exists": True}}, False),  # out of range
        ({"items.-1.name": {"$exists": True}}, False),  # no negative indexes
        ({"items.name": {"$exists": True}}, False),  # no implicit walk over lists
        ({"n.x": {"$exists": True}}, False),  # through a scalar
        ({"a.x.c": {"$exists": True}}, False),
        ({"a.b.c.d": {"$exists": False}}, True),
        ({"s.0": {"$exists": False}}, True),  # strings are not indexed
    ],
)
def test_paths(query: dict[str, Any], expected: bool) -> None:
    assert m(query) is expected


def test_digit_key_in_a_dict_is_a_key() -> None:
    doc = {"a": {"0": "zero"}}
    assert m({"a.0": "zero"}, doc)
    assert not m({"a.1": {"$exists": True}}, doc)


def test_non_ascii_digit_segment_is_absent() -> None:
    # "²".isdigit() is True on CPython but int("²") fails.
    assert m({"nums.\u00b2": {"$exists": False}})


# -- operators ----------------------------------------------------------------


@pytest.mark.parametrize(
    "query, expected",
    [
        ({"n": {"$eq": 5}}, True),
        ({"n": {"$eq": 4}}, False),
        ({"a": {"$eq": {"b": {"c": 1}}}}, True),
        ({"tags": {"$eq": "green"}}, True),
        ({"n": {"$ne": 4}}, True),
        ({"n": {"$ne": 5}}, False),
        ({"tags": {"$ne": "red"}}, False),  # an element equals
        ({"tags": {"$ne": "blue"}}, True),
        ({"missing": {"$ne": 1}}, True),  # absent fields match $ne (Mongo)
        ({"n": {"$gt": 4}}, True),
        ({"n": {"$gt": 5}}, False),
        ({"n": {"$gte": 5}}, True),
        ({"n": {"$gte": 5.5}}, False),
        ({"n": {"$lt": 6}}, True),
        ({"n": {"$lt": 5}}, False),
        ({"n": {"$lte": 5}}, True),
        ({"n": {"$lte": 4.99}}, False),
        ({"f": {"$gt": 2, "$lt": 3}}, True),  # several operators are ANDed
        ({"f": {"$gt": 2, "$lt": 2.5}}, False),
        ({"s": {"$gt": "hello"}}, True),  # strings compare with strings
        ({"s": {"$lt": "a"}}, False),
        ({"nums": {"$gt": 10}}, True),  # any element
        ({"nums": {"$gt": 12}}, False),
        ({"nums": {"$lt": 1}}, False),
        ({"n": {"$in": [1, 5]}}, True),
        ({"n": {"$in": (1, 5)}}, True),
        ({"n": {"$in": [1, 2]}}, False),
        ({"n": {"$in": []}}, False),
        ({"tags": {"$in": ["blue", "green"]}}, True),
        ({"a.b": {"$in": [{"c": 1}]}}, True),
        ({"t": {"$in": [1]}}, False),
        ({"z": {"$in": [None]}}, True),
        ({"missing": {"$in": [None]}}, False),
        ({"n": {"$nin": [1, 2]}}, True),
        ({"n": {"$nin": [5]}}, False),
        ({"tags": {"$nin": ["green"]}}, False),
        ({"missing": {"$nin": [1]}}, True),  # absent fields match $nin (Mongo)
        ({"s": {"$contains": "lo wo"}}, True),
        ({"s": {"$contains": "xyz"}}, False),
        ({"s": {"$contains": ""}}, True),
        ({"s": {"$contains": 1}}, False),
        ({"tags": {"$contains": "red"}}, True),
        ({"tags": {"$contains": "re"}}, False),  # element, not substring of one
        ({"tags": {"$contains": 3}}, True),
        ({"tags": {"$contains": True}}, False),
        ({"n": {"$contains": 5}}, False),
        ({"a": {"$contains": "b"}}, False),  # not for dicts
        ({"missing": {"$contains": "a"}}, False),
        ({"z": {"$exists": True}}, True),  # null exists
        ({"z": {"$exists": False}}, False),
        ({"missing": {"$exists": False}}, True),
        ({"missing": {"$exists": True}}, False),
        ({"n": {"$exists": True, "$gt": 1, "$nin": [2, 3]}}, True),
        ({"n": {"$exists": True, "$gt": 1, "$nin": [5]}}, False),
    ],
)
def test_operators(query: dict[str, Any], expected: bool) -> None:
    assert m(query) is expected


@pytest.mark.parametrize("op", ["$gt", "$gte", "$lt", "$lte"])
@pytest.mark.parametrize(
    "field, operand",
    [
        ("n", "5"),  # number vs str
        ("s", 1),  # str vs number
        ("z", 0),  # None vs number
        ("t", 0),  # bool vs number: True > 0 is no match
        ("t", 1),
        ("a", 0),  # dict vs number
        ("tags", 0),  # list of str (3 is an element, checked separately)
        ("missing", 0),
    ],
)
def test_type_mismatch_is_no_match(op: str, field: str, operand: Any) -> None:
    if field == "tags":
        doc: dict[str, Any] = {"tags": ["a", None, True, {"x": 1}]}
    else:
        doc = DOC
    assert not m({field: {op: operand}}, doc)


def test_bool_field_against_number_never_matches() -> None:
    for op in ("$gt", "$gte", "$lt", "$lte"):
        for b in (True, False):
            for x in (-1, 0, 1, 2, 0.5):
                assert not m({"b": {op: x}}, {"b": b}), (op, b, x)


# -- $and / $or -----------------------------------------------------------------


@pytest.mark.parametrize(
    "query, expected",
    [
        ({"$and": [{"n": 5}, {"s": {"$contains": "hello"}}]}, True),
        ({"$and": [{"n": 5}, {"s": "x"}]}, False),
        ({"$or": [{"n": 1}, {"s": {"$contains": "world"}}]}, True),
        ({"$or": [{"n": 1}, {"s": "x"}]}, False),
        ({"$or": [{}]}, True),
        ({"$and": [{}]}, True),
        ({"$or": [{"n": 1}, {"$and": [{"t": True}, {"a.b.c": 1}]}]}, True),
        ({"$or": [{"n": 1}, {"$and": [{"t": True}, {"a.b.c": 2}]}]}, False),
        ({"$and": [{"$or": [{"n": 1}, {"n": 5}]}, {"$or": [{"z": None}, {"q": 1}]}]}, True),
        ({"$and": [{"$or": [{"n": 1}, {"n": 5}]}, {"$or": [{"z": 0}, {"q": 1}]}]}, False),
        ({"n": 5, "$or": [{"f": 1}, {"f": 2.5}]}, True),  # with a field at top level
        ({"n": 6, "$or": [{"f": 1}, {"f": 2.5}]}, False),
        ({"$and": ({"n": 5},)}, True),  # a tuple is a list
    ],
)
def test_and_or(query: dict[str, Any], expected: bool) -> None:
    assert m(query) is expected


# -- documents that are not dicts -------------------------------------------------


@pytest.mark.parametrize("doc", [None, 0, 1.5, "s", True, [1, 2], [{"a": 1}]])
def test_non_dict_doc(doc: Any) -> None:
    assert m({}, doc)
    assert not m({"a": 1}, doc)
    assert not m({"a": {"$exists": False}}, doc)
    assert not m({"a": {"$ne": 1}}, doc)
    assert not m({"0": {"$exists": True}}, doc)
    assert not m({"$or": [{}]}, doc)


# -- invalid queries ----------------------------------------------------------------


@pytest.mark.parametrize(
    "query, message",
    [
        (None, "query must be a dict, not NoneType"),
        ([{"a": 1}], "query must be a dict, not list"),
        ("a", "query must be a dict, not str"),
        ({"$where": "x"}, "unknown operator $where"),
        ({"$nor": [{"a": 1}]}, "unknown operator $nor"),
        ({"a": {"$regex": "x"}}, "unknown operator $regex on 'a'"),
        ({"a": {"$gt": 1, "$size": 2}}, "unknown operator $size on 'a'"),
        ({"a": {"$in": 3}}, "$in on 'a' wants a list, not int"),
        ({"a": {"$in": "ab"}}, "$in on 'a' wants a list, not str"),
        ({"a": {"$nin": {"x": 1}}}, "$nin on 'a' wants a list, not dict"),
        ({"a": {"$nin": None}}, "$nin on 'a' wants a list, not NoneType"),
        ({"$and": []}, "$and wants a non-empty list of dicts, not []"),
        ({"$or": []}, "$or wants a non-empty list of dicts, not []"),
        ({"$or": {"a": 1}}, "$or wants a non-empty list of dicts"),
        ({"$and": [{"a": 1}, 2]}, "$and wants a non-empty list of dicts, not [{'a': 1}, 2]"),
        ({"$or": "a"}, "$or wants a non-empty list of dicts"),
        ({"a": {"$exists": 1}}, "$exists on 'a' wants True or False, not int"),
        ({"a": {"$exists": "yes"}}, "$exists on 'a' wants True or False, not str"),
        ({"a": {"$gt": None}}, "$gt on 'a' wants a number or str, not NoneType"),
        ({"a": {"$lte": True}}, "$lte on 'a' wants a number or str, not bool"),
        ({"a": {"$lt": [1]}}, "$lt on 'a' wants a number or str, not list"),
        ({"a": {"$contains": ["x"]}}, "$contains on 'a' wants a scalar, not list"),
        ({"a": {"$contains": {"x": 1}}}, "$contains on 'a' wants a scalar, not dict"),
        ({"a": {"$gt": 1, "b": 2}}, "condition on 'a' mixes operators and fields"),
        ({"a": {"b": 2, "$gt": 1}}, "condition on 'a' mixes operators and fields"),
        ({1: 2}, "field path 1 is not a str"),
        # errors deep inside are found too
        ({"$or": [{"a": 1}, {"$and": [{"b": {"$foo": 1}}]}]}, "unknown operator $foo on 'b'"),
        ({"x": 1, "$or": [{"a": {"$in": 1}}]}, "$in on 'a' wants a list, not int"),
    ],
)
def test_invalid_query(query: Any, message: str) -> None:
    with pytest.raises(QueryError) as info:
        check(query)
    assert message in str(info.value)
    assert isinstance(info.value, StoreError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "query",
    [
        {"a": {}},  # equality with an empty dict
        {"a": {"b": {"$gt": 1}}},  # a nested dict value, compared as it is
        {"a": {"$eq": {"$gt": 1}}},  # an $eq operand is a value
        {"a": {"$in": [[1], {"b": 2}, None]}},
        {"a": {"$contains": None}},
        {"a": {"$gt": "m", "$lt": 3}},
        {"a.b.0": {"$exists": False}},
        {"$and": [{}], "$or": [{}]},
    ],
)
def test_valid_query(query: dict[str, Any]) -> None:
    assert check(query) is None


def test_nested_dict_value_with_dollar_keys_is_literal() -> None:
    assert m({"a": {"b": {"$gt": 1}}}, {"a": {"b": {"$gt": 1}}})
    assert not m({"a": {"b": {"$gt": 1}}}, {"a": {"b": 2}})


# -- order -------------------------------------------------------------------------


def keys(pairs: list[tuple[Any, Any]]) -> list[Any]:
    return [k for k, _ in pairs]


ITEMS: list[tuple[str, Any]] = [
    ("k0", {"n": 3, "s": "b"}),
    ("k1", {"n": 1, "s": "a"}),
    ("k2", {"n": 2, "s": "b"}),
    ("k3", {"n": 1, "s": "b"}),
    ("k4", {"n": 3, "s": "a"}),
]


def test_order_ascending_and_descending() -> None:
    assert keys(order(ITEMS, "n")) == ["k1", "k3", "k2", "k0", "k4"]
    assert keys(order(ITEMS, "-n")) == ["k0", "k4", "k2", "k1", "k3"]
    assert keys(order(ITEMS, [("n", 1)])) == ["k1", "k3", "k2", "k0", "k4"]
    assert keys(order(ITEMS, [("n", -1)])) == ["k0", "k4", "k2", "k1", "k3"]
    assert keys(order(ITEMS, "-s")) == ["k0", "k2", "k3", "k1", "k4"]


def test_order_multi_key() -> None:
    assert keys(order(ITEMS, [("n", 1), ("s", 1)])) == ["k1", "k3", "k2", "k4", "k0"]
    assert keys(order(ITEMS, [("n", 1), ("s", -1)])) == ["k3", "k1", "k2", "k0", "k4"]
    assert keys(order(ITEMS, [("n", -1), ("s", 1)])) == ["k4", "k0", "k2", "k1", "k3"]
    assert keys(order(ITEMS, [("n", -1), ("s", -1)])) == ["k0", "k4", "k2", "k3", "k1"]
    assert keys(order(ITEMS, (["s", -1], ["n", -1]))) == ["k0", "k2", "k3", "k4", "k1"]


def test_order_returns_a_new_list_and_takes_any_iterable() -> None:
    before = list(ITEMS)
    out = order(iter(ITEMS), "n")
    assert ITEMS == before
    assert sorted(out) == sorted(ITEMS)
    assert order([], "n") == []
    assert order(ITEMS, []) == ITEMS  # no key: input order


def test_order_mixed_types_by_rank() -> None:
    values: list[Any] = [[1], "b", {"k": 1}, None, 2, True, 1.5, "a", False, {"j": 9}, [0, 5]]
    items: list[tuple[int, Any]] = [(i, {"v": v}) for i, v in enumerate(values)]
    items.append((99, {}))  # absent
    items.append((100, 7))  # not a dict: every field is absent
    got = [d["v"] if isinstance(d, dict) and "v" in d else "<absent>" for _, d in order(items, "v")]
    want = ["<absent>", "<absent>", None, 1.5, 2, "a", "b", {"j": 9}, {"k": 1}, [0, 5], [1]]
    assert got == [*want, False, True]
    got = [
        d["v"] if isinstance(d, dict) and "v" in d else "<absent>" for _, d in order(items, "-v")
    ]
    assert got == [True, False, *reversed(want[2:]), "<absent>", "<absent>"]
    assert keys(order(items, "-v"))[-2:] == [99, 100]  # ties keep input order


def test_order_is_stable() -> None:
    items = [(i, {"g": i % 3, "h": "x"}) for i in range(30)]
    assert keys(order(items, "g")) == [i for g in range(3) for i in range(30) if i % 3 == g]
    assert keys(order(items, "-g")) == [i for g in (2, 1, 0) for i in range(30) if i % 3 == g]
    assert keys(order(items, [("h", -1), ("g", -1)])) == keys(order(items, "-g"))
    assert keys(order(items, "h")) == list(range(30))
    assert keys(order(items, "-h")) == list(range(30))
    assert keys(order(items, "nothing")) == list(range(30))


def test_order_dotted_paths_and_list_indexes() -> None:
    items = [
        ("a", {"p": {"q": [5, "z"]}}),
        ("b", {"p": {"q": [2, "y"]}}),
        ("c", {"p": {"q": [9]}}),
        ("d", {"p": 1}),
    ]
    assert keys(order(items, "p.q.0")) == ["d", "b", "a", "c"]
    assert keys(order(items, "-p.q.1")) == ["a", "b", "c", "d"]


def test_order_equal_numbers_of_both_kinds_are_ties() -> None:
    items = [("a", {"v": 1.0}), ("b", {"v": 1}), ("c", {"v": 0.5})]
    assert keys(order(items, "v")) == ["c", "a", "b"]
    assert keys(order(items, "-v")) == ["a", "b", "c"]


@pytest.mark.parametrize(
    "sort",
    [None, 1, {"n": 1}, [("n", 2)], [("n", 0)], [("n",)], [(1, 1)], ["n"], [("n", 1, 2)], ("n", 1)],
)
def test_order_bad_sort(sort: Any) -> None:
    with pytest.raises(QueryError, match="bad sort"):
        order(ITEMS, sort)


# -- properties ----------------------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(-3, 3, allow_nan=False)
    | st.sampled_from(["", "a", "b", "ab", "ba"])
)
FIELDS = st.sampled_from(["a", "b", "c"])
JSON = st.recursive(
    SCALARS,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(FIELDS, kids, max_size=3),
    max_leaves=8,
)
DOCS = st.dictionaries(FIELDS, JSON, max_size=3) | JSON
PATHS = st.sampled_from(["a", "b", "c", "a.b", "a.0", "b.1.a", "c.c"])
ORDERED = st.integers(-3, 3) | st.floats(-3, 3, allow_nan=False) | st.sampled_from(["a", "b"])
SCALAR_OPS = st.sampled_from(["$eq", "$ne", "$contains"])
CONDITIONS = (
    JSON
    | st.builds(lambda op, v: {op: v}, SCALAR_OPS, SCALARS)
    | st.builds(lambda op, v: {op: v}, st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), ORDERED)
    | st.builds(lambda op, v: {op: v}, st.sampled_from(["$in", "$nin"]), st.lists(JSON, max_size=3))
    | st.builds(lambda v: {"$exists": v}, st.booleans())
)
LEAF_QUERIES = st.dictionaries(PATHS, CONDITIONS, max_size=2)
QUERIES = st.recursive(
    LEAF_QUERIES,
    lambda kids: st.builds(
        lambda op, qs: {op: qs},
        st.sampled_from(["$and", "$or"]),
        st.lists(kids, min_size=1, max_size=3),
    ),
    max_leaves=6,
)


@settings(max_examples=400)
@given(DOCS, QUERIES, QUERIES)
def test_or_and_are_any_and_all(doc: Any, q1: dict[str, Any], q2: dict[str, Any]) -> None:
    check(q1)
    check(q2)
    a, b = matches(doc, q1), matches(doc, q2)
    assert isinstance(a, bool)
    if isinstance(doc, dict):
        assert matches(doc, {"$or": [q1, q2]}) == (a or b)
        assert matches(doc, {"$and": [q1, q2]}) == (a and b)
    else:
        assert a == (q1 == {})


@settings(max_examples=400)
@given(DOCS, PATHS, st.lists(JSON, max_size=3))
def test_nin_is_not_in(doc: Any, path: str, values: list[Any]) -> None:
    if not isinstance(doc, dict):
        doc = {"a": doc}
    assert m({path: {"$nin": values}}, doc) == (not m({path: {"$in": values}}, doc))


@settings(max_examples=400)
@given(DOCS, PATHS, JSON)
def test_ne_is_not_eq_and_in_is_any_eq(doc: Any, path: str, value: Any) -> None:
    if not isinstance(doc, dict):
        doc = {"a": doc}
    eq = m({path: value}, doc)
    assert m({path: {"$eq": value}}, doc) == eq
    assert m({path: {"$ne": value}}, doc) == (not eq)
    assert m({path: {"$in": [value]}}, doc) == eq


def rank(v: Any) -> int:
    """The documented order of types, written out independently of _query."""
    if isinstance(v, bool):
        return 6
    if v is None:
        return 1
    if isinstance(v, int | float):
        return 2
    if isinstance(v, str):
        return 3
    return 4 if isinstance(v, dict) else 5


@settings(max_examples=300)
@given(
    st.lists(st.dictionaries(st.sampled_from(["x", "y"]), SCALARS, max_size=2), max_size=12),
    st.sampled_from([1, -1]),
    st.sampled_from([1, -1]),
)
def test_order_property(docs: list[dict[str, Any]], dx: int, dy: int) -> None:
    items = list(enumerate(docs))
    out = order(items, [("x", dx), ("y", dy)])
    assert sorted(out) == items

    def k(pair: tuple[int, dict[str, Any]]) -> tuple[tuple[int, Any], ...]:
        d = pair[1]
        return tuple(
            (rank(d[f]), d[f] if rank(d[f]) > 1 else 0) if f in d else (0, 0) for f in ("x", "y")
        )

    for p, q in zip(out, out[1:], strict=False):
        (xp, yp), (xq, yq) = k(p), k(q)
        if xp != xq:
            assert (xp < xq) == (dx == 1), (p, q)
        elif yp != yq:
            assert (yp < yq) == (dy == 1), (p, q)
        else:
            assert p[0] < q[0], (p, q)  # stable


@settings(max_examples=600)
@given(DOCS, QUERIES)
def test_needles_never_reject_a_match(doc: Any, q: dict[str, Any]) -> None:
    """The store skips a record whose JSON lacks a needle: sound only if every
    matching document's JSON holds them all."""
    check(q)
    if matches(doc, q):
        raw = json.dumps(doc).encode()
        for n in needles(q):
            assert n in raw, (n, raw)


def test_needles_come_from_plain_string_equalities() -> None:
    q = {"s": "temp", "n": 5, "m": {"$eq": "x"}, "$and": [{"a.b": "deep"}], "$or": [{"o": "no"}]}
    assert sorted(needles(q)) == [b'"deep"', b'"temp"', b'"x"']
    assert needles({"s": 'quo"te'}) == [] and needles({"s": "caf\u00e9"}) == []
    assert needles({"s": "caf\xe9"}) == [] and needles({"s": {"$ne": "x"}}) == []
    assert needles({"s": "a\x7fb"}) == []  # CPython's json writes DEL as \u007f


def test_a_string_with_del_is_found_by_equality() -> None:
    s = Store()
    s.put("k", {"f": "a\x7fb"})
    assert s.query({"f": "a\x7fb"}) == s.query({"f": {"$eq": "a\x7fb"}}) == [{"f": "a\x7fb"}]


def test_query_limit_is_checked_and_zero_is_none() -> None:
    s = Store()
    s.put_batch({"a": {"v": 1}, "b": {"v": 2}})
    assert s.query({}, limit=0) == [] and s.query({}, limit=0, sort="v") == []
    assert s.query({}, limit=1) == [{"v": 1}] and s.query({}, limit=1, sort="-v") == [{"v": 2}]
    for bad in (-1, 1.0, True, "1"):
        with pytest.raises(QueryError, match="limit must be an int"):
            s.query({}, limit=bad)
