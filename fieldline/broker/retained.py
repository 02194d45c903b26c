"""The retained messages, indexed by topic level, so that a SUBSCRIBE finds those its
filter matches by walking the filter, not by testing every retained topic: a client
subscribing to many filters while thousands of topics are retained must not stall the
event loop for everyone else."""

from __future__ import annotations

from typing import Any

from .message import Message

# A node: [children by level name, the message retained at this exact topic or None].
Node = list[Any]


class Retained:
    """``messages``: topic -> Message, for reading (``len``, iteration, persistence);
    change it only through ``put`` and ``remove``."""

    def __init__(self) -> None:
        self.messages: dict[str, Message] = {}
        self._root: Node = [{}, None]

    def put(self, message: Message) -> None:
        """Retain ``message`` for its topic, replacing the one before."""
        node = self._root
        for level in message.topic.split("/"):
            child = node[0].get(level)
            if child is None:
                child = node[0][level] = [{}, None]
            node = child
        node[1] = message
        self.messages[message.topic] = message

    def remove(self, topic: str) -> None:
        """Forget the message retained for ``topic``, if any."""
        if self.messages.pop(topic, None) is None:
            return
        path = [self._root]
        levels = topic.split("/")
        for level in levels:
            path.append(path[-1][0][level])
        path[-1][1] = None
        for i in range(len(levels) - 1, -1, -1):  # prune the nodes left empty
            node = path[i + 1]
            if node[0] or node[1] is not None:
                break
            del path[i][0][levels[i]]

    def matching(self, topic_filter: str, now: float) -> list[Message]:
        """The messages whose topic ``topic_filter`` (not a shared one) matches, by
        MQTT's rules (a filter starting with a wildcard matches no ``$`` topic,
        MQTT-4.7.2-1); expired ones are dropped on the way."""
        if "+" not in topic_filter and "#" not in topic_filter:
            found = [m for m in (self.messages.get(topic_filter),) if m is not None]
        else:
            found = []
            _walk(self._root, topic_filter.split("/"), found)
        live = []
        for m in found:
            if m.expired(now):
                self.remove(m.topic)
            else:
                live.append(m)
        return live


def _walk(root: Node, levels: list[str], out: list[Message]) -> None:
    # Iterative, with a stack of (node, level index): a filter may have thousands of
    # levels (a topic of up to 65535 bytes, retained that deep, matches one), and
    # recursing once per level would raise RecursionError on the event loop.
    stack: list[tuple[Node, int]] = [(root, 0)]
    n = len(levels)
    while stack:
        node, i = stack.pop()
        if i == n:
            if node[1] is not None:
                out.append(node[1])
            continue
        level = levels[i]
        if level == "#":
            if node[1] is not None and i > 0:
                out.append(node[1])  # "a/#" matches "a" too (4.7.1.2)
            for name, child in node[0].items():
                if i == 0 and name[:1] == "$":
                    continue
                _everything(child, out)
        elif level == "+":
            # Pushed last first, so they come off the stack in the order they were made
            # (the order a recursive walk gave).
            for name, child in reversed(node[0].items()):
                if i == 0 and name[:1] == "$":
                    continue
                stack.append((child, i + 1))
        else:
            child = node[0].get(level)
            if child is not None:
                stack.append((child, i + 1))


def _everything(node: Node, out: list[Message]) -> None:
    stack = [node]
    while stack:
        n = stack.pop()
        if n[1] is not None:
            out.append(n[1])
        stack.extend(n[0].values())
