"""The ACL file: which topics each client may publish to (write) and receive (read).

The file is read once, when the broker starts (``Acl.load``); for each accepted client
``Acl.permissions(username, client_id)`` gathers the rules that apply to it, with ``%u``
and ``%c`` filled in, into a ``Permissions`` the broker asks on every PUBLISH, SUBSCRIBE
and delivery. The format and the precedence are in docs/broker.md, Security::

    topic read public/#            # before any section header: everyone
    user alice
    topic readwrite tenants/%u/#
    client sensor-*
    topic write sensors/%c/#

Precedence: a matching ``deny`` rule wins; else a matching rule that grants the access
allows it; else it is denied (no matching rule: no access).
"""

from __future__ import annotations

import re
from pathlib import Path

from fieldline.mqtt import LocalProtocolError, parse_shared, topic_matches, validate_topic_filter

from .config import ConfigError, warn_if_exposed

READ = "read"
WRITE = "write"
READWRITE = "readwrite"
DENY = "deny"
ACCESS = (READ, WRITE, READWRITE, DENY)
_EVERYONE = "everyone"
_SUBSTITUTE = re.compile(r"%[uc]")


class _Rule:
    __slots__ = ("access", "filter", "templated")

    def __init__(self, access: str, topic_filter: str) -> None:
        self.access = access
        self.filter = topic_filter
        self.templated = bool(_SUBSTITUTE.search(topic_filter))


class _Section:
    """The rules under one header: for everyone (``kind`` "everyone"), one user name,
    or the client ids matching a ``*`` pattern."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name
        self.rules: list[_Rule] = []
        parts = (re.escape(p) for p in name.split("*"))
        self._pattern = re.compile(".*".join(parts), re.S) if kind == "client" else None

    def applies(self, username: str | None, client_id: str) -> bool:
        if self.kind == _EVERYONE:
            return True
        if self.kind == "user":
            return username == self.name
        assert self._pattern is not None
        return self._pattern.fullmatch(client_id) is not None


class Permissions:
    """The rules of one client, with ``%u`` and ``%c`` filled in: its read, write and
    deny filters. Where a substitution is impossible (no user name for ``%u``; a
    user name or client id holding ``+``, ``#`` or ``/``, which would turn the value
    into a wildcard or another level, or starting a filter with ``$``), a grant is
    left out and a deny rule denies everything from its first ``%u`` or ``%c`` on:
    either way, less access."""

    __slots__ = ("deny", "read", "write")

    def __init__(self, read: list[str], write: list[str], deny: list[str]) -> None:
        self.read = read
        self.write = write
        self.deny = deny

    def can_write(self, topic: str) -> bool:
        """Whether the client may publish to ``topic`` (a topic name)."""
        return _allowed(topic, self.write, self.deny)

    def can_read(self, topic: str) -> bool:
        """Whether a message on ``topic`` (a topic name) may be delivered to the client."""
        return _allowed(topic, self.read, self.deny)

    def can_subscribe(self, topic_filter: str) -> bool:
        """Whether the client may subscribe to ``topic_filter`` (a shared one by its
        inner filter): a read rule covers every topic it matches and no deny rule
        does. Topics inside it that a deny rule names are then not delivered
        (``can_read``)."""
        inner = parse_shared(topic_filter)[1]
        if any(covers(d, inner) for d in self.deny):
            return False
        return any(covers(r, inner) for r in self.read)


class Acl:
    """The sections of one ACL file, in file order. ``path``: where it was read."""

    def __init__(self, sections: list[_Section], path: str | None = None) -> None:
        self.sections = sections
        self.path = path

    @classmethod
    def load(cls, path: str | Path) -> Acl:
        """Read the ACL file at ``path``. Raises ConfigError naming the file and the line
        if it cannot be read or a line is malformed. Logs a warning if other users may
        write it."""
        warn_if_exposed(path, "ACL file")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: the ACL file does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
            raise ConfigError(f"{path}: cannot read the ACL file: {why}") from None
        try:
            return cls.parse(text, str(path))
        except ValueError as e:
            raise ConfigError(f"{path}:{e}") from None

    @classmethod
    def parse(cls, text: str, path: str | None = None) -> Acl:
        """The Acl of ``text``. Raises ValueError ``"<line>: <what is wrong>"``."""
        everyone = _Section(_EVERYONE, "")
        sections = [everyone]
        current = everyone
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keyword, _, rest = line.partition(" ")
            rest = rest.strip()
            if keyword == _EVERYONE and not rest:
                current = everyone
            elif keyword in ("user", "client"):
                if not rest:
                    raise ValueError(f"{number}: '{keyword}' needs a name")
                current = _Section(keyword, rest)
                sections.append(current)
            elif keyword == "topic":
                access, _, topic_filter = rest.partition(" ")
                topic_filter = topic_filter.strip()
                if access not in ACCESS or not topic_filter:
                    raise ValueError(f"{number}: expected 'topic read|write|readwrite|deny FILTER'")
                if topic_filter.startswith("$share/"):
                    raise ValueError(f"{number}: a rule's filter cannot be a shared one")
                try:
                    validate_topic_filter(topic_filter)
                except LocalProtocolError as e:
                    raise ValueError(f"{number}: not a topic filter: {e}") from None
                current.rules.append(_Rule(access, topic_filter))
            else:
                raise ValueError(
                    f"{number}: unknown keyword {keyword!r} (user, client, everyone or topic)"
                )
        return cls(sections, path)

    def permissions(self, username: str | None, client_id: str) -> Permissions:
        """The Permissions of a client with this user name (None: anonymous) and client
        id: the rules of every section that applies to it."""
        read: list[str] = []
        write: list[str] = []
        deny: list[str] = []
        for section in self.sections:
            if not section.applies(username, client_id):
                continue
            for rule in section.rules:
                f = rule.filter
                if rule.templated:
                    filled = _substitute(f, username, client_id)
                    if filled and filled[0] == "$" and f[0] != "$" and rule.access != DENY:
                        filled = None  # the value took a grant into the $ topics ($SYS)
                    if filled is None and rule.access == DENY:
                        # A client id (or a user name without a password file) is the
                        # client's choice: one that cannot be filled in must not
                        # lift a denial. Deny from the first %u/%c on instead.
                        filled = _widen(f)
                    if filled is None:
                        continue  # a grant that cannot be filled in grants nothing
                    f = filled
                if rule.access == DENY:
                    deny.append(f)
                if rule.access in (READ, READWRITE):
                    read.append(f)
                if rule.access in (WRITE, READWRITE):
                    write.append(f)
        return Permissions(read, write, deny)

    def __len__(self) -> int:
        """The number of rules."""
        return sum(len(s.rules) for s in self.sections)


def covers(outer: str, inner: str) -> bool:
    """Whether every topic that filter ``inner`` matches, filter ``outer`` matches too
    (``topic_matches`` semantics, so ``a/#`` covers ``a``, and a filter starting with a
    wildcard covers no ``$`` topic: MQTT-4.7.2-1)."""
    o = outer.split("/")
    i = inner.split("/")
    if i[0].startswith("$") and o[0] in ("+", "#"):
        return False
    for n, level in enumerate(o):
        if level == "#":
            return True
        if n >= len(i):
            return False
        if i[n] == "#":
            return False  # inner reaches any depth; outer does not
        if level != "+" and level != i[n]:
            return False  # a literal level does not cover "+" or another literal
    return len(o) == len(i)


def _allowed(topic: str, grants: list[str], deny: list[str]) -> bool:
    for f in deny:
        if topic_matches(f, topic):
            return False
    for f in grants:
        if topic_matches(f, topic):
            return True
    return False


def _substitute(topic_filter: str, username: str | None, client_id: str) -> str | None:
    """``topic_filter`` with ``%u`` and ``%c`` filled in; None if a value it needs is
    missing or would change the filter's shape (empty, or holding ``+``, ``#``, ``/``)."""
    values = {"%u": _usable(username), "%c": _usable(client_id)}
    out = []
    pos = 0
    for m in _SUBSTITUTE.finditer(topic_filter):
        value = values[m.group()]
        if value is None:
            return None
        out.append(topic_filter[pos : m.start()])
        out.append(value)
        pos = m.end()
    out.append(topic_filter[pos:])
    return "".join(out)


def _widen(topic_filter: str) -> str:
    """``topic_filter`` cut at its first level holding ``%u`` or ``%c``, ``#`` in its
    place: every topic the filter could name, whatever the values."""
    levels = topic_filter.split("/")
    for n, level in enumerate(levels):
        if _SUBSTITUTE.search(level):
            return "/".join([*levels[:n], "#"])
    return topic_filter


def _usable(value: str | None) -> str | None:
    if not value or any(c in value for c in "+#/"):
        return None
    return value
