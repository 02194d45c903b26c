"""Prometheus metrics: ``GET /metrics`` on ``metrics_port`` answers with the broker's
counts in the Prometheus text format (or OpenMetrics, if the scraper asks for it).

The format comes from ``prometheus_client`` (the ``metrics`` extra: ``pip install
'fieldline[metrics]'``), the project the format belongs to: it gets the escaping,
``# HELP``/``# TYPE`` lines, the ``_total`` suffixes and content negotiation right and
follows the format's changes, which a hand-written exporter would have to. It is
imported only when ``metrics_port`` is set, so the broker still needs nothing beyond
the standard library otherwise.

Its own HTTP servers (``start_http_server``, the WSGI and ASGI apps) are not used: they
run the collectors in another thread, which would read the sessions while the event
loop changes them. Here a small asyncio HTTP/1.1 server runs on the broker's loop, and
``BrokerCollector`` reads ``Broker.stats()`` when a scrape arrives, between two events:
the numbers agree with each other, nothing is counted twice, and nothing costs anything
between scrapes. A scrape takes about as long as ``stats()`` (a pass over the sessions:
a few milliseconds for ten thousand).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .config import ConfigError

if TYPE_CHECKING:
    from .server import Broker

log = logging.getLogger("fieldline.broker")

PREFIX = "fieldline_broker_"
_REQUEST_TIMEOUT = 10.0  # seconds a scraper has to send its request
_MAX_REQUEST = 16384  # bytes of request line and headers


class BrokerCollector:
    """A prometheus_client collector: the metrics of ``broker`` as of each scrape. Call
    ``collect()`` on the broker's loop."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def describe(self) -> list[Any]:
        return []  # nothing to check at registration: collect() runs at scrape time only

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        st = self.broker.stats()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(PREFIX + name, doc, value=value)

        yield gauge("connections_open", "Open network connections (CONNECT or not yet)",
                    st["connections"])  # fmt: skip
        yield gauge("clients_connected", "Clients connected (CONNECT accepted)", st["connected"])
        yield gauge("clients_maximum", "The most clients connected at once", st["clients_maximum"])
        sessions = GaugeMetricFamily(PREFIX + "sessions", "Sessions, by state", labels=["state"])
        sessions.add_metric(["online"], st["connected"])
        sessions.add_metric(["offline"], st["offline"])
        yield sessions
        yield gauge("subscriptions", "Subscriptions of all sessions", st["subscriptions"])
        yield gauge("retained_messages", "Retained messages ($SYS ones aside)", st["retained"])
        yield gauge("queued_messages", "Messages queued for sessions", st["queued"])
        yield gauge("queued_bytes", "Bytes of the queued messages", st["queued_bytes"])
        yield gauge("inflight_messages", "QoS 1/2 messages sent and not yet acknowledged",
                    st["inflight"])  # fmt: skip
        yield counter("connections_accepted", "CONNECTs accepted", st["connections_total"])
        refused = CounterMetricFamily(
            PREFIX + "connections_refused",
            "CONNECTs refused, by reason code (MQTT 5.0 numbering)",
            labels=["reason_code"],
        )
        for code, n in sorted(st["refused"].items()):
            refused.add_metric([f"0x{code:02X}"], n)
        yield refused
        received = CounterMetricFamily(
            PREFIX + "messages_received", "PUBLISHes received from clients, by QoS", labels=["qos"]
        )
        for qos, n in enumerate(st["received_qos"]):
            received.add_metric([str(qos)], n)
        yield received
        yield counter("publish_received_bytes", "Payload bytes of the PUBLISHes received",
                      st["received_bytes"])  # fmt: skip
        sent = CounterMetricFamily(
            PREFIX + "messages_sent", "PUBLISHes sent to clients, by QoS", labels=["qos"]
        )
        for qos, n in enumerate(st["sent_qos"]):
            sent.add_metric([str(qos)], n)
        yield sent
        yield counter("publish_sent_bytes", "Payload bytes of the PUBLISHes sent",
                      st["sent_bytes"])  # fmt: skip
        yield counter("received_bytes", "MQTT packet bytes read from clients",
                      st["bytes_in"])  # fmt: skip
        yield counter("sent_bytes", "MQTT packet bytes written to clients",
                      st["bytes_out"])  # fmt: skip
        yield counter("messages_dropped", "Deliveries dropped: queue limits, too large "
                      "for the client, no shared subscriber left", st["dropped_total"])  # fmt: skip
        yield counter("shared_dropped", "Deliveries an ended shared subscriber left that no "
                      "member of its group was left to take", st["shared_dropped"])  # fmt: skip
        yield counter("messages_expired", "Queued deliveries whose Message Expiry Interval "
                      "ran out", st["expired_total"])  # fmt: skip
        yield counter("publish_rate_limited", "PUBLISHes dropped for max_publish_rate",
                      st["rate_limited_total"])  # fmt: skip
        yield counter("publish_denied", "PUBLISHes refused: ACL, plug-in or $SYS topic",
                      st["denied"])  # fmt: skip
        yield counter("sessions_refused", "CONNECTs refused for max_sessions",
                      st["sessions_refused"])  # fmt: skip
        yield counter("retained_refused", "Retained messages not kept for max_retained "
                      "(routed all the same)", st["retained_refused"])  # fmt: skip
        for key, doc in (
            ("plugin_errors", "Plug-in hook calls that raised"),
            ("plugin_timeouts", "Plug-in hook calls that took over hook_timeout"),
        ):
            family = CounterMetricFamily(PREFIX + key, doc, labels=["plugin", "hook"])
            for label, n in st[key].items():
                family.add_metric(label.rsplit(".", 1), n)
            yield family


class MetricsServer:
    """The HTTP endpoint: ``GET /metrics`` (and HEAD) on the broker's loop; any other
    path is 404, any other method 405. One request per connection. ``port``: the
    port bound (the one picked, for port 0)."""

    def __init__(self, broker: Broker) -> None:
        try:
            from prometheus_client import CollectorRegistry
        except ImportError as e:
            raise ConfigError(
                f"metrics_port needs prometheus_client ({e}): pip install 'fieldline[metrics]'"
            ) from None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BrokerCollector(broker))
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()  # connections being served
        self.host = broker.config.host
        self.port = broker.config.metrics_port or 0

    async def start(self) -> None:
        """Listen on the broker's ``host`` and ``metrics_port``. Raises OSError if it
        cannot be bound."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def close(self) -> None:
        """Stop listening and close the connections still open: a scraper that sent
        half a request must not hold the broker's shutdown (Python 3.12's
        ``wait_closed()`` waits for every connection)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            for writer in list(self._open):
                writer.close()
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            await self._respond(reader, writer)
        finally:
            self._open.discard(writer)

    async def _respond(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _REQUEST_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            writer.close()
            return
        try:
            status, content_type, body = self._answer(head)
        except Exception:  # a bug in a collector: the scraper gets 500, the broker goes on
            log.exception("metrics: the scrape failed")
            status, content_type, body = "500 Internal Server Error", "text/plain", b"error\n"
        method = head.split(b" ", 1)[0]
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        )
        if method != b"HEAD":
            writer.write(body)
        try:
            await writer.drain()
        except OSError:
            pass
        writer.close()

    def _answer(self, head: bytes) -> tuple[str, str, bytes]:
        from prometheus_client.exposition import choose_encoder

        lines = head[:_MAX_REQUEST].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return "400 Bad Request", "text/plain", b"bad request\n"
        method, target, _ = parts
        if target.split("?", 1)[0] != "/metrics":
            return "404 Not Found", "text/plain", b"not found: try /metrics\n"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET /metrics\n"
        accept = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        encoder, content_type = choose_encoder(accept)
        return "200 OK", content_type, encoder(self.registry)
