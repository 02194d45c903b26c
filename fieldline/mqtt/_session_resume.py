"""Session state that outlives a connection: dropping it, and a queue that
drops its oldest message.

Imported by ``_session`` on first use: a client that connects with clean
start and keeps no message waiting never loads it. Each function takes the
Session ``s``.
"""

from ._packets import PubComp

try:
    from micropython import const
except ImportError:  # CPython
    const = int

# Same values as in _session and _const (imported names would cost RAM).
_CLIENT = const(0)
_PUBLISH = const(3)


def discard(s):
    """Drop the session state. A client does not drop its application
    messages, though: those not yet acknowledged go out again as new
    messages (DUP 0) in the new session, so a broker that lost the session
    costs at most a duplicate, never a loss. A QoS 2 message the broker
    already took (PUBREC came) is complete: reported as PubComp."""
    keep = []
    client = s.role == _CLIENT
    msgs = s._msgs
    for pid in s._order:
        m = msgs[pid]
        if client and m.type == _PUBLISH:
            m.dup = False
            keep.append(pid)
        else:
            del msgs[pid]
            if client:
                s._events.append(PubComp(pid))
    s._order = keep
    s._rx2 = set()


def drop_oldest(s):
    """Session.drop_oldest(); see there."""
    order = s._order
    msgs = s._msgs
    i = s._nsent
    while i < len(order):
        pid = order[i]
        m = msgs[pid]
        if m.type == _PUBLISH and not m.dup:
            del order[i]
            del msgs[pid]
            return pid
        i += 1
    return None
