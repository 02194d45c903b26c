"""Broker-wide counts since the broker started, for ``Broker.stats()``, the ``$SYS``
topics (sysinfo.py) and the Prometheus endpoint (metrics.py).

The per-session counts (``ClientSession.dropped``, ``expired``, ``rate_limited``) go
when a session ends; ``ended`` keeps their sum, so the totals only grow, as a
Prometheus counter must. Everything here is a plain int bumped on the event loop: no
lock, and nothing costlier than an addition on the paths a message takes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import Broker
    from .sessions import ClientSession


class Counters:
    """``connections``: CONNECTs accepted. ``refused``: CONNECTs refused, by the reason
    code of the refusal (MQTT 5.0 numbering, also for 3.1.1 clients). ``received``:
    PUBLISHes received from clients, by QoS; ``received_bytes``: their payload bytes.
    ``sent``: PUBLISHes sent to clients, by QoS; ``sent_bytes``: their payload bytes.
    ``bytes_in`` / ``bytes_out``: every byte read from and written to clients (MQTT
    packets, before TLS or WebSocket framing). ``denied``: PUBLISHes refused (ACL,
    plug-in, ``$SYS``). ``online``: clients connected now; ``maximum``: the most
    connected at once. ``ended_dropped``, ``ended_expired``, ``ended_rate_limited``: the counts of
    sessions that ended. ``shared_dropped``: deliveries for a shared subscription that
    a member's ended session had not completed and no member of its group was left to
    take (4.8.2). ``sessions_refused``: CONNECTs refused for ``max_sessions`` (also in
    ``refused``, as 0x97); ``retained_refused``: retained messages not kept for
    ``max_retained`` (routed all the same)."""

    def __init__(self) -> None:
        self.connections = 0
        self.refused: dict[int, int] = {}
        self.received = [0, 0, 0]
        self.received_bytes = 0
        self.sent = [0, 0, 0]
        self.sent_bytes = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.denied = 0
        self.online = 0
        self.maximum = 0
        self.ended_dropped = 0
        self.ended_expired = 0
        self.ended_rate_limited = 0
        self.shared_dropped = 0
        self.sessions_refused = 0
        self.retained_refused = 0

    def refuse(self, reason_code: int) -> None:
        self.refused[reason_code] = self.refused.get(reason_code, 0) + 1

    def session_ended(self, cs: ClientSession) -> None:
        self.ended_dropped += cs.dropped
        self.ended_expired += cs.expired
        self.ended_rate_limited += cs.rate_limited


def add_stats(broker: Broker, out: dict[str, Any]) -> None:
    """Add to ``out`` (what ``Broker.stats()`` counted so far) the broker-wide counts:
    connections_total, refused (a dict: reason code -> CONNECTs refused with it),
    received (PUBLISHes from clients), received_qos ([QoS 0, 1, 2]), received_bytes
    (their payloads), sent, sent_qos, sent_bytes (the same for PUBLISHes to clients),
    bytes_in, bytes_out (every packet byte read and written), denied, clients_maximum,
    inflight (QoS 1/2 messages sent and not yet acknowledged), offline (sessions
    without a connection), dropped_total, expired_total, rate_limited_total
    (those of ended sessions included: they never go down while the broker runs;
    dropped_total also counts shared_dropped), shared_dropped (deliveries for a shared
    subscription an ended member left that no member of its group was left to take),
    sessions_refused (CONNECTs refused for max_sessions), retained_refused (retained
    messages not kept for max_retained), and
    plugin_errors, plugin_timeouts (dicts: ``"Class.hook"`` -> calls that raised or
    took over ``hook_timeout``)."""
    c = broker.counters
    out["connections_total"] = c.connections
    out["refused"] = dict(c.refused)
    out["received"] = sum(c.received)
    out["received_qos"] = list(c.received)
    out["received_bytes"] = c.received_bytes
    out["sent"] = sum(c.sent)
    out["sent_qos"] = list(c.sent)
    out["sent_bytes"] = c.sent_bytes
    out["bytes_in"] = c.bytes_in
    out["bytes_out"] = c.bytes_out
    out["denied"] = c.denied
    out["clients_maximum"] = c.maximum
    out["inflight"] = sum(cs.session.inflight for cs in broker.sessions.sessions.values())
    out["offline"] = out["sessions"] - out["connected"]
    out["dropped_total"] = out["dropped"] + c.ended_dropped + c.shared_dropped
    out["shared_dropped"] = c.shared_dropped
    out["sessions_refused"] = c.sessions_refused
    out["retained_refused"] = c.retained_refused
    out["expired_total"] = out["expired"] + c.ended_expired
    out["rate_limited_total"] = out["rate_limited"] + c.ended_rate_limited
    plugins = broker.plugins
    out["plugin_errors"] = {f"{p}.{h}": n for (p, h), n in sorted(plugins.errors.items())}
    out["plugin_timeouts"] = {f"{p}.{h}": n for (p, h), n in sorted(plugins.timeouts.items())}
