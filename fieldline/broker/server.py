"""The broker: its listeners, and what happens on an accepted CONNECT (who may
connect is login.py's), PUBLISH, SUBSCRIBE, UNSUBSCRIBE and the end of a connection.
Connections (``connection.py``) turn bytes into those events; the router decides who
gets a message; the session store keeps what outlives a connection; wills.py publishes
a connection's Will when it ends."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import socket
import ssl
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from fieldline.mqtt import (
    Connect,
    LocalProtocolError,
    Publish,
    RemoteProtocolError,
    Session,
    Subscribe,
    Unsubscribe,
    validate_topic_filter,
    validate_topic_name,
)

from . import wills
from .acl import Acl, Permissions
from .config import DROP_OLDEST, NONE, BrokerConfig, ConfigError, Listener
from .connection import Connection
from .counters import Counters, add_stats
from .hooks import (
    ON_CONNECT,
    ON_DISCONNECT,
    ON_MESSAGE,
    ON_RELOAD,
    Plugins,
    Verdict,
    load_plugins,
)
from .limits import TokenBucket
from .login import Login
from .logs import fields
from .message import Delivery, Message, wildcard_response_topic
from .metrics import MetricsServer
from .passwords import Passwords
from .persist import Persistence
from .router import Entry, Router
from .sessions import ClientSession, SessionStore
from .sysinfo import SysTopics, is_sys_topic
from .tls import ListenerTls

# Settings a reload does not change: what the broker set up when it started.
RESTART_ONLY = (
    "host", "port", "listeners", "plugins", "plugin", "persistence", "durability",
    "persist_interval", "sys_interval", "metrics_port", "log_format", "event_loop",
)  # fmt: skip

if TYPE_CHECKING:
    from .websocket import WebSocketProtocol

log = logging.getLogger("fieldline.broker")

NEVER = 0xFFFFFFFF  # Session Expiry Interval: the session never expires
_MQTT5 = 5
_NO_MATCHING_SUBSCRIBERS = 0x10
_NO_SUBSCRIPTION_EXISTED = 0x11
_UNSPECIFIED_ERROR = 0x80
_PROTOCOL_ERROR = 0x82
_NOT_AUTHORIZED = 0x87
_CLOSED = 3  # Session.state after a refusing 3.1.1 ack
_SERVER_SHUTTING_DOWN = 0x8B
_SESSION_TAKEN_OVER = 0x8E
_TOPIC_FILTER_INVALID = 0x8F
_QUOTA_EXCEEDED = 0x97

# A message published from a plug-in's on_message hook is routed after the one being
# notified, and a chain of them (a hook republishing what it hears, or two hooks
# answering each other) is cut after MAX_HOOK_HOPS: beyond it broker.publish() drops
# the message with a warning. _HOOK_HOPS is the chain length a publish() would make:
# set while on_message runs, and copied by asyncio into the task of an async hook.
MAX_HOOK_HOPS = 8
_HOOK_HOPS: ContextVar[int] = ContextVar("fieldline_broker_hook_hops", default=0)


class Broker:
    """An MQTT 3.1.1 and 5.0 broker, in memory or kept in an SQLite file
    (``persistence``, see persist.py).

    ``Broker(host, port, **options)``: ``options`` are ``BrokerConfig`` fields, or pass
    a whole ``config=BrokerConfig(...)``. Without ``listeners=[Listener(...), ...]``
    it listens for plain MQTT on ``host``:``port``. Port 0 picks a free port;
    ``.port`` (the first listener's) and ``.listening`` say which once started. Use
    ``await start()`` and ``await stop()``, or ``async with Broker(...) as broker``.
    ``BrokerThread`` runs one in a thread. ``plugins=[...]``: objects whose hooks
    authenticate, authorize and observe clients (see hooks.py and docs/broker.md).
    """

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        config: BrokerConfig | None = None,
        **options: Any,
    ) -> None:
        if host is not None:
            options["host"] = host
        if port is not None:
            options["port"] = port
        self.config = replace(config or BrokerConfig(), **options)
        self.router = Router()
        self.sessions = SessionStore()
        self.connections: set[Connection] = set()
        self.passwords: Passwords | None = None  # read from password_file by start()
        self.acl: Acl | None = None  # read from acl_file by start()
        self.plugins = Plugins()  # made from config.plugins by start()
        self.login = Login(self)  # who may connect (login.py)
        self.refused_connections = 0  # CONNECTs refused for max_connections
        self.persist: Persistence | None = None  # opened by start() with a persistence file
        self.counters = Counters()  # broker-wide counts (counters.py)
        self.sys: SysTopics | None = None  # the $SYS topics, run by start() (sysinfo.py)
        self.metrics: MetricsServer | None = None  # /metrics, served by start() (metrics.py)
        self._checks: set[asyncio.Task[None]] = set()
        self._servers: list[asyncio.Server] = []
        self._tls: list[ListenerTls] = []
        self._stopping = False
        self._routing = False  # inside _route(): a nested one waits in _later
        self._later: deque[Message] = deque()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()

    @property
    def host(self) -> str:
        """The first listener's host."""
        return self.listening[0].host

    @property
    def port(self) -> int:
        """The first listener's port (the one picked, once started with port 0)."""
        return self.listening[0].port

    @property
    def listening(self) -> list[Listener]:
        """The listeners, with the ports picked for port 0 once started."""
        listeners = self.config.all_listeners()
        if len(self._servers) != len(listeners):
            return listeners
        out = []
        for listener, server in zip(listeners, self._servers, strict=True):
            port = server.sockets[0].getsockname()[1] if server.sockets else listener.port
            out.append(replace(listener, port=port))
        return out

    async def start(self) -> None:
        """Read the password and ACL files, load the plug-ins, load what the
        persistence file holds, start the plug-ins (their ``start(broker)``: they may
        publish already) and listen on every listener. Raises ConfigError if one of
        the files or a TLS file cannot be used, or a plug-in cannot be loaded or
        started (before listening on any), PersistenceError if the persistence file
        cannot be used, OSError if an address cannot be bound (the listeners already
        open are closed again, the plug-ins stopped)."""
        self.loop = asyncio.get_running_loop()
        self._stopping = False
        cfg = self.config
        self.passwords = Passwords.load(cfg.password_file) if cfg.password_file else None
        self.acl = Acl.load(cfg.acl_file) if cfg.acl_file else None
        self.plugins = Plugins(load_plugins(cfg.plugins, cfg.plugin), cfg.hook_timeout)
        listeners = cfg.all_listeners()
        self._tls = [ListenerTls(li) for li in listeners if li.tls]
        tls = iter(self._tls)
        contexts = [next(tls).context if li.tls else None for li in listeners]
        metrics = None if cfg.metrics_port is None else MetricsServer(self)
        if cfg.persistence and cfg.persist_level != NONE:
            self.persist = Persistence(cfg.persistence, cfg.persist_level, cfg.persist_interval)
            self.persist.load(self)
        try:
            await self.plugins.start(self)
            if self.persist is not None:
                wills.restore(self, self.persist)
            for listener, ctx in zip(listeners, contexts, strict=True):
                self._servers.append(await self._listen(listener, ctx))
            if metrics is not None:
                await metrics.start()
                self.metrics = metrics
        except BaseException:
            for server in self._servers:
                server.close()
            self._servers = []
            await self.plugins.stop()
            if self.persist is not None:
                await self.persist.close(self.refused_connections)
                self.persist = None
            raise
        for listener in self.listening:
            log.info("listening on %s", listener.url)
        if cfg.sys_interval > 0:
            self.sys = SysTopics(self, cfg.sys_interval)
            self.sys.start()

    async def _listen(self, listener: Listener, ctx: ssl.SSLContext | None) -> asyncio.Server:
        factory: Callable[[], asyncio.Protocol]
        if listener.websocket:
            ws_protocol = _websocket_protocol()
            path = listener.path

            def factory() -> asyncio.Protocol:
                return ws_protocol(Connection(self, listener), path)
        else:

            def factory() -> asyncio.Protocol:
                return Connection(self, listener)

        # The handshake has connect_timeout; the Connection, made at the accept,
        # counts its own connect_timeout from then too: one deadline covers the
        # handshake and the CONNECT. (asyncio tells the protocol nothing before the
        # handshake ends, nor at all if it fails, so max_connections cannot count
        # connections still in their handshake: see docs/broker.md, Listeners.)
        timeout = self.config.connect_timeout if ctx is not None else None
        # The listen queue as long as the kernel allows (asyncio's default is 100):
        # a burst of devices reconnecting after an outage must not wait for SYN
        # retransmissions.
        return await self.loop.create_server(
            factory,
            listener.host,
            listener.port,
            ssl=ctx,
            ssl_handshake_timeout=timeout,
            backlog=socket.SOMAXCONN,
        )

    async def stop(self) -> None:
        """Stop listening and close every connection (5.0 clients get DISCONNECT 0x8B).
        Wills of closed connections are not published now: the broker is going away
        (with persistence they are when it starts again: ``wills.restore``). Waits
        for the plug-ins' notifications still running (hook_timeout at most), then
        calls their ``stop()`` (before the persistence file is closed: what they
        publish is kept)."""
        self._stopping = True
        if self.sys is not None:
            self.sys.stop()
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()  # first: no new MQTT connection while the rest winds down
        if self.metrics is not None:
            await self.metrics.close()
            self.metrics = None
        for conn in list(self.connections):
            conn.close(_SERVER_SHUTTING_DOWN)
        for task in list(self._checks):
            task.cancel()
        for server in servers:
            await server.wait_closed()
        await self.plugins.drain()
        await self.plugins.stop()
        await self.plugins.drain()  # notifications of what stop() published
        for cs in self.sessions.sessions.values():
            cs.cancel_timers()
        if self.persist is not None:
            await self.persist.close(self.refused_connections)
            self.persist = None

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def publish(
        self,
        topic: str,
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        properties: dict[str, Any] | None = None,
    ) -> None:
        """Publish from inside the broker (call on its event loop). Raises
        LocalProtocolError for an invalid topic name. Called from a plug-in's
        ``on_message`` hook, the message is routed once the one being notified is
        (not inside it: no recursion), and a chain of such publishes longer than
        ``MAX_HOOK_HOPS`` is dropped with a warning (a plug-in that hears its own
        messages would loop). Raises LocalProtocolError (0x82) for a Response Topic
        with a wildcard (MQTT-3.3.2-14)."""
        validate_topic_name(topic)
        if wildcard_response_topic(properties):
            raise LocalProtocolError(_PROTOCOL_ERROR, "a Response Topic has no wildcards")
        hops = _HOOK_HOPS.get()
        if hops > MAX_HOOK_HOPS:
            log.warning("broker.publish() to %r from an on_message hook, %d deep: dropped, "
                        "a plug-in loop? (MAX_HOOK_HOPS %d)", topic, hops, MAX_HOOK_HOPS,
                        extra={"topic": topic})  # fmt: skip
            return
        now = self.loop.time()
        self._route(Message(topic, payload, qos, retain, properties, now, hops=hops))

    def stats(self) -> dict[str, Any]:
        """Counts: sessions, connected, queued, queued_bytes, dropped, expired,
        rate_limited (PUBLISHes over max_publish_rate), connections,
        connections_refused (max_connections), subscriptions, retained."""
        out = self.sessions.stats()
        out["connections"] = len(self.connections)
        out["connections_refused"] = self.refused_connections
        out["subscriptions"] = len(self.router.tree)
        out["retained"] = len(self.router.retained)
        add_stats(self, out)  # connections_total, refused, received, ... (counters.py)
        return out

    # -- events from connections --------------------------------------------------

    def storage_summary(self) -> str:
        """Where state is kept, for the start-up line."""
        p = self.persist
        if p is None:
            return "in memory"
        n = p.loaded
        return (f"persistence {p.path} (durability {p.durability}; loaded {n['sessions']} "
                f"sessions, {n['retained']} retained messages)")  # fmt: skip

    def touch(self, cs: ClientSession) -> None:
        """``cs``'s queue or messages in flight may have changed: persist them."""
        if self.persist is not None:
            self.persist.touch(cs)

    def reload(self, config: BrokerConfig | None = None) -> bool:
        """Read the password file, the ACL file and the TLS listeners' files (cert,
        key, ca, crl) again (``fieldline broker`` does on SIGHUP; call on the broker's
        loop), so users, rules, certificates and revocations change without a
        restart. Connected clients stay connected; the new passwords and TLS files
        apply from the next connection, the new ACL at once to every session (its next
        PUBLISH, SUBSCRIBE and delivery). Returns False if a file could not be read or
        parsed: what it held before stays in force (never nothing: that would let
        everyone in) and the error is logged; the other files are still reloaded.

        ``config``: the settings read again too (``fieldline broker --config``
        passes its file's, flags laid over): the limits and the file names apply
        from now on (a connection's own limits, such as its Maximum Packet Size, from
        its next CONNECT); what only a start can change (``RESTART_ONLY``: listeners,
        persistence, plug-ins, ...) is kept, with a warning if it differs."""
        if config is not None:
            self._take_config(config)
        ok = self.login.reload()
        for tls in self._tls:
            try:
                tls.reload()
            except ConfigError as e:
                log.error("reload: %s; the TLS files read before stay in force", e)
                ok = False
            else:
                log.info("reload: TLS files of %s read again", tls.listener.url)
        self.plugins.notify(ON_RELOAD)  # their own files, if they have any
        return ok

    def _take_config(self, new: BrokerConfig) -> None:
        old = self.config
        kept = {name: getattr(old, name) for name in RESTART_ONLY}
        for name, value in kept.items():
            if getattr(new, name) != value:
                log.warning("reload: %s changed; it takes effect at the next start", name)
        self.config = cfg = replace(new, **kept)
        names = [f.name for f in dataclasses.fields(cfg)]
        changed = [n for n in names if getattr(cfg, n) != getattr(old, n)]
        if changed:
            log.info("reload: %s", ", ".join(f"{n} = {getattr(cfg, n)!r}" for n in changed))
        self.plugins.timeout = cfg.hook_timeout
        logging.getLogger("fieldline").setLevel(cfg.log_level.upper())

    def auth_summary(self) -> str:
        """How clients are authenticated, for the start-up line."""
        return self.login.summary()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` (a decision a connection waits for) in a task stop() cancels."""
        task = self.loop.create_task(coro)
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    def accept(self, conn: Connection, p: Connect, auth_data: bytes | None = None) -> None:
        """Accept the CONNECT ``p`` that login.py let in (``p.username`` is the client's
        user name: a certificate's CN, maybe): take over or resume its session, answer
        with CONNACK (carrying ``auth_data``, an enhanced authentication's last word)
        and start delivering."""
        s = conn.session
        props = p.properties or {}
        v5 = p.protocol_level == _MQTT5
        cfg = self.config
        conn.window = min(cfg.max_inflight, s.peer_receive_maximum)
        answer: dict[str, Any] = {}
        if auth_data is not None:
            answer["authentication_data"] = auth_data  # an enhanced exchange's last word
        if v5:
            e = props.get("session_expiry_interval", 0)
            cap = cfg.max_session_expiry
            if cap is not None and e > cap:
                answer["session_expiry_interval"] = cap
        ka = cfg.max_keep_alive
        if v5 and ka is not None and (p.keep_alive == 0 or p.keep_alive > ka):
            answer["server_keep_alive"] = ka
        client_id = p.client_id
        assigned = None
        if not s.client_id:  # the CONNECT's was empty: one is assigned (MQTT-3.1.3-6)
            # The user name under use_username_as_clientid (login.py), else a new id.
            client_id = assigned = client_id or "auto-" + uuid.uuid4().hex
        old = self.sessions.get(client_id)
        if old is not None and old.conn is not None:
            log.info("%s takes over client id %r", conn.peer, client_id)
            old.conn.close(_SESSION_TAKEN_OVER)  # MQTT-3.1.4-3
            old = self.sessions.get(client_id)  # gone if its expiry was 0
        if old is not None:
            if old.expiry_timer is not None:
                old.expiry_timer.cancel()
                old.expiry_timer = None
            if old.will_timer is not None and not p.clean_start:
                # Back before the Will Delay Interval passed: no Will (MQTT-3.1.3-9).
                old.will_timer.cancel()
                old.will_timer = None
                if self.persist is not None and old.pending_will is not None:
                    self.persist.will_gone(client_id, old.pending_will)
                old.pending_will = None
        now = self.loop.time()
        resume = old.session if old is not None and old.session.resumable(now) else None
        perms = None if self.acl is None else self.acl.permissions(p.username, client_id)
        unreadable = 0 if resume is None or perms is None else _drop_unreadable(resume, perms)
        if resume is not None and old is not None and old.expiry:
            old.refresh_expiry(now)  # before accept() sends them again
        # The client's Topic Alias Maximum caps the aliases we assign (MQTT-3.3.2-9);
        # ours caps the table of topics they hold for the life of the connection.
        if s.peer_topic_alias_maximum > cfg.max_topic_aliases_out:
            s.peer_topic_alias_maximum = cfg.max_topic_aliases_out
        present = s.accept(answer or None, assigned, resume)
        self._cap_expiry(s)
        if old is not None and present:
            cs = old
            cs.session = s
        else:
            if old is not None:
                self._end_session(old)
            cs = ClientSession(client_id, s)
            self.sessions.add(cs)
        cs.conn = conn
        cs.username = p.username
        cs.set_permissions(perms)  # the queue is checked again: maybe another user's now
        cs.dropped += unreadable
        if self.persist is not None:
            self.persist.connected(cs)
        conn.client = cs
        conn.will = p.will
        if p.will is not None and self.persist is not None:
            self.persist.will(client_id, p.will, p.username)
        conn.username = p.username
        conn.start_keepalive()
        conn.pump()
        self.counters.connections += 1
        c = self.counters
        c.online += 1
        if c.online > c.maximum:
            c.maximum = c.online
        log.info("%s client id %r connected (MQTT %s%s)", conn.peer, client_id,
                 "5.0" if v5 else "3.1.1", ", session present" if present else "",
                 extra=fields(conn, protocol=p.protocol_level))  # fmt: skip
        self.plugins.notify(ON_CONNECT, client_id, p.username, conn.peer)

    def on_publish(self, conn: Connection, p: Publish) -> None:
        cs = conn.client
        assert cs is not None  # the session delivers PUBLISH only once connected
        if wildcard_response_topic(p.properties):
            # MQTT-3.3.2-14: a MUST broken, a Protocol Error (4.13); the codec does not
            # check it. Mosquitto answers so too (mosquitto_property_check_all).
            log.info("%s client id %r: PUBLISH to %r with a wildcard in its Response "
                     "Topic: protocol error", conn.peer, cs.client_id, p.topic,
                     extra=fields(conn, topic=p.topic, reason_code=_PROTOCOL_ERROR))  # fmt: skip
            conn.close(_PROTOCOL_ERROR)
            return
        now = self.loop.time()
        rate = self.config.max_publish_rate
        if rate:
            bucket = cs.bucket
            if bucket is None:
                bucket = cs.bucket = TokenBucket(rate, now)
            if not bucket.take(now):
                cs.rate_limited += 1
                if p.qos:
                    # 5.0: 0x97 Quota exceeded; 0x96 Message rate too high is a DISCONNECT
                    # code, not one PUBACK/PUBREC may carry (3.4.2.1, 3.5.2.1). 3.1.1
                    # has no code: acked and dropped, as for an ACL denial below.
                    v5 = conn.session.version == _MQTT5
                    self._answer(cs, p.packet_id, p.qos, _QUOTA_EXCEEDED if v5 else 0)
                return
        self.counters.received[p.qos] += 1
        self.counters.received_bytes += len(p.payload)
        if is_sys_topic(p.topic):
            # $SYS belongs to the broker (MQTT 4.7.2): refused as an ACL denial is.
            self.counters.denied += 1
            log.info("%s client id %r: PUBLISH to %r refused, $SYS is the broker's",
                     conn.peer, cs.client_id, p.topic, extra=fields(conn, topic=p.topic,
                     reason_code=_NOT_AUTHORIZED))  # fmt: skip
            if p.qos:
                v5 = conn.session.version == _MQTT5
                self._answer(cs, p.packet_id, p.qos, _NOT_AUTHORIZED if v5 else 0)
            return
        perms = cs.permissions
        if perms is not None and not perms.can_write(p.topic):
            self.counters.denied += 1
            log.info("%s client id %r: PUBLISH to %r denied by the ACL", conn.peer,
                     cs.client_id, p.topic, extra=fields(conn, topic=p.topic,
                     reason_code=_NOT_AUTHORIZED))  # fmt: skip
            if p.qos:
                # 5.0: 0x87 (3.3.4). 3.1.1 has no code: a positive ack, message dropped
                # (MQTT-3.3.5-2 allows it; closing would make the client resend forever).
                v5 = conn.session.version == _MQTT5
                self._answer(cs, p.packet_id, p.qos, _NOT_AUTHORIZED if v5 else 0)
            return
        verdict = self.plugins.authorize_publish(
            cs.client_id, conn.username, p.topic, p.qos, p.retain
        )
        if inspect.isawaitable(verdict):
            conn.hold()  # its later packets wait: they stay in order
            self.spawn(self._publish_later(conn, cs, p, verdict))
        else:
            self._publish(conn, cs, p, verdict)

    async def _publish_later(
        self, conn: Connection, cs: ClientSession, p: Publish, verdict: Awaitable[Verdict]
    ) -> None:
        # Even if the connection ended meanwhile: the session owes the answer (ack()).
        self._publish(conn, cs, p, await verdict)
        conn.release()

    def _publish(self, conn: Connection, cs: ClientSession, p: Publish, verdict: Verdict) -> None:
        if verdict:
            self.counters.denied += 1
            log.info("%s client id %r: PUBLISH to %r refused by a plug-in (0x%02X)",
                     conn.peer, cs.client_id, p.topic, verdict,
                     extra=fields(conn, topic=p.topic, reason_code=verdict))  # fmt: skip
            if p.qos:
                # 3.1.1: acked and dropped, as for the ACL above.
                v5 = conn.session.version == _MQTT5
                self._answer(cs, p.packet_id, p.qos, verdict if v5 else 0)
            return
        now = self.loop.time()
        m = Message(p.topic, p.payload, p.qos, p.retain, p.properties, now, cs.client_id)
        full = p.retain and not self._room_to_retain(m)  # _route_one says so in the log
        store = self.persist
        if p.qos == 2 and store is not None and store.full:
            # Exactly once across a crash: queued now, but it reaches no subscriber
            # before the commit holding its packet id (and its queued copies) is done
            # (_answer releases it). Dying before, the broker has no trace of it and
            # the publisher's resend is its only delivery; after, the resend finds the
            # id and is not routed again. Until then the session drops a resend
            # (manual_ack: its answer is owed).
            m.held = []
        matched = self._route(m)
        if p.qos:
            # 5.0: 0x10 when no subscription matched (3.4.2.1); 3.1.1 sends a plain ack.
            code = 0 if matched else _NO_MATCHING_SUBSCRIBERS
            if full and conn.session.version == _MQTT5:
                # Routed, not retained: 0x97, as for max_subscriptions. 3.1.1 has no
                # code for it: a plain ack, and the log says why.
                code = _QUOTA_EXCEEDED
            self._answer(cs, p.packet_id, p.qos, code, m)

    def _answer(
        self,
        cs: ClientSession,
        packet_id: int,
        qos: int,
        reason_code: int,
        m: Message | None = None,
    ) -> None:
        # A client's QoS 1/2 PUBLISH is answered now or, with durability "full", once
        # the commit holding its effects is done (all answers wait, so they keep the
        # order of the PUBLISHes: MQTT-4.6.0-2); then a QoS 2 one ``m`` (held, see
        # _publish) goes to its subscribers. A failed commit refuses a QoS 1 one
        # (0x80: the publisher learns the disk failed; a resend is a duplicate QoS 1
        # allows). A QoS 2 one is queued already, and the next commit writes it: a
        # refusal would make its resend a second delivery, so it is accepted.
        store = self.persist
        if store is None or not store.full:
            self.ack(cs, packet_id, reason_code)
            return

        def answer(ok: bool) -> None:
            if m is not None and m.held is not None:
                held, m.held = m.held, None
                for queued in held:
                    if queued.conn is not None:
                        queued.conn.pump_soon()
            code = reason_code if ok or qos == 2 else _UNSPECIFIED_ERROR
            conn = cs.conn
            if self.ack(cs, packet_id, code) and conn is not None:
                conn.pump()
                if conn.session.state >= _CLOSED:  # 3.1.1 refused: close (MQTT-3.3.5-2)
                    conn.close()

        store.after_commit(cs, packet_id, qos if reason_code < 0x80 else 0, answer)

    def ack(
        self,
        cs: ClientSession,
        packet_id: int,
        reason_code: int = 0,
        properties: dict[str, Any] | None = None,
    ) -> bool:
        """Answer the QoS 1/2 PUBLISH ``packet_id`` from ``cs``'s client with PUBACK or
        PUBREC ``reason_code`` (server sessions acknowledge by hand): below 0x80 accepts
        it, 0x80 or more refuses it (3.1.1: the connection is closed). Call it while
        handling the connection's events; the connection writes the answer. The answer
        goes to ``cs.session``, which after a takeover is the new connection's (the answer
        owed moved with the session). Returns False when no answer is owed any more:
        answered already, or the state was dropped (the new connection had Clean Start)."""
        try:
            cs.session.ack(packet_id, reason_code, properties)
        except LocalProtocolError:
            return False
        return True

    def on_subscribe(self, conn: Connection, p: Subscribe) -> None:
        cs = conn.client
        assert cs is not None
        perms = cs.permissions
        # A verdict per filter: its refusal code, or the plug-ins' (None: no opinion).
        verdicts: list[Verdict | Awaitable[Verdict]] = []
        for sub in p.subscriptions:
            f = sub.topic_filter
            try:
                validate_topic_filter(f, True)
            except RemoteProtocolError:
                verdicts.append(_TOPIC_FILTER_INVALID)
                continue
            if perms is not None and not perms.can_subscribe(f):
                log.info("%s client id %r: SUBSCRIBE to %r denied by the ACL", conn.peer,
                         cs.client_id, f, extra=fields(conn, topic=f,
                         reason_code=_NOT_AUTHORIZED))  # fmt: skip
                verdicts.append(_NOT_AUTHORIZED)
                continue
            verdict = self.plugins.authorize_subscribe(cs.client_id, conn.username, f, sub.qos)
            if verdict and not inspect.isawaitable(verdict):
                log.info("%s client id %r: SUBSCRIBE to %r refused by a plug-in (0x%02X)",
                         conn.peer, cs.client_id, f, verdict)  # fmt: skip
            verdicts.append(verdict)
        if any(inspect.isawaitable(v) for v in verdicts):
            conn.hold()  # its later packets wait: they stay in order
            self.spawn(self._subscribe_later(conn, cs, p, verdicts))
        else:
            self._subscribe(conn, cs, p, cast(list[Verdict], verdicts))  # none awaitable

    async def _subscribe_later(
        self,
        conn: Connection,
        cs: ClientSession,
        p: Subscribe,
        verdicts: list[Verdict | Awaitable[Verdict]],
    ) -> None:
        decided: list[Verdict] = []
        for sub, verdict in zip(p.subscriptions, verdicts, strict=True):
            if inspect.isawaitable(verdict):
                verdict = await verdict
                if verdict:
                    log.info("%s client id %r: SUBSCRIBE to %r refused by a plug-in (0x%02X)",
                             conn.peer, cs.client_id, sub.topic_filter, verdict)  # fmt: skip
            decided.append(verdict)
        if conn.ended:
            return  # no SUBACK owed any more: nothing was subscribed
        self._subscribe(conn, cs, p, decided)
        conn.release()

    def _subscribe(
        self, conn: Connection, cs: ClientSession, p: Subscribe, verdicts: list[Verdict]
    ) -> None:
        v5 = conn.session.version == _MQTT5
        now = self.loop.time()
        sid = (p.properties or {}).get("subscription_identifier", 0)
        perms = cs.permissions
        limit = self.config.max_subscriptions
        codes = []
        # The retained messages each filter gets, with its QoS and identifiers; found
        # once per distinct filter (a SUBSCRIBE may repeat one many times).
        retained: list[tuple[list[Message], int, list[int]]] = []
        found_for: dict[str, list[Message]] = {}
        for sub, verdict in zip(p.subscriptions, verdicts, strict=True):
            f = sub.topic_filter
            full = limit and len(cs.subscriptions) >= limit
            if not verdict and full and f not in cs.subscriptions:
                # A new filter beyond max_subscriptions (replacing one is always fine):
                # each costs the broker memory and matching time for as long as it lasts.
                verdict = _QUOTA_EXCEEDED
                log.info("%s client id %r: SUBSCRIBE to %r refused, max_subscriptions (%d) "
                         "reached", conn.peer, cs.client_id, f, limit, extra=fields(conn,
                         topic=f, reason_code=_QUOTA_EXCEEDED))  # fmt: skip
            if verdict:
                codes.append(verdict if v5 else _UNSPECIFIED_ERROR)  # 3.1.1: 0x80, failure
                continue
            entry = Entry(sub, sid)
            existed = self.router.subscribe(cs.client_id, entry)
            cs.subscriptions[f] = entry
            if self.persist is not None:
                self.persist.subscribed(cs, entry)
            codes.append(sub.qos)
            rh = sub.retain_handling
            # Retained messages on subscribe (MQTT-3.3.1-9 and -10, retain handling),
            # never to a shared subscription (4.8.2).
            if (rh == 0 or rh == 1 and not existed) and not f.startswith("$share/"):
                found = found_for.get(f)
                if found is None:
                    found = self.router.retained_for(f, now)
                    if self.sys is not None:
                        found += self.sys.retained_for(f)
                    if perms is not None:
                        found = [m for m in found if perms.can_read(m.topic)]
                    found_for[f] = found
                if found:
                    retained.append((found, sub.qos, [sid] if sid else []))
        conn.session.suback(p.packet_id, codes)
        self._queue_retained(cs, retained)
        self.touch(cs)
        conn.pump()

    def _queue_retained(
        self, cs: ClientSession, retained: list[tuple[list[Message], int, list[int]]]
    ) -> None:
        """Queue the retained messages a SUBSCRIBE's filters found (MQTT-3.3.1-9, -10),
        each at the lower of its QoS and its filter's. Those beyond what the queue
        holds, which it would drop at once (the first ones with drop_oldest, the last
        with drop_new), are counted as dropped without being made: a SUBSCRIBE that
        repeats "#" thousands of times must not cost that many times every retained
        message, holding up the event loop and every other client."""
        cfg = self.config
        total = sum(len(found) for found, _, _ in retained)
        extra = total - cfg.max_queued_messages
        if extra > 0:
            cs.dropped += extra
            total -= extra
        skip = extra if extra > 0 and cfg.queue_policy == DROP_OLDEST else 0
        for found, qos, ids in retained:
            if skip >= len(found):
                skip -= len(found)
                continue
            for m in found[skip : total + skip]:
                if cs.enqueue(Delivery(m, min(m.qos, qos), True, list(ids)), cfg):
                    if m.held is not None:  # its commit is not done yet (_publish)
                        m.held.append(cs)
            total -= len(found) - skip
            skip = 0
            if total <= 0:
                break

    def on_unsubscribe(self, conn: Connection, p: Unsubscribe) -> None:
        cs = conn.client
        assert cs is not None
        codes = []
        for f in p.topic_filters:
            try:
                validate_topic_filter(f, True)
            except RemoteProtocolError:  # as SUBSCRIBE answers it: no such filter can exist
                codes.append(_TOPIC_FILTER_INVALID)
                continue
            removed = self.router.unsubscribe(cs.client_id, f)
            cs.subscriptions.pop(f, None)
            if self.persist is not None:
                self.persist.unsubscribed(cs, f)
            codes.append(0 if removed else _NO_SUBSCRIPTION_EXISTED)
        conn.session.unsuback(p.packet_id, codes if conn.session.version == _MQTT5 else None)

    def on_connection_end(self, conn: Connection) -> None:
        """The connection closed (either side, any reason): the session goes offline,
        its Will is published now or after its delay, and it ends now (expiry 0) or
        when its Session Expiry Interval runs out."""
        cs = conn.client
        if cs is None or cs.conn is not conn:
            return  # never accepted, or taken over already
        cs.conn = None
        self.counters.online -= 1
        reason = "" if conn.reason is None else f" (0x{conn.reason:02X})"
        log.info("%s client id %r disconnected%s", conn.peer, cs.client_id, reason,
                 extra=fields(conn, reason_code=conn.reason))  # fmt: skip
        self.plugins.notify(ON_DISCONNECT, cs.client_id, conn.reason)
        s = cs.session
        s.connection_lost(self.loop.time())
        self._cap_expiry(s)  # a 5.0 DISCONNECT may have asked for more
        self.touch(cs)
        e = s.session_expiry_interval
        will = conn.will
        conn.will = None
        if will is not None and not self._stopping:
            wills.schedule(self, cs, will, e)
        if e == 0:
            self._end_session(cs)
        elif e != NEVER and not self._stopping:
            cs.expiry_timer = self.loop.call_later(e, self._end_session, cs)

    # -- internals ----------------------------------------------------------------

    def _route(self, m: Message) -> int:
        """Retain ``m`` if flagged, queue it for every matching session, tell the
        plug-ins; returns how many sessions it matched (0: no matching subscribers).
        Called again while it runs (an on_message hook publishes, or ends a client
        whose Will goes), it queues ``m`` to go after the current one and returns 0."""
        if self._routing:
            self._later.append(m)
            return 0
        self._routing = True
        try:
            matched = self._route_one(m)
            later = self._later
            while later:
                self._route_one(later.popleft())
        finally:
            self._routing = False
        return matched

    def _room_to_retain(self, m: Message) -> bool:
        """Whether ``m`` (flagged RETAIN) may be retained under ``max_retained``:
        replacing or clearing a topic's message always may, a new topic only below
        the limit."""
        limit = self.config.max_retained
        retained = self.router.retained
        if not limit or len(retained) < limit or m.topic in retained:
            return True
        return not m.payload or m.at_once  # clears the topic (Router.retain)

    def _route_one(self, m: Message) -> int:
        if m.retain and not self._room_to_retain(m):
            # A retained message per topic, kept until cleared: a client publishing
            # to new topics would fill memory and the persistence file without end.
            # Like EMQX's retainer.max_retained_messages: routed, not retained.
            self.counters.retained_refused += 1
            log.warning("retained message on %r from %r not kept: max_retained (%d) "
                        "reached", m.topic, m.sender, self.config.max_retained,
                        extra={"topic": m.topic, "client_id": m.sender})  # fmt: skip
        elif m.retain:
            self.router.retain(m)
            if self.persist is not None:
                self.persist.retain(m)
        matched = self._deliver(m)
        if self.plugins.has(ON_MESSAGE):
            props = m.outgoing_properties(self.loop.time(), None)
            hops = _HOOK_HOPS.set(m.hops + 1)  # what the hooks publish is one hop further
            try:
                self.plugins.notify(
                    ON_MESSAGE, m.sender, m.topic, m.payload, m.qos, m.retain, props
                )
            finally:
                _HOOK_HOPS.reset(hops)
        return matched

    def _deliver(self, m: Message) -> int:
        """Queue ``m`` for every matching session whose ACL lets it read the topic;
        returns how many (the $SYS topics publish through this, not retained here)."""
        deliveries = self.router.route(m, self.sessions.online, self._may_read(m.topic))
        for client_id, d in deliveries:
            self._enqueue(client_id, d)
        return len(deliveries)

    def _may_read(self, topic: str) -> Callable[[str], bool] | None:
        """With an ACL: whether a client id may receive messages on ``topic``."""
        if self.acl is None:
            return None
        get = self.sessions.get

        def may_read(client_id: str) -> bool:
            cs = get(client_id)
            perms = None if cs is None else cs.permissions
            return perms is not None and perms.can_read(topic)

        return may_read

    def _enqueue(self, client_id: str, d: Delivery) -> None:
        cs = self.sessions.get(client_id)
        if cs is None:
            return
        cfg = self.config
        conn = cs.conn
        if conn is not None and (
            len(cs.queue) >= cfg.max_queued_messages
            or cs.queued_bytes + d.message.size > cfg.max_queued_bytes
        ):
            # Full, maybe only with what this turn routed (it leaves in one write,
            # pump_soon): hand on what the connection takes now before the policy
            # drops anything. The limits are for what waits for the client.
            conn.pump()
        kept = cs.enqueue(d, cfg)
        if cs.saved is not None:
            self.touch(cs)  # its queue, or its count of dropped messages
        if kept:
            held = d.message.held
            if held is not None:
                held.append(cs)  # pumped once the commit is done (_answer)
            elif cs.conn is not None:
                cs.conn.pump_soon()

    def _reroute(self, undelivered: list[Delivery]) -> None:
        """A session ended holding these deliveries for shared subscriptions: each goes
        to another member of its group (4.8.2: "If the Client's Session terminates
        before the Client reconnects, the Server SHOULD send the Application Message to
        another Client that is subscribed to the same Shared Subscription"). One that
        expired meanwhile, or finds no member left, is lost: counted."""
        now = self.loop.time()
        c = self.counters
        for d in undelivered:
            m = d.message
            if m.expired(now):
                c.ended_expired += 1  # its session's, which has ended
                continue
            picked = self.router.reroute(d, self.sessions.online, self._may_read(m.topic))
            if picked is not None:
                self._enqueue(*picked)
            else:
                c.shared_dropped += 1

    def _cap_expiry(self, s: Session) -> None:
        # max_session_expiry holds for every session: the interval a 5.0 client asks
        # for at CONNECT (it is told) or at DISCONNECT, and a 3.1.1 persistent
        # session's, which would never end (Mosquitto: persistent_client_expiration).
        cap = self.config.max_session_expiry
        if cap is not None and s.session_expiry_interval > cap:
            s.session_expiry_interval = cap

    def discard_will(self, conn: Connection) -> None:
        """A normal DISCONNECT on ``conn``: its Will is not published (MQTT-3.1.2-10)."""
        will, conn.will = conn.will, None
        if will is not None and self.persist is not None and conn.client is not None:
            self.persist.will_gone(conn.client.client_id, will)

    def _end_session(self, cs: ClientSession) -> None:
        """The session ends: a Will still waiting for its delay goes now (3.1.3.2.2),
        its subscriptions and queue are dropped."""
        if cs.conn is not None:
            return  # reconnected in the meantime
        will, cs.pending_will = cs.pending_will, None
        cs.cancel_timers()
        if will is not None and not self._stopping:
            wills.publish(self, cs, will)
        undelivered = [] if self._stopping else cs.undelivered_shared()
        for f in cs.subscriptions:
            self.router.unsubscribe(cs.client_id, f)
        cs.subscriptions.clear()
        cs.clear_queue()
        cs.shared.clear()
        self.counters.session_ended(cs)
        if self.persist is not None:
            self.persist.ended(cs)
        self.sessions.remove(cs)
        if undelivered:
            self._reroute(undelivered)


def _websocket_protocol() -> type[WebSocketProtocol]:
    # wsproto is an optional dependency (the "ws" extra): loaded only for ws/wss listeners.
    try:
        from .websocket import WebSocketProtocol
    except ImportError as e:
        raise ConfigError(
            f"ws and wss listeners need wsproto ({e}): pip install 'fieldline[ws]'"
        ) from None
    return WebSocketProtocol


def _drop_unreadable(session: Session, perms: Permissions) -> int:
    """Drop the PUBLISHes in flight on ``session`` (sent, not yet acknowledged) that a
    client with ``perms`` may not read, before a connection resumes it and they are
    sent again: the session may have been another user's. Returns how many."""
    dropped = 0
    for pid in list(session._order):
        m = session._msgs[pid]
        if isinstance(m, Publish) and not perms.can_read(m.topic):
            session._order.remove(pid)
            del session._msgs[pid]
            dropped += 1
    return dropped
