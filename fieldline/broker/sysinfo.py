"""The ``$SYS`` topics: the broker's counts published as retained QoS 0 messages every
``sys_interval`` seconds, named as Mosquitto names them (``$SYS/broker/uptime``,
``$SYS/broker/clients/connected``, ``$SYS/broker/load/publish/received/1min``, ...),
with ours under ``$SYS/broker/fieldline/``. Values are ASCII text, as Mosquitto's.

As Mosquitto does, a topic is published when its value changed (the first time: all of
them), and the load figures are exponentially weighted moving averages, per minute, over
1, 5 and 15 minutes. The messages are kept here, not in the router's retained store:
they are never written to the persistence file, never counted in ``stats()["retained"]``
and never shown to plug-ins; a subscriber gets the latest ones when it subscribes, the
ACL file deciding who may read them like any other topic. ``#`` and ``+/...`` never
match them (MQTT-4.7.2-1, the topic matcher's rule), and clients may not publish under
``$SYS`` (``is_sys_topic``, checked by the broker).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any

import fieldline
from fieldline.mqtt import topic_matches

from .message import Message

if TYPE_CHECKING:
    from .server import Broker

log = logging.getLogger("fieldline.broker")

PREFIX = "$SYS/broker/"
OURS = PREFIX + "fieldline/"
# Moving averages: topic suffix and window (seconds).
_WINDOWS = (("1min", 60.0), ("5min", 300.0), ("15min", 900.0))
# Load topics (under $SYS/broker/load/) and the stats() total each is the rate of.
_LOADS = (
    ("publish/received", "received"),
    ("publish/sent", "sent"),
    ("bytes/received", "bytes_in"),
    ("bytes/sent", "bytes_out"),
    ("publish/dropped", "dropped_total"),
    ("connections", "connections_total"),
)


def is_sys_topic(topic: str) -> bool:
    """Whether ``topic`` is ``$SYS`` or under it: the broker's own, where clients may not
    publish."""
    return topic == "$SYS" or topic.startswith("$SYS/")


class SysTopics:
    """Publishes ``broker.stats()`` under ``$SYS/broker/`` every ``interval`` seconds
    once ``start()`` is called (on the broker's loop), until ``stop()``. ``retained``:
    the latest message of each topic, for new subscribers (``retained_for``)."""

    def __init__(self, broker: Broker, interval: float) -> None:
        self.broker = broker
        self.interval = interval
        self.retained: dict[str, Message] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._started = 0.0
        self._last_time = 0.0
        self._last: dict[str, int] = {}
        self._loads: dict[str, float] = {}

    def start(self) -> None:
        """Publish now, then every ``interval`` seconds."""
        loop = self.broker.loop
        self._started = self._last_time = loop.time()
        self.publish()
        self._timer = loop.call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def retained_for(self, topic_filter: str) -> list[Message]:
        """The latest ``$SYS`` messages matching ``topic_filter``."""
        if not topic_filter.startswith("$"):
            return []  # MQTT-4.7.2-1: only a filter naming "$SYS" can match
        return [m for t, m in self.retained.items() if topic_matches(topic_filter, t)]

    def _tick(self) -> None:
        try:
            self.publish()
        except Exception:  # a bug here must not stop the broker, nor the next update
            log.exception("cannot publish the $SYS topics")
        self._timer = self.broker.loop.call_later(self.interval, self._tick)

    def publish(self) -> None:
        """Publish the values that changed since the last call, retained, at QoS 0."""
        broker = self.broker
        now = broker.loop.time()
        for topic, value in self.values(now).items():
            payload = value.encode()
            old = self.retained.get(topic)
            if old is not None and old.payload == payload:
                continue
            m = Message(topic, payload, 0, True, None, now)
            self.retained[topic] = m
            broker._deliver(m)

    def values(self, now: float) -> dict[str, str]:
        """Every ``$SYS`` topic and its value at loop time ``now`` (and the moving
        averages brought up to ``now``)."""
        st = self.broker.stats()
        self._update_loads(st, now)
        out = {
            "version": f"fieldline version {fieldline.__version__}",
            "uptime": f"{int(now - self._started)} seconds",
            "clients/connected": st["connected"],
            "clients/disconnected": st["offline"],
            "clients/total": st["sessions"],
            "clients/maximum": st["clients_maximum"],
            "subscriptions/count": st["subscriptions"],
            "retained messages/count": st["retained"],
            "publish/messages/received": st["received"],
            "publish/messages/dropped": st["dropped_total"],
            "publish/bytes/received": st["received_bytes"],
            "publish/messages/sent": st["sent"],
            "publish/bytes/sent": st["sent_bytes"],
            "bytes/received": st["bytes_in"],
            "bytes/sent": st["bytes_out"],
        }
        for name, _ in _LOADS:
            for suffix, _ in _WINDOWS:
                key = f"load/{name}/{suffix}"
                out[key] = f"{self._loads.get(key, 0.0):.2f}"
        ours: dict[str, Any] = {
            "connections/open": st["connections"],
            "connections/total": st["connections_total"],
            "connections/refused": sum(st["refused"].values()),
            "publish/messages/denied": st["denied"],
            "publish/messages/rate_limited": st["rate_limited_total"],
            "messages/expired": st["expired_total"],
            "messages/shared_dropped": st["shared_dropped"],
            "messages/queued": st["queued"],
            "messages/queued_bytes": st["queued_bytes"],
            "messages/inflight": st["inflight"],
        }
        topics = {PREFIX + k: str(v) for k, v in out.items()}
        topics.update((OURS + k, str(v)) for k, v in ours.items())
        return topics

    def _update_loads(self, st: dict[str, Any], now: float) -> None:
        dt = now - self._last_time
        if dt <= 0:
            for _, total in _LOADS:
                self._last.setdefault(total, st[total])
            return
        self._last_time = now
        for name, total in _LOADS:
            value = st[total]
            rate = (value - self._last.get(total, value)) * 60.0 / dt  # per minute
            self._last[total] = value
            for suffix, window in _WINDOWS:
                key = f"load/{name}/{suffix}"
                e = math.exp(-dt / window)
                self._loads[key] = self._loads.get(key, 0.0) * e + rate * (1.0 - e)
