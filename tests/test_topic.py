"""Tests for fieldline.mqtt._topic: validation, matching and the subscription tree."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldline.mqtt._const import MALFORMED_PACKET, TOPIC_FILTER_INVALID, TOPIC_NAME_INVALID
from fieldline.mqtt._errors import LocalProtocolError, RemoteProtocolError
from fieldline.mqtt._topic import (
    SubscriptionTree,
    parse_shared,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)

LONGEST = "a" * 65535
TOO_LONG = "a" * 65536
# 16384 chars of 4 UTF-8 bytes each: short in chars, too long in bytes (MQTT-4.7.3-3).
TOO_LONG_UTF8 = "\U0001f600" * 16384

VALID_NAMES = [
    "a",
    "/",
    "//",
    "sport/tennis/player1",
    "/finance",
    "finance/",
    "$SYS/broker/load",
    "$share/g/x",  # a name may look like a shared filter; it is only a string
    " ",
    "caf\u00e9/\u6e29\u5ea6",
    LONGEST,
    "\u00e9" * 32767,  # 65534 bytes
]

# (name, reason code when local, reason code when remote)
INVALID_NAMES = [
    ("", TOPIC_NAME_INVALID, TOPIC_NAME_INVALID),  # MQTT-4.7.3-1
    ("+", TOPIC_NAME_INVALID, TOPIC_NAME_INVALID),  # MQTT-3.3.2-2
    ("#", TOPIC_NAME_INVALID, TOPIC_NAME_INVALID),
    ("sport/+/x", TOPIC_NAME_INVALID, TOPIC_NAME_INVALID),
    ("sport/#", TOPIC_NAME_INVALID, TOPIC_NAME_INVALID),
    ("a+b", TOPIC_NAME_INVALID, TOPIC_NAME_INVALID),
    ("a#b", TOPIC_NAME_INVALID, TOPIC_NAME_INVALID),
    ("a\x00b", TOPIC_NAME_INVALID, MALFORMED_PACKET),  # MQTT-4.7.3-2, MQTT-1.5.4-2
    (TOO_LONG, TOPIC_NAME_INVALID, TOPIC_NAME_INVALID),  # MQTT-4.7.3-3
    (TOO_LONG_UTF8, TOPIC_NAME_INVALID, TOPIC_NAME_INVALID),
]

VALID_FILTERS = [
    "a",
    "/",
    "#",
    "+",
    "+/+",
    "/+",
    "+/",
    "sport/tennis/player1/#",
    "sport/#",
    "sport/tennis/#",
    "sport/+",
    "sport/+/player1",
    "+/tennis/#",
    "+/monitor/Clients",
    "$SYS/#",
    "$SYS/monitor/+",
    "$share/g/#",
    "$share/g/sport/+/player1",
    "$share/g/$SYS/#",
    "$share/g//",
    "$share",  # not a shared subscription: no "/" after it
    "$shared/+",
    "$share/g/$share/h",
    LONGEST,
]

INVALID_FILTERS = [
    ("", TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID),  # MQTT-4.7.3-1
    ("sport/tennis#", TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID),  # MQTT-4.7.1-1
    ("sport/tennis/#/ranking", TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID),
    ("#/", TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID),
    ("##", TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID),
    ("#/#", TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID),
    ("sport+", TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID),  # MQTT-4.7.1-2
    ("sport/+tennis", TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID),
    ("++", TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID),
    ("+#", TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID),
    ("$share/", TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID),  # MQTT-4.8.2-1
    ("$share//x", TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID),
    ("$share/g", TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID),  # MQTT-4.8.2-2
    ("$share/g/", TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID),
    ("$share/+/x", TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID),
    ("$share/#", TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID),
    ("$share/#/x", TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID),
    ("$share/g+/x", TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID),
    ("$share/g/a/#/b", TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID),
    ("$share/g/a+", TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID),
    ("a\x00/#", TOPIC_FILTER_INVALID, MALFORMED_PACKET),  # MQTT-4.7.3-2, MQTT-1.5.4-2
    (TOO_LONG, TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID),  # MQTT-4.7.3-3
    (TOO_LONG_UTF8, TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID),
]


def _short(s):
    if isinstance(s, str):
        return repr(s) if len(s) < 40 else f"{s[:4]!r}...({len(s)} chars)"
    return None


@pytest.mark.parametrize("name", VALID_NAMES, ids=_short)
@pytest.mark.parametrize("remote", [False, True])
def test_valid_topic_name(name, remote):
    assert validate_topic_name(name, remote) is None


@pytest.mark.parametrize("name,local_code,remote_code", INVALID_NAMES, ids=_short)
def test_invalid_topic_name(name, local_code, remote_code):
    with pytest.raises(LocalProtocolError) as e:
        validate_topic_name(name)
    assert e.value.reason_code == local_code
    with pytest.raises(RemoteProtocolError) as r:
        validate_topic_name(name, remote=True)
    assert r.value.reason_code == remote_code


@pytest.mark.parametrize("filter", VALID_FILTERS, ids=_short)
@pytest.mark.parametrize("remote", [False, True])
def test_valid_topic_filter(filter, remote):
    assert validate_topic_filter(filter, remote) is None


@pytest.mark.parametrize("filter,local_code,remote_code", INVALID_FILTERS, ids=_short)
def test_invalid_topic_filter(filter, local_code, remote_code):
    with pytest.raises(LocalProtocolError) as e:
        validate_topic_filter(filter)
    assert e.value.reason_code == local_code
    with pytest.raises(RemoteProtocolError) as r:
        validate_topic_filter(filter, remote=True)
    assert r.value.reason_code == remote_code


@pytest.mark.parametrize("fn", [validate_topic_name, validate_topic_filter])
def test_non_str_is_local_error(fn):
    with pytest.raises(LocalProtocolError):
        fn(b"a/b")


def test_error_message_is_short_and_names_the_rule():
    with pytest.raises(LocalProtocolError) as e:
        validate_topic_name("x" * 70000)
    assert "65535" in str(e.value)
    assert len(str(e.value)) < 200


@pytest.mark.parametrize(
    "filter,expected",
    [
        ("$share/g/a/b", ("g", "a/b")),
        ("$share/group-1/#", ("group-1", "#")),
        ("$share/g/", ("g", "")),
        ("$share/g", ("g", "")),
        ("$share/", ("", "")),
        ("$share", (None, "$share")),
        ("$SYS/#", (None, "$SYS/#")),
        ("a/$share/g/x", (None, "a/$share/g/x")),
    ],
)
def test_parse_shared(filter, expected):
    assert parse_shared(filter) == expected


MATCHES = [
    # MQTT 5.0 4.7.1.2 examples
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/#", "sport", True),
    ("sport/tennis/#", "sport/tennis", True),
    ("sport/tennis/#", "sport/tenniss", False),
    ("#", "sport/tennis", True),
    ("#", "/", True),
    # 4.7.1.3 examples
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player2", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+", "finance", True),
    ("+/tennis/#", "sport/tennis/player1", True),
    ("+/tennis/#", "sport/tennis", True),
    # 4.7.2: "$" topics and wildcards (MQTT-4.7.2-1)
    ("#", "$SYS/x", False),
    ("#", "$SYS", False),
    ("+", "$SYS", False),
    ("+/x", "$SYS/x", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("+/monitor/Clients", "SYS/monitor/Clients", True),
    ("$SYS/#", "$SYS/x", True),
    ("$SYS/#", "$SYS", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("$SYS/+", "$SYS/x/y", False),
    ("$SYS/x", "$SYS/x", True),
    ("a/+", "a/$x", True),  # only the first level is special
    ("a/#", "a/$x/y", True),
    # exact and near misses
    ("a/b", "a/b", True),
    ("a/b", "a/b/", False),
    ("a/b", "a", False),
    ("a/b/", "a/b/", True),
    ("a//b", "a//b", True),
    ("a/+/b", "a//b", True),
    ("A/b", "a/b", False),  # no normalization (MQTT-4.7.3-4)
    ("a/#", "b", False),
    # shared subscriptions match by their inner filter
    ("$share/g/sport/#", "sport/tennis", True),
    ("$share/g/sport/+", "sport", False),
    ("$share/g/#", "$SYS/x", False),
    ("$share/g/$SYS/#", "$SYS/x", True),
    ("$share/g/x", "$share/g/x", False),
]


@pytest.mark.parametrize("filter,name,expected", MATCHES)
def test_topic_matches(filter, name, expected):
    assert topic_matches(filter, name) is expected


@pytest.mark.parametrize("filter,name,expected", MATCHES)
def test_tree_matches_table(filter, name, expected):
    tree = SubscriptionTree()
    tree.add(filter, "c", 1)
    assert tree.match(name) == ([(filter, "c", 1)] if expected else [])


def test_add_replace_remove_len():
    tree = SubscriptionTree()
    assert len(tree) == 0
    assert tree.add("a/+", "c1", 1) is False
    assert tree.add("a/+", "c2", 2) is False
    assert tree.add("a/#", "c1", 3) is False
    assert tree.add("$share/g/a/+", "c3", 4) is False
    assert len(tree) == 4
    assert tree.add("a/+", "c1", 5) is True  # replaced, not added
    assert len(tree) == 4
    assert sorted(tree.match("a/b")) == [
        ("$share/g/a/+", "c3", 4),
        ("a/#", "c1", 3),
        ("a/+", "c1", 5),
        ("a/+", "c2", 2),
    ]
    assert tree.remove("a/+", "c1") is True
    assert tree.remove("a/+", "c1") is False
    assert tree.remove("a/+", "nobody") is False
    assert tree.remove("a/b/c", "c1") is False
    assert tree.remove("a", "c1") is False  # node exists, subscription does not
    assert len(tree) == 3
    assert sorted(tree.match("a/b")) == [
        ("$share/g/a/+", "c3", 4),
        ("a/#", "c1", 3),
        ("a/+", "c2", 2),
    ]
    assert tree.match("x") == []


def test_shared_groups_are_told_apart():
    tree = SubscriptionTree()
    tree.add("$share/g1/t/#", "c1", "s1")
    tree.add("$share/g1/t/#", "c2", "s2")
    tree.add("$share/g2/t/#", "c3", "s3")
    tree.add("t/#", "c4", "s4")
    by_group: dict = {}
    for f, key, _value in tree.match("t/x"):
        by_group.setdefault(parse_shared(f), set()).add(key)
    assert by_group == {
        ("g1", "t/#"): {"c1", "c2"},
        ("g2", "t/#"): {"c3"},
        (None, "t/#"): {"c4"},
    }
    assert tree.remove("$share/g1/t/#", "c3") is False
    assert tree.remove("t/#", "c1") is False


def test_prune_after_removing_everything():
    tree = SubscriptionTree()
    subs = [
        ("a/b/c", "k1"),
        ("a/b/c", "k2"),
        ("a/b", "k1"),
        ("a/+/#", "k1"),
        ("#", "k3"),
        ("$share/g/a/b/c", "k1"),
        ("/", "k1"),
        ("$SYS/#", "k1"),
    ]
    for f, k in subs:
        tree.add(f, k, None)
    assert len(tree) == len(subs)
    for f, k in subs:
        assert tree.remove(f, k) is True
    assert len(tree) == 0
    assert tree._root == [{}, {}]


def test_prune_keeps_live_branches():
    tree = SubscriptionTree()
    tree.add("a/b/c/d", "k", 1)
    tree.add("a/b", "k", 2)
    tree.remove("a/b/c/d", "k")
    # "a/b" stays, and nothing below it.
    assert tree._root[0]["a"][0]["b"][0] == {}
    assert tree.match("a/b") == [("a/b", "k", 2)]


# Small alphabets so random filters and names collide often.
LEVELS = ["a", "b", "", "$x", "$SYS"]
name_st = st.lists(st.sampled_from(LEVELS), min_size=1, max_size=4).map("/".join).filter(bool)


@st.composite
def filter_st(draw):
    levels = draw(st.lists(st.sampled_from(LEVELS + ["+"]), min_size=0, max_size=4))
    if not levels or draw(st.booleans()):
        levels.append("#")
    f = "/".join(levels) or "+"  # [""] joins to "", which is no filter
    if draw(st.integers(0, 4)) == 0:
        f = f"$share/{draw(st.sampled_from(['g', 'h']))}/{f}"
    validate_topic_filter(f)
    return f


@settings(max_examples=300)
@given(
    subs=st.lists(st.tuples(filter_st(), st.sampled_from(["k1", "k2"])), max_size=25),
    removed=st.lists(st.integers(0, 24), max_size=10),
    names=st.lists(name_st, min_size=1, max_size=5),
)
def test_tree_match_equals_brute_force(subs, removed, names):
    tree = SubscriptionTree()
    live = {}
    for i, (f, k) in enumerate(subs):
        assert tree.add(f, k, i) is ((f, k) in live)
        live[(f, k)] = i
    for j in removed:
        if j < len(subs):
            f, k = subs[j]
            assert tree.remove(f, k) is ((f, k) in live)
            live.pop((f, k), None)
    assert len(tree) == len(live)
    for name in names:
        validate_topic_name(name)
        got = tree.match(name)
        want = [(f, k, v) for (f, k), v in live.items() if topic_matches(f, name)]
        assert len(got) == len(set(got))  # each subscription at most once
        assert sorted(got) == sorted(want)
    for f, k in list(live):
        assert tree.remove(f, k) is True
    assert tree._root == [{}, {}]


@given(name=name_st)
def test_hash_matches_every_non_dollar_name(name):
    assert topic_matches("#", name) is (not name.startswith("$"))
    assert topic_matches(name, name)
    assert topic_matches(name + "/#", name)
