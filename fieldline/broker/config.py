"""The broker's settings, in one place: ``BrokerConfig`` (limits and listeners) and
``Listener`` (one port). ``configfile.py`` reads them from a TOML file."""

from __future__ import annotations

import ipaddress
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("fieldline.broker")

# Drop policies for a session's queue of messages waiting for its client.
DROP_OLDEST = "drop_oldest"
DROP_NEW = "drop_new"

# Listener kinds: MQTT over TCP, over TLS, over WebSocket, over WebSocket on TLS.
MQTT = "mqtt"
MQTTS = "mqtts"
WS = "ws"
WSS = "wss"
KINDS = (MQTT, MQTTS, WS, WSS)
TLS_KINDS = (MQTTS, WSS)
WS_KINDS = (WS, WSS)
DEFAULT_PORTS = {MQTT: 1883, MQTTS: 8883, WS: 8080, WSS: 8443}
# Persistence durability levels (persist.py): nothing written, written in batches every
# persist_interval ms, or committed (fsync) before a QoS 1/2 PUBLISH is acknowledged.
NONE = "none"
BATCHED = "batched"
FULL = "full"
DURABILITIES = (NONE, BATCHED, FULL)
# Log formats and levels of `fieldline broker` (logs.py).
LOG_FORMATS = ("text", "json")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
LOG_LEVELS = ("debug", "info", "warning", "error")

ANY_PATH = "*"  # a WebSocket listener whose path is this accepts any request target
_KIND_DEFAULT = -1  # Listener.port not given: the kind's default port


def _loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def warn_if_exposed(path: str | Path, what: str, secret: bool = False) -> None:
    """Log a warning if other users of this machine could change the file at
    ``path`` (writable by its group or by everyone: they could give themselves access
    at the next reload) or, for a ``secret`` one, read it (readable by everyone), as
    Mosquitto does for its password and ACL files. Never raises."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing or unreadable: the caller says so
    exposed = []
    if mode & 0o022:
        exposed.append("writable by other users")
    if secret and mode & 0o004:
        exposed.append("readable by every user")
    if exposed:
        log.warning("%s: the %s is %s (chmod 600 it)", path, what, " and ".join(exposed))


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type or out of range; the message names it
    (and the file it came from)."""


@dataclass
class Listener:
    """One port the broker listens on.

    ``kind``: ``"mqtt"`` (TCP), ``"mqtts"`` (TLS), ``"ws"`` (WebSocket) or ``"wss"``
    (WebSocket over TLS). ``host``, ``port``: the address (port 0: a free one; the
    default depends on the kind: 1883, 8883, 8080, 8443). ``cert``, ``key``: the
    server's certificate chain and private key (PEM), required for mqtts and wss.
    ``ca``: CA certificates (PEM) that client certificates are checked against; a
    client that presents one signed by another CA is refused. ``crl``: certificate
    revocation lists (PEM) for ``ca``: a client whose certificate one of them revokes
    is refused at the handshake (needs ``ca``). ``require_certificate``:
    refuse clients without a certificate (needs ``ca``). ``use_identity_as_username``
    (Mosquitto's name): the client certificate's subject CN is the client's user name,
    for the ACL file and plug-ins, whatever user name and password the CONNECT holds
    (the password file is not asked: the TLS handshake proved who it is; needs
    ``require_certificate``). ``path``: the request target a WebSocket client must ask
    for (``"*"``: any). Raises ConfigError for a bad value.
    """

    kind: str = MQTT
    host: str = "127.0.0.1"
    port: int = _KIND_DEFAULT
    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    crl: str | None = None
    require_certificate: bool = False
    use_identity_as_username: bool = False
    path: str = "/mqtt"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown listener kind {self.kind!r} (one of {', '.join(KINDS)})")
        if self.port == _KIND_DEFAULT:
            self.port = DEFAULT_PORTS[self.kind]
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is out of range (0 to 65535)")
        if self.tls:
            if not self.cert or not self.key:
                raise ConfigError(f"an {self.kind} listener needs cert and key")
            if self.require_certificate and not self.ca:
                raise ConfigError("require_certificate needs ca (to check client certificates)")
            if self.crl and not self.ca:
                raise ConfigError("crl needs ca (the revocation lists are the CA's)")
            if self.use_identity_as_username and not self.require_certificate:
                raise ConfigError(
                    "use_identity_as_username needs require_certificate (every client "
                    "must have a certificate to take its name from)"
                )
        elif self.cert or self.key or self.ca or self.crl or self.require_certificate:
            raise ConfigError(
                f"cert, key, ca, crl and require_certificate apply to mqtts and wss "
                f"listeners, not {self.kind}"
            )
        elif self.use_identity_as_username:
            raise ConfigError(
                f"use_identity_as_username applies to mqtts and wss listeners, not {self.kind}"
            )
        if self.websocket and self.path != ANY_PATH and not self.path.startswith("/"):
            raise ConfigError(f"path {self.path!r} must start with '/' (or be '*': any)")

    @property
    def tls(self) -> bool:
        return self.kind in TLS_KINDS

    @property
    def websocket(self) -> bool:
        return self.kind in WS_KINDS

    @property
    def url(self) -> str:
        """``kind://host:port`` (and the path for WebSocket), e.g. for log lines."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = self.path if self.websocket and self.path != ANY_PATH else ""
        return f"{self.kind}://{host}:{self.port}{path}"

    def describe(self) -> str:
        """A short summary: the URL and what the listener asks of clients."""
        notes = []
        if self.websocket:
            notes.append("WebSocket" + (", any path" if self.path == ANY_PATH else ""))
        if self.tls:
            notes.append(
                "TLS, client certificate required, its CN the user name"
                if self.use_identity_as_username
                else "TLS, client certificate required"
                if self.require_certificate
                else "TLS, client certificate checked if sent"
                if self.ca
                else "TLS"
            )
            if self.crl:
                notes.append("revocation list checked")
        return self.url + (f" ({'; '.join(notes)})" if notes else "")


@dataclass
class BrokerConfig:
    """Limits, defaults and listeners of one broker.

    ``listeners``: the ports to listen on (``Listener``); when empty, one plain MQTT
    listener on ``host``:``port``. ``max_connections``: open connections, over all
    listeners, beyond which a CONNECT is refused (5.0: 0x97; 3.1.1: 3; 0: no limit).
    ``max_packet_size``: the largest packet a client may
    send (5.0 clients are told in CONNACK; a larger one ends the connection with
    0x95). ``receive_maximum``: QoS 2 messages a client may have unreleased at once
    (announced in 5.0). ``max_inflight``: QoS 1/2 messages the broker sends a client
    before waiting for acks (also capped by the client's own Receive Maximum).
    ``max_queued_messages``: messages a session holds for its client beyond those in
    flight, connected or not; ``max_queued_bytes``: the bytes they may hold (payload,
    topic and properties); beyond either ``queue_policy`` (``DROP_OLDEST`` or
    ``DROP_NEW``) drops messages and counts them. ``max_write_buffer``: bytes written to a
    connection but not yet taken by the network, above which messages wait in the
    queue instead (a stalled reader cannot grow memory). ``max_session_expiry``: cap
    on every session's expiry interval, 3.1.1 persistent ones included (seconds;
    None: no cap). ``max_keep_alive``: cap on the client's Keep Alive (5.0 clients get
    Server Keep Alive, 3.1.1 ones over it or at 0 are refused; None: no cap).
    ``topic_alias_maximum``: aliases a 5.0 client may use towards the broker.
    ``max_topic_aliases_out``: aliases the broker gives topics it sends a 5.0 client
    (also capped by the client's Topic Alias Maximum; 0: none). Each holds a topic
    for the life of the connection, so the cap bounds that memory.
    ``max_subscriptions``: subscriptions a session may hold; beyond it a SUBSCRIBE's
    new filters are refused (5.0: 0x97 Quota exceeded; 3.1.1: 0x80; 0: no limit).
    ``max_sessions``: sessions the broker keeps, connected or not; a CONNECT that
    would make one more is refused (5.0: 0x97; 3.1.1: 3, Server unavailable; 0: no
    limit). ``max_retained``: retained messages kept; a retained PUBLISH to a topic
    holding none beyond it is routed but not retained (5.0 QoS 1/2: answered 0x97;
    0: no limit).
    ``connect_timeout``: seconds a new connection has to finish its TLS and
    WebSocket handshakes and send its CONNECT. ``max_publish_rate``:
    PUBLISHes a second each client may send (a token bucket holding one second's
    worth; 0: no limit); beyond it they are dropped, QoS 1/2 ones answered 0x97
    (3.1.1: acknowledged as usual). ``password_file``,
    ``allow_anonymous``: who may connect; ``acl_file``: which topics each client may
    publish to and receive (none when set and no rule allows it; see acl.py).
    ``use_username_as_clientid``: a client's id is its user name, whatever id its
    CONNECT holds (Mosquitto's option): one user cannot take over another's
    session, and a client without a user name is refused.
    ``plugins``: plug-in objects, or ``"package.module:ClassName"`` strings the broker
    imports and instantiates when it starts, with the keyword arguments in
    ``plugin[ClassName]`` (see hooks.py). ``hook_timeout``: seconds an ``async`` hook
    may take (an authenticate that takes longer refuses with 0x88).
    ``persistence``: the SQLite file that retained messages and persistent sessions
    are kept in across restarts (None: in memory only). ``durability``: ``"none"``
    (write nothing), ``"batched"`` (write every ``persist_interval`` milliseconds; the
    default with a file) or ``"full"`` (acknowledge a QoS 1/2 PUBLISH once its effects
    are on disk); see persist.py.
    ``sys_interval``: seconds between updates of the ``$SYS`` topics (0: none; see
    sysinfo.py). ``metrics_port``: the port of the Prometheus endpoint ``/metrics``,
    on ``host`` (None: none; 0: a free one; see metrics.py). ``log_format``
    (``"text"`` or ``"json"``) and ``log_level``: how ``fieldline broker`` logs
    (logs.py). ``event_loop``: ``"auto"`` runs on uvloop when it is installed, else
    on asyncio's own loop; ``"asyncio"`` or ``"uvloop"`` choose (run.py).
    """

    host: str = "127.0.0.1"
    port: int = 1883
    listeners: list[Listener] = field(default_factory=list)
    max_connections: int = 10000
    max_packet_size: int = 1024 * 1024
    receive_maximum: int = 1024
    max_inflight: int = 100
    max_queued_messages: int = 1000
    max_queued_bytes: int = 1024 * 1024
    queue_policy: str = DROP_OLDEST
    max_write_buffer: int = 256 * 1024
    max_session_expiry: int | None = None
    max_keep_alive: int | None = None
    topic_alias_maximum: int = 16
    max_topic_aliases_out: int = 64
    max_subscriptions: int = 1000
    max_sessions: int = 0
    max_retained: int = 0
    connect_timeout: float = 10.0
    max_publish_rate: float = 0.0
    password_file: str | None = None
    allow_anonymous: bool | None = None
    acl_file: str | None = None
    use_username_as_clientid: bool = False
    plugins: list[Any] = field(default_factory=list)
    plugin: dict[str, dict[str, Any]] = field(default_factory=dict)
    hook_timeout: float = 5.0
    persistence: str | None = None
    durability: str | None = None
    persist_interval: int = 100
    sys_interval: float = 10.0
    metrics_port: int | None = None
    log_format: str = "text"
    log_level: str = "warning"
    event_loop: str = "auto"

    def __post_init__(self) -> None:
        if self.queue_policy not in (DROP_OLDEST, DROP_NEW):
            raise ConfigError(
                f"unknown queue_policy {self.queue_policy!r} ({DROP_OLDEST} or {DROP_NEW})"
            )
        if self.max_queued_messages < 1 or self.max_inflight < 1:
            raise ConfigError("max_queued_messages and max_inflight must be at least 1")
        if self.max_queued_bytes < 1:
            raise ConfigError("max_queued_bytes must be at least 1")
        if self.max_connections < 0:
            raise ConfigError("max_connections must be 0 (no limit) or more")
        if self.max_subscriptions < 0:
            raise ConfigError("max_subscriptions must be 0 (no limit) or more")
        if self.max_sessions < 0 or self.max_retained < 0:
            raise ConfigError("max_sessions and max_retained must be 0 (no limit) or more")
        if not 0 <= self.max_topic_aliases_out <= 65535:
            raise ConfigError("max_topic_aliases_out must be 0 (none) to 65535")
        if not 0 <= self.max_publish_rate < math.inf:  # TOML has nan and inf
            raise ConfigError("max_publish_rate must be 0 (no limit) or more")
        if self.allow_anonymous is False and not self.password_file:
            raise ConfigError(
                "allow_anonymous = false needs a password_file (no one could connect)"
            )
        if not 0 < self.hook_timeout < math.inf:
            raise ConfigError("hook_timeout must be more than 0")
        self._check_plugins()
        if self.durability is not None and self.durability not in DURABILITIES:
            raise ConfigError(
                f"unknown durability {self.durability!r} (one of {', '.join(DURABILITIES)})"
            )
        if self.durability in (BATCHED, FULL) and not self.persistence:
            raise ConfigError(
                f"durability {self.durability!r} needs a persistence file "
                '(persistence = "broker.db", or --persist FILE)'
            )
        if not 1 <= self.persist_interval <= 3_600_000:
            raise ConfigError("persist_interval must be 1 to 3600000 (milliseconds)")
        self._check_observability()
        seen: set[tuple[str, int]] = set()
        for listener in self.all_listeners():
            address = (listener.host, listener.port)
            if listener.port and address in seen:
                raise ConfigError(f"two listeners on {listener.host}:{listener.port}")
            seen.add(address)

    def _check_observability(self) -> None:
        if not 0 <= self.sys_interval < math.inf:
            raise ConfigError("sys_interval must be 0 (no $SYS topics) or more")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port {self.metrics_port} is out of range (0 to 65535)")
        if self.event_loop not in EVENT_LOOPS:
            raise ConfigError(
                f"unknown event_loop {self.event_loop!r} (one of {', '.join(EVENT_LOOPS)})"
            )
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(
                f"unknown log_format {self.log_format!r} (one of {', '.join(LOG_FORMATS)})"
            )
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(
                f"unknown log_level {self.log_level!r} (one of {', '.join(LOG_LEVELS)})"
            )

    def _check_plugins(self) -> None:
        names = set()
        for spec in self.plugins:
            if isinstance(spec, str):
                module_name, colon, name = spec.partition(":")
                if not colon or not module_name.strip() or not name.strip():
                    raise ConfigError(
                        f"plug-in {spec!r} must be written 'package.module:ClassName'"
                    )
                names.add(name.strip())
        for name in self.plugin:
            if name not in names:
                raise ConfigError(
                    f"[plugin.{name}] names no plug-in in plugins "
                    f"(its keys are the names after ':', e.g. 'package.module:{name}')"
                )

    @property
    def anonymous(self) -> bool:
        """Whether clients are accepted with no credentials checked: as
        ``allow_anonymous`` says, else only by a broker without a password file that
        listens on loopback alone. As Mosquitto 2 does, a broker others can reach
        from the network is closed until its configuration opens it."""
        if self.allow_anonymous is None:
            return not self.password_file and all(
                _loopback(listener.host) for listener in self.all_listeners()
            )
        return self.allow_anonymous

    @property
    def persist_level(self) -> str:
        """The durability in force: ``durability``, else "batched" with a persistence
        file and "none" without."""
        if self.durability is not None:
            return self.durability
        return BATCHED if self.persistence else NONE

    def all_listeners(self) -> list[Listener]:
        """``listeners``, or the one plain listener on ``host``:``port`` if it is empty."""
        return list(self.listeners) or [Listener(MQTT, self.host, self.port)]
