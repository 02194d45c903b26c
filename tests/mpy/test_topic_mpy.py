"""fieldline.mqtt._topic on MicroPython: plain test_* functions using assert only."""

from fieldline.mqtt._const import MALFORMED_PACKET, TOPIC_FILTER_INVALID, TOPIC_NAME_INVALID
from fieldline.mqtt._errors import LocalProtocolError, RemoteProtocolError
from fieldline.mqtt._topic import (
    SubscriptionTree,
    parse_shared,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)


def _raises(fn, arg, remote, code):
    cls = RemoteProtocolError if remote else LocalProtocolError
    try:
        fn(arg, remote)
    except cls as e:
        assert e.reason_code == code, (arg, remote, e.reason_code)
    else:
        raise AssertionError("no error for %r" % (arg,))


def test_topic_names():
    for name in ("a", "/", "sport/tennis/player1", "$SYS/x", "caf\u00e9", "a" * 65535):
        validate_topic_name(name)
        validate_topic_name(name, True)
    for name in ("", "+", "#", "a/+", "a/#", "a+b", "a" * 65536, "\U0001f600" * 16384):
        _raises(validate_topic_name, name, False, TOPIC_NAME_INVALID)
        _raises(validate_topic_name, name, True, TOPIC_NAME_INVALID)
    _raises(validate_topic_name, "a\x00", False, TOPIC_NAME_INVALID)
    _raises(validate_topic_name, "a\x00", True, MALFORMED_PACKET)


def test_topic_filters():
    for f in ("#", "+", "+/+", "sport/#", "sport/+/x", "$SYS/#", "$share/g/#", "$share/g//"):
        validate_topic_filter(f)
        validate_topic_filter(f, True)
    bad = ("", "a#", "a/#/b", "#/", "a+", "+a/b", "$share/", "$share//x", "$share/g",
           "$share/g/", "$share/+/x", "$share/#", "$share/g/a#")  # fmt: skip
    for f in bad:
        _raises(validate_topic_filter, f, False, TOPIC_FILTER_INVALID)
        _raises(validate_topic_filter, f, True, TOPIC_FILTER_INVALID)
    _raises(validate_topic_filter, "a\x00", True, MALFORMED_PACKET)


def test_parse_shared():
    assert parse_shared("$share/g/a/b") == ("g", "a/b")
    assert parse_shared("$share/g") == ("g", "")
    assert parse_shared("a/b") == (None, "a/b")
    assert parse_shared("$share") == (None, "$share")


MATCHES = (
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/#", "sport", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("+", "/finance", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("#", "$SYS/x", False),
    ("+/x", "$SYS/x", False),
    ("$SYS/#", "$SYS/x", True),
    ("$SYS/#", "$SYS", True),
    ("a/+", "a/$x", True),
    ("$share/g/sport/#", "sport/x", True),
    ("$share/g/#", "$SYS/x", False),
)


def test_topic_matches():
    for f, name, want in MATCHES:
        assert topic_matches(f, name) is want, (f, name)


def test_tree_matches_like_topic_matches():
    tree = SubscriptionTree()
    for f, _, _ in MATCHES:
        tree.add(f, "k1", f)
        tree.add(f, "k2", f)
    for _, name, _ in MATCHES:
        got = sorted(tree.match(name))
        want = sorted(set((f, k, f) for f, _, _ in MATCHES for k in ("k1", "k2")
                          if topic_matches(f, name)))  # fmt: skip
        assert got == want, (name, got, want)


def test_tree_add_replace_remove_prune():
    tree = SubscriptionTree()
    assert tree.add("a/+", "c1", 1) is False
    assert tree.add("a/+", "c1", 2) is True
    assert tree.add("$share/g/a/+", "c2", 3) is False
    assert len(tree) == 2
    assert sorted(tree.match("a/b")) == [("$share/g/a/+", "c2", 3), ("a/+", "c1", 2)]
    assert tree.remove("a/+", "c2") is False
    assert tree.remove("a/+/c", "c1") is False
    assert tree.remove("a/+", "c1") is True
    assert tree.remove("$share/g/a/+", "c2") is True
    assert len(tree) == 0
    assert tree.match("a/b") == []
    assert tree._root == [{}, {}]
