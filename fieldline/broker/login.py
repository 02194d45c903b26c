"""Who may connect: the path of a CONNECT through ``max_connections``, a client
certificate's identity (``use_identity_as_username``), MQTT 5.0 enhanced
authentication (plug-ins' ``auth``), plug-ins' ``authenticate``, the password file and
the anonymous rule; and re-reading the password and ACL files (``Broker.reload``).

The decisions that take time (an ``async`` hook, a scrypt hash, an AUTH exchange) run
in a task while the connection is held: it reads nothing more until the answer, so its
packets stay in order, and every other client goes on. An accepted CONNECT goes to
``Broker.accept``, which sets up the session.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from fieldline.mqtt import Auth, Connect

from .acl import Acl
from .config import ConfigError
from .hooks import AUTH, AUTHENTICATE, CONTINUE_AUTHENTICATION, SERVER_UNAVAILABLE, Verdict
from .logs import fields
from .message import wildcard_response_topic
from .passwords import BAD_USER_NAME_OR_PASSWORD, NOT_AUTHORIZED, OK, Passwords
from .tls import peer_certificate

if TYPE_CHECKING:
    from .connection import Connection
    from .server import Broker

log = logging.getLogger("fieldline.broker")

_MQTT5 = 5
_IDLE = 0  # Session.state before its CONNECT
_RE_AUTHENTICATE = 0x19
_BAD_AUTHENTICATION_METHOD = 0x8C
_PROTOCOL_ERROR = 0x82
_SERVER_UNAVAILABLE = 0x88  # 3.1.1 return code 3
_QUOTA_EXCEEDED = 0x97
_CLIENT_IDENTIFIER_NOT_VALID = 0x85  # 3.1.1 return code 2, identifier rejected
# The refusal codes a DISCONNECT may carry (MQTT 5.0 3.14.2.1), for a failed
# re-authentication (MQTT-4.12.1-2).
_DISCONNECT_REFUSALS = frozenset(
    b"\x80\x81\x82\x83\x87\x89\x8b\x8d\x8e\x8f\x90\x93\x94\x95\x96\x97\x98\x99\x9a\x9b"
    b"\x9c\x9d\x9e\x9f\xa0\xa1\xa2"
)
_REFUSALS = {
    BAD_USER_NAME_OR_PASSWORD: "bad user name or password",
    NOT_AUTHORIZED: "not authorized",
    SERVER_UNAVAILABLE: "server unavailable",
    _BAD_AUTHENTICATION_METHOD: "bad authentication method",
    _PROTOCOL_ERROR: "protocol error (a wildcard in its Will's Response Topic)",
}


class Login:
    """The authentication of one broker's clients (its ``login``)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def reload(self) -> bool:
        """``Broker.reload()``: read the password and ACL files again. Returns False if
        one could not be read or parsed (its old users or rules stay in force)."""
        cfg = self.broker.config
        ok = True
        if cfg.password_file:
            try:
                passwords = Passwords.load(cfg.password_file)
            except ConfigError as e:
                log.error("reload: %s; the password file read before stays in force", e)
                ok = False
            else:
                if self.broker.passwords is not None:
                    passwords.share_limit(self.broker.passwords)
                self.broker.passwords = passwords
        elif self.broker.passwords is not None:  # the configuration dropped the file
            self.broker.passwords = None
        acl = self.broker.acl
        if cfg.acl_file:
            try:
                acl = Acl.load(cfg.acl_file)
            except ConfigError as e:
                log.error("reload: %s; the ACL read before stays in force", e)
                ok = False
        else:
            acl = None  # the configuration dropped it (or never had one)
        if acl is not self.broker.acl:
            self.broker.acl = acl
            for cs in self.broker.sessions.sessions.values():
                cs.set_permissions(
                    None if acl is None else acl.permissions(cs.username, cs.client_id)
                )
        log.log(logging.INFO if ok else logging.WARNING, "reload: %s", self.summary())
        return ok

    def summary(self) -> str:
        """How clients are authenticated, for the start-up line."""
        b = self.broker
        pw = b.passwords
        anonymous = "anonymous access" if b.config.anonymous else "anonymous access refused"
        if pw is None and b.plugins.has(AUTHENTICATE):
            out = "no password file"  # the plug-ins decide who may connect
        elif pw is None and b.config.anonymous:
            out = "anonymous access (no password file)"
        elif pw is None:  # listening beyond loopback, nothing configured: closed
            out = "no password file and not on loopback only: every client refused "
            out += "(--password-file or password_file, "
            out += "or --allow-anonymous or allow_anonymous = true)"
        else:
            n = len(pw.users)
            out = f"passwords from {pw.path} ({n} user{'' if n == 1 else 's'}), {anonymous}"
        if b.config.use_username_as_clientid:
            out += ", client ids are user names"
        acl = self.broker.acl
        if acl is not None:
            n = len(acl)
            out += f", ACL from {acl.path} ({n} rule{'' if n == 1 else 's'})"
        plugins = self.broker.plugins.plugins
        if plugins:
            out += ", plug-ins " + ", ".join(type(p).__name__ for p in plugins)
        return out

    def on_connect(self, conn: Connection, p: Connect) -> None:
        """A CONNECT: accept it (``Broker.accept``) or refuse it, now or once a hook, a
        hash or an enhanced authentication exchange has answered (the connection
        waits, its later packets unread)."""
        s = conn.session
        if p.will is not None and wildcard_response_topic(p.will.properties):
            # The Will's Response Topic is one as a PUBLISH's is (3.1.3.2.5): no
            # wildcards (MQTT-3.3.2-14), a Protocol Error answered in the CONNACK.
            self._refuse(conn, p, _PROTOCOL_ERROR)
            return
        limit = self.broker.config.max_connections
        if limit and len(self.broker.connections) > limit:  # this connection is one of them
            self._make_room(conn)
        if limit and len(self.broker.connections) > limit:
            self.broker.refused_connections += 1
            self.broker.counters.refuse(_QUOTA_EXCEEDED)
            log.warning("%s client id %r: refused, max_connections (%d) reached", conn.peer,
                        p.client_id, limit, extra=fields(conn, client_id=p.client_id,
                        reason_code=_QUOTA_EXCEEDED))  # fmt: skip
            # 5.0: 0x97 Quota exceeded; 3.1.1: return code 3, Server unavailable.
            s.reject(_QUOTA_EXCEEDED if p.protocol_level == _MQTT5 else _SERVER_UNAVAILABLE)
            return
        ka = self.broker.config.max_keep_alive
        if ka is not None and p.protocol_level != _MQTT5 and not 0 < p.keep_alive <= ka:
            # 3.1.1 has no Server Keep Alive to tell the client: refuse, as Mosquitto
            # does (return code 2, identifier rejected), rather than keep a connection
            # whose silence may last longer than the cap allows.
            log.warning("%s client id %r: refused, Keep Alive %d not within max_keep_alive %d",
                        conn.peer, p.client_id, p.keep_alive, ka,
                        extra=fields(conn, client_id=p.client_id))  # fmt: skip
            self.broker.counters.refuse(_CLIENT_IDENTIFIER_NOT_VALID)
            s.reject(_CLIENT_IDENTIFIER_NOT_VALID)
            return
        listener = conn.listener
        cert = peer_certificate(conn.transport) if listener and listener.tls else None
        if listener is not None and listener.use_identity_as_username:
            # The TLS handshake proved who the client is: its certificate's CN is its
            # user name, whatever the CONNECT says, and no password is checked.
            cn = None if cert is None else cert.common_name
            if not cn:
                log.warning("%s client id %r: refused, its certificate has no CN", conn.peer,
                            p.client_id, extra=fields(conn, client_id=p.client_id,
                            reason_code=NOT_AUTHORIZED))  # fmt: skip
                self.broker.counters.refuse(NOT_AUTHORIZED)
                s.reject(NOT_AUTHORIZED)
                return
            p = copy.copy(p)  # the session's own stays as it came
            p.username, p.password = cn, None
        props = p.properties or {}
        method = props.get("authentication_method")
        if method is not None:
            # MQTT 5.0 enhanced authentication (4.12): a plug-in's auth hook runs the
            # exchange and decides alone (no authenticate hook, no password file).
            if not self.broker.plugins.has(AUTH):
                self._refuse(conn, p, _BAD_AUTHENTICATION_METHOD)
                return
            conn.hold()
            conn.auth_connect, conn.auth_step, conn.auth_handler = p, 0, None
            self.broker.spawn(self._auth_step(conn, method, props.get("authentication_data")))
            return
        # Plug-ins first, in order; without an opinion from them, the password file and
        # the anonymous rule. The hash takes tens of milliseconds and a plug-in may
        # await: then in a task, the connection held (its later packets wait) until
        # the answer is known.
        plugins = self.broker.plugins
        verdict = plugins.authenticate(p.client_id, p.username, p.password, conn.peer, cert)
        if inspect.isawaitable(verdict) or verdict is None and self._password_check(conn, p):
            conn.hold()
            self.broker.spawn(self._authenticate(conn, p, verdict))
        else:
            self._connect(conn, p, verdict)

    def _make_room(self, conn: Connection) -> None:
        # Sockets that have sent no CONNECT yet count against max_connections (each
        # holds a descriptor and a buffer), but an attacker must not keep clients out
        # by holding every slot with silent ones until connect_timeout: a CONNECT
        # beyond the limit closes one of them, if there is one, to make room.
        for other in self.broker.connections:
            if other is not conn and other.session.state == _IDLE:
                log.warning("%s: closed without a CONNECT to make room for %s "
                            "(max_connections reached)", other.peer, conn.peer,
                            extra=fields(other))  # fmt: skip
                other.close()
                return

    def on_auth(self, conn: Connection, p: Auth) -> None:
        """An AUTH from the client (the session checked its method and turn): the next
        step of the CONNECT's exchange, or the start (0x19) or a step of a
        re-authentication. The connection waits for the plug-in's answer."""
        props = p.properties or {}
        if p.reason_code == _RE_AUTHENTICATE:
            conn.auth_step = 0  # the plug-in that authenticated the CONNECT answers again
        else:
            conn.auth_step += 1
        conn.hold()
        method = props.get("authentication_method", "")
        self.broker.spawn(self._auth_step(conn, method, props.get("authentication_data")))

    async def _auth_step(self, conn: Connection, method: str, data: bytes | None) -> None:
        p = conn.auth_connect  # None: a re-authentication of an accepted client
        cs = conn.client
        client_id = p.client_id if p is not None else cs.client_id if cs is not None else ""
        username = p.username if p is not None else conn.username
        args = (client_id, username, method, data, conn.auth_step)
        handler, code, out = await self.broker.plugins.auth(args, conn.auth_handler)
        if conn.ended:
            return
        conn.auth_handler = handler
        s = conn.session
        if code is None:
            code = _BAD_AUTHENTICATION_METHOD  # no plug-in knows the method
        if code == CONTINUE_AUTHENTICATION:
            s.auth(out)  # AUTH 0x18: the client answers with the next step
        elif p is not None:  # the CONNECT's exchange ends with the CONNACK
            conn.auth_connect = None
            if code == OK:
                self._accept(conn, p, out)
            else:
                self._refuse(conn, p, code)
        elif code == OK:
            s.auth(out, OK)  # re-authenticated: AUTH 0x00 (4.12.1)
            log.info("%s client id %r re-authenticated", conn.peer, client_id,
                     extra=fields(conn))  # fmt: skip
        else:
            code = code if code in _DISCONNECT_REFUSALS else NOT_AUTHORIZED
            log.warning("%s client id %r: re-authentication refused (0x%02X)", conn.peer,
                        client_id, code, extra=fields(conn, reason_code=code))  # fmt: skip
            conn.close(code)  # MQTT-4.12.1-2: DISCONNECT with a reason code
            return
        conn.release()

    def _password_check(self, conn: Connection, p: Connect) -> bool:
        # Credentials sent without a password file are ignored; a certificate's
        # identity needs no password.
        if self.broker.passwords is None or p.username is None:
            return False
        return conn.listener is None or not conn.listener.use_identity_as_username

    async def _authenticate(
        self, conn: Connection, p: Connect, verdict: Verdict | Awaitable[Verdict]
    ) -> None:
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if verdict is None and self._password_check(conn, p):
            if conn.ended:
                return
            assert self.broker.passwords is not None
            # Skipped if the connection ends while it waits its turn (a flood of
            # CONNECTs cut by connect_timeout must not hold up the clients behind).
            verdict = await self.broker.passwords.check(
                p.username, p.password, lambda: not conn.ended
            )
        if conn.ended:
            return
        self._connect(conn, p, verdict)
        conn.release()

    def _connect(self, conn: Connection, p: Connect, verdict: Verdict) -> None:
        if verdict is None:  # no plug-in had an opinion and there was no password to check
            identity = conn.listener is not None and conn.listener.use_identity_as_username
            anonymous = self.broker.config.anonymous
            verdict = OK if anonymous or identity else NOT_AUTHORIZED
        if verdict == OK:
            self._accept(conn, p)
        else:
            self._refuse(conn, p, verdict)

    def _accept(self, conn: Connection, p: Connect, auth_data: bytes | None = None) -> None:
        if self.broker.config.use_username_as_clientid:
            # A client id is the client's choice, so any client could take over any
            # session by naming it (MQTT-3.1.4-3): tie it to the authenticated user
            # name instead, as Mosquitto's option does. No user name: refused. An
            # empty id becomes the user name too, as in Mosquitto: Broker.accept
            # tells a 5.0 client in Assigned Client Identifier (MQTT-3.2.2-16).
            if p.username is None:
                self._refuse(conn, p, NOT_AUTHORIZED)
                return
            if p.client_id != p.username:
                p = copy.copy(p)  # the session's own stays as it came
                p.client_id = p.username
        b = self.broker
        limit = b.config.max_sessions
        if (
            limit
            and len(b.sessions) >= limit
            and (not p.client_id or b.sessions.get(p.client_id) is None)
        ):
            # A new session beyond max_sessions: each one kept (offline, for its
            # Session Expiry Interval) holds memory, a queue and a place in the
            # persistence file, so one client making new client ids could fill the
            # broker. Refused, as EMQX's username quota does; not by expiring the
            # oldest offline session: that would let anyone wipe other clients'.
            b.counters.sessions_refused += 1
            b.counters.refuse(_QUOTA_EXCEEDED)
            log.warning("%s client id %r: refused, max_sessions (%d) reached", conn.peer,
                        p.client_id, limit, extra=fields(conn, client_id=p.client_id,
                        reason_code=_QUOTA_EXCEEDED))  # fmt: skip
            # 5.0: 0x97 Quota exceeded; 3.1.1: return code 3, Server unavailable.
            v5 = p.protocol_level == _MQTT5
            conn.session.reject(_QUOTA_EXCEEDED if v5 else _SERVER_UNAVAILABLE)
            return
        old = b.sessions.get(p.client_id) if p.client_id else None
        if old is not None and old.releasing and b.persist is not None:
            # PUBRELs of its session wait for a commit (durability "full",
            # Connection._release_later); accepting resends them: wait for it too.
            conn.hold()

            def then(ok: bool) -> None:
                if not conn.ended:
                    self._accept(conn, p, auth_data)
                    conn.release()

            b.persist.after_commit(old, 0, 0, then)
            return
        b.accept(conn, p, auth_data)

    def _refuse(self, conn: Connection, p: Connect, reason_code: int) -> None:
        # Never log the password.
        who = "no user name" if p.username is None else f"user {p.username!r}"
        why = _REFUSALS.get(reason_code) or f"reason code 0x{reason_code:02X}"
        self.broker.counters.refuse(reason_code)
        log.warning("%s client id %r, %s: refused, %s", conn.peer, p.client_id, who, why,
                    extra=fields(conn, client_id=p.client_id, username=p.username,
                                 reason_code=reason_code))  # fmt: skip
        conn.session.reject(reason_code)  # MQTT-3.2.2-5 (3.1.1: 5 or 4, MQTT-3.2.2-4)
