"""The broker's settings, in one place (a TOML file and more flags come later)."""

from __future__ import annotations

from dataclasses import dataclass

# Drop policies for a session's queue of messages waiting for its client.
DROP_OLDEST = "drop_oldest"
DROP_NEW = "drop_new"


@dataclass
class BrokerConfig:
    """Limits and defaults of one broker.

    ``max_packet_size``: the largest packet a client may send (5.0 clients are told in
    CONNACK; a larger one ends the connection with 0x95). ``receive_maximum``: QoS 2
    messages a client may have unreleased at once (announced in 5.0). ``max_inflight``:
    QoS 1/2 messages the broker sends a client before waiting for acks (also capped by
    the client's own Receive Maximum). ``max_queued_messages``: messages a session holds
    for its client beyond those in flight, connected or not; beyond it ``queue_policy``
    (``DROP_OLDEST`` or ``DROP_NEW``) drops one and counts it. ``max_write_buffer``:
    bytes written to a connection but not yet taken by the network, above which
    messages wait in the queue instead (a stalled reader cannot grow memory).
    ``max_session_expiry``: cap on the Session Expiry Interval a client asks for
    (seconds; None: no cap). ``max_keep_alive``: cap on the client's Keep Alive (5.0
    clients get Server Keep Alive; None: no cap). ``topic_alias_maximum``: aliases a
    5.0 client may use towards the broker. ``connect_timeout``: seconds a new
    connection has to send its CONNECT.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    max_packet_size: int = 1024 * 1024
    receive_maximum: int = 1024
    max_inflight: int = 100
    max_queued_messages: int = 1000
    queue_policy: str = DROP_OLDEST
    max_write_buffer: int = 256 * 1024
    max_session_expiry: int | None = None
    max_keep_alive: int | None = None
    topic_alias_maximum: int = 16
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.queue_policy not in (DROP_OLDEST, DROP_NEW):
            raise ValueError(f"unknown queue_policy {self.queue_policy!r}")
        if self.max_queued_messages < 1 or self.max_inflight < 1:
            raise ValueError("max_queued_messages and max_inflight must be at least 1")
