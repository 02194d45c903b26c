"""Topic names, topic filters and the subscription tree (MQTT 5.0 4.7, 4.8.2).

Validators take ``remote``: ``True`` when the string came from the peer's
bytes (raises ``RemoteProtocolError``), ``False`` when it came from this
side's API call (raises ``LocalProtocolError``). Matching never validates:
validate once where the string enters, then match as often as needed.
Matching compares strings exactly, without normalization (MQTT-4.7.3-4).
"""

from ._errors import LocalProtocolError, RemoteProtocolError

try:
    from micropython import const
except ImportError:  # CPython
    const = int

_MALFORMED_PACKET = const(0x81)
_TOPIC_FILTER_INVALID = const(0x8F)
_TOPIC_NAME_INVALID = const(0x90)

# Error details: numbers of the texts in _names.DETAILS, which loads only
# when an error is printed (tests check each number against its name).
_E_TOPIC_EMPTY = const(86)
_E_TOPIC_NUL = const(87)
_E_TOPIC_TOO_LONG = const(88)
_E_WILDCARD_IN_NAME = const(89)
_E_EMPTY_SHARE_NAME = const(90)
_E_WILDCARD_IN_SHARE = const(91)
_E_SHARE_WITHOUT_FILTER = const(92)
_E_BAD_HASH = const(93)
_E_BAD_PLUS = const(94)
_E_TOPIC_NOT_STR = const(115)


def _fail(remote, code, why, s):
    raise (RemoteProtocolError if remote else LocalProtocolError)(code, (why, s[:80]))


def _check(s, remote, code):
    # Rules shared by names and filters.
    if not isinstance(s, str):
        raise LocalProtocolError(code, (_E_TOPIC_NOT_STR, type(s).__name__))
    if not s:  # MQTT-4.7.3-1
        _fail(remote, code, _E_TOPIC_EMPTY, s)
    if "\x00" in s:  # MQTT-4.7.3-2; from the peer it is a Malformed Packet (MQTT-1.5.4-2)
        _fail(remote, _MALFORMED_PACKET if remote else code, _E_TOPIC_NUL, s)
    # A char is at most 4 UTF-8 bytes: encode only when it could be too long.
    if len(s) > 16383 and len(s.encode()) > 65535:  # MQTT-4.7.3-3
        _fail(remote, code, _E_TOPIC_TOO_LONG, s)


def validate_topic_name(name, remote=False):
    """Check a PUBLISH topic name (after resolving any Topic Alias).

    Returns None. Raises LocalProtocolError (or RemoteProtocolError if
    ``remote``) with TOPIC_NAME_INVALID, or MALFORMED_PACKET for a remote U+0000.
    """
    _check(name, remote, _TOPIC_NAME_INVALID)
    if "+" in name or "#" in name:  # MQTT-3.3.2-2, MQTT-4.7.0-1
        _fail(remote, _TOPIC_NAME_INVALID, _E_WILDCARD_IN_NAME, name)


def parse_shared(filter):
    """Return ``(share_name, inner_filter)`` for ``$share/<name>/<filter>``,
    else ``(None, filter)``. Does not validate: ``$share/g`` gives ``("g", "")``.
    """
    if filter.startswith("$share/"):  # MQTT-4.8.2-1
        i = filter.find("/", 7)
        if i < 0:
            return filter[7:], ""
        return filter[7:i], filter[i + 1 :]
    return None, filter


def validate_topic_filter(filter, remote=False):
    """Check a SUBSCRIBE/UNSUBSCRIBE topic filter, shared ones included.

    Returns None. Raises LocalProtocolError (or RemoteProtocolError if
    ``remote``) with TOPIC_FILTER_INVALID, or MALFORMED_PACKET for a remote U+0000.
    """
    _check(filter, remote, _TOPIC_FILTER_INVALID)
    group, inner = parse_shared(filter)
    if group is not None:
        if not group:  # MQTT-4.8.2-1
            _fail(remote, _TOPIC_FILTER_INVALID, _E_EMPTY_SHARE_NAME, filter)
        if "+" in group or "#" in group:  # MQTT-4.8.2-2
            _fail(remote, _TOPIC_FILTER_INVALID, _E_WILDCARD_IN_SHARE, filter)
        if not inner:  # MQTT-4.8.2-2: "/" then a Topic Filter must follow the ShareName
            _fail(remote, _TOPIC_FILTER_INVALID, _E_SHARE_WITHOUT_FILTER, filter)
    if "+" in inner or "#" in inner:
        levels = inner.split("/")
        last = len(levels) - 1
        for i, lv in enumerate(levels):
            if "#" in lv and (lv != "#" or i != last):  # MQTT-4.7.1-1
                _fail(remote, _TOPIC_FILTER_INVALID, _E_BAD_HASH, filter)
            if "+" in lv and lv != "+":  # MQTT-4.7.1-2
                _fail(remote, _TOPIC_FILTER_INVALID, _E_BAD_PLUS, filter)


def topic_matches(filter, name):
    """Return True if topic ``name`` matches ``filter`` (a shared filter matches
    by its inner filter). Both must be valid; nothing is checked here.
    """
    f = parse_shared(filter)[1].split("/")
    n = name.split("/")
    if name.startswith("$") and (f[0] == "+" or f[0] == "#"):  # MQTT-4.7.2-1
        return False
    for i, lv in enumerate(f):
        if lv == "#":  # also matches the parent level: "sport/#" matches "sport"
            return True
        if i >= len(n) or (lv != "+" and lv != n[i]):
            return False
    return len(f) == len(n)


class SubscriptionTree:
    """Subscriptions in a trie of topic levels; matching costs grow with the
    topic's depth and the number of matches, not with the number of filters.

    Each subscription is ``(filter, key, value)``: ``filter`` is the full
    original string (``$share/<name>/...`` kept as is, stored under its inner
    filter), ``key`` names the subscriber (e.g. its client id) and ``value`` is
    opaque (e.g. a ``Subscription``). Filters must be valid; nothing is checked.
    """

    def __init__(self):
        # A node is [children: {level: node}, subscriptions: {(filter, key): value}].
        self._root = [{}, {}]  # type: list
        self._n = 0

    def __len__(self):
        return self._n

    def add(self, filter, key, value):
        """Store ``value`` under ``(filter, key)``; return True if it replaced one."""
        node = self._root
        for lv in parse_shared(filter)[1].split("/"):
            kids = node[0]
            nxt = kids.get(lv)
            if nxt is None:
                nxt = kids[lv] = [{}, {}]
            node = nxt
        subs = node[1]
        k = (filter, key)
        had = k in subs
        subs[k] = value
        if not had:
            self._n += 1
        return had

    def remove(self, filter, key):
        """Remove ``(filter, key)``; return False if it was not there."""
        node = self._root
        path = []
        for lv in parse_shared(filter)[1].split("/"):
            nxt = node[0].get(lv)
            if nxt is None:
                return False
            path.append((node, lv))
            node = nxt
        k = (filter, key)
        if k not in node[1]:
            return False
        del node[1][k]
        self._n -= 1
        # Prune nodes left empty so the tree does not keep dead levels.
        while path and not node[0] and not node[1]:
            node, lv = path.pop()
            del node[0][lv]
        return True

    def match(self, name):
        """Return ``[(filter, key, value)]`` for every subscription matching the
        valid topic ``name``, shared ones included with their full ``$share/``
        filter so a broker can pick one subscriber per (share name, filter).
        """
        out = []  # type: list
        nodes = [self._root]
        # MQTT-4.7.2-1: a first-level wildcard does not match a "$" topic.
        wild = not name.startswith("$")
        for lv in name.split("/"):
            nxt = []
            for node in nodes:
                kids = node[0]
                if wild:
                    c = kids.get("#")
                    if c is not None:
                        _emit(c, out)
                    c = kids.get("+")
                    if c is not None:
                        nxt.append(c)
                c = kids.get(lv)
                if c is not None:
                    nxt.append(c)
            if not nxt:
                return out
            nodes = nxt
            wild = True
        for node in nodes:
            _emit(node, out)
            c = node[0].get("#")  # "sport/#" matches "sport"
            if c is not None:
                _emit(c, out)
        return out


def _emit(node, out):
    for k, v in node[1].items():
        out.append((k[0], k[1], v))
