"""The retained store's index (``retained.py``) finds exactly what testing every
retained topic against the filter with ``topic_matches`` finds, for random topics and
filters ($ topics, empty levels and both wildcards included), and forgets what is
removed or expired."""

from __future__ import annotations

import random

from fieldline.broker.message import Message
from fieldline.broker.retained import Retained
from fieldline.mqtt import topic_matches

LEVELS = ["a", "b", "", "$SYS", "$x", "c"]


def _topic(rng: random.Random) -> str:
    return "/".join(rng.choice(LEVELS) for _ in range(rng.randint(1, 4))) or "a"


def _filter(rng: random.Random) -> str:
    n = rng.randint(1, 4)
    levels = [rng.choice([*LEVELS, "+", "+"]) for _ in range(n)]
    if rng.random() < 0.4:
        levels[-1] = "#"
    return "/".join(levels)


def test_the_index_agrees_with_topic_matches() -> None:
    rng = random.Random(7)
    store = Retained()
    topics: set[str] = set()
    for _ in range(300):
        t = _topic(rng)
        if rng.random() < 0.25 and topics:
            gone = rng.choice(sorted(topics))
            store.remove(gone)
            topics.discard(gone)
        else:
            store.put(Message(t, b"x", 0, True, None, 0.0))
            topics.add(t)
        assert set(store.messages) == topics
        for _ in range(5):
            f = _filter(rng)
            got = sorted(m.topic for m in store.matching(f, 0.0))
            assert got == sorted(t for t in topics if topic_matches(f, t)), f


def test_expired_messages_are_dropped_when_found() -> None:
    store = Retained()
    m = Message("a/b", b"x", 0, True, {"message_expiry_interval": 1}, 0.0)
    store.put(m)
    store.put(Message("a/c", b"y", 0, True, None, 0.0))
    assert sorted(x.topic for x in store.matching("a/+", 0.5)) == ["a/b", "a/c"]
    assert [x.topic for x in store.matching("a/#", 5.0)] == ["a/c"]
    assert set(store.messages) == {"a/c"}
    store.remove("a/c")
    assert store.messages == {} and store._root == [{}, None]  # nothing left behind
