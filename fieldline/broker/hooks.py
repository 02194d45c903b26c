"""Plug-ins: objects whose optional methods the broker calls where it decides something
(``authenticate``, ``auth`` for MQTT 5.0 enhanced authentication, ``authorize_publish``,
``authorize_subscribe``), after the fact
(``on_connect``, ``on_disconnect``, ``on_message``, ``on_reload`` after SIGHUP or
``Broker.reload()``: where a plug-in reads its own files again), and when it starts and stops
(``start(broker)``, ``stop()``: where a plug-in opens and closes what it needs, such as
a database, and may publish with ``broker.publish()``). See docs/broker.md, Plug-ins.

A plug-in needs no base class: the broker looks each method up by name when it starts,
and calls what it finds, plain or ``async def``. ``authenticate`` gets the client
certificate as the keyword ``certificate`` only if it declares that parameter (or
``**kwargs``), so hooks written before it keep working. ``Plugins`` holds the plug-ins and
asks them in order. A decision is a *verdict*, an int or None:

- None: no plug-in had an opinion (the password file, the anonymous rule or the ACL
  file decide alone);
- 0: allowed (a plug-in returned True or 0);
- 0x80 or more: refused with that reason code (a plug-in returned False, meaning the
  hook's refusal code, or the code itself).

The first plug-in that returns something other than None decides; the rest are not
asked. A plain hook is answered at once, so a broker whose hooks are all plain never
waits; an ``async`` one makes the call return an awaitable, which the broker awaits in a
task of its own while that one connection waits (reads no more) and every other client
goes on. Each awaited hook has ``timeout`` seconds.

Decisions fail closed: a hook that raises, times out or returns something that is no
verdict is logged and refuses, with ``failure`` (0x88 Server unavailable for
authenticate, 0x80 Unspecified error for the others). Notifications fail open: an
exception is logged and forgotten. Nothing a hook does ends a connection or the broker.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .config import ConfigError
from .tls import PeerCertificate

if TYPE_CHECKING:
    from .server import Broker

log = logging.getLogger("fieldline.broker")

AUTHENTICATE = "authenticate"
AUTH = "auth"
AUTHORIZE_PUBLISH = "authorize_publish"
AUTHORIZE_SUBSCRIBE = "authorize_subscribe"
ON_CONNECT = "on_connect"
ON_DISCONNECT = "on_disconnect"
ON_MESSAGE = "on_message"
ON_RELOAD = "on_reload"
START = "start"
STOP = "stop"
HOOKS = (
    AUTHENTICATE,
    AUTH,
    AUTHORIZE_PUBLISH,
    AUTHORIZE_SUBSCRIBE,
    ON_CONNECT,
    ON_DISCONNECT,
    ON_MESSAGE,
    ON_RELOAD,
)

# Reason codes (MQTT 5.0 numbering; the broker maps them for 3.1.1 clients).
OK = 0
UNSPECIFIED_ERROR = 0x80
BAD_USER_NAME_OR_PASSWORD = 0x86
NOT_AUTHORIZED = 0x87
SERVER_UNAVAILABLE = 0x88
CONTINUE_AUTHENTICATION = 0x18  # an auth hook's answer is a challenge: AUTH 0x18

# The refusal codes each answer may carry (MQTT 5.0 2.4): CONNACK, PUBACK/PUBREC, SUBACK.
CONNACK_REFUSALS = frozenset(
    b"\x80\x81\x82\x83\x84\x85\x86\x87\x88\x89\x8a\x8c\x90\x95\x97\x99\x9a\x9b\x9c\x9d\x9f"
)
PUBACK_REFUSALS = frozenset(b"\x80\x83\x87\x90\x91\x97\x99")
SUBACK_REFUSALS = frozenset(b"\x80\x83\x87\x8f\x91\x97\x9e\xa1\xa2")

Verdict = int | None
Hook = Callable[..., Any]

# Notifications one plug-in's hook may have running at once (an ``async`` on_message
# awaiting a database, say). Each holds its arguments, a message's payload among
# them, for up to ``timeout``: a hook slower than messages come would hold memory
# growing with the publish rate. Beyond it a notification is skipped, and counted as
# a timeout: the hook is that far behind.
MAX_PENDING_NOTIFICATIONS = 10_000


class Plugins:
    """The plug-ins of one broker, in the order they are asked. ``plugins``: the
    objects; ``timeout``: seconds each awaited hook may take."""

    def __init__(self, plugins: Sequence[object] = (), timeout: float = 5.0) -> None:
        self.plugins = list(plugins)
        self.timeout = timeout
        self._hooks: dict[str, list[tuple[str, Hook]]] = {}
        for name in HOOKS:
            found = [(type(p).__name__, getattr(p, name, None)) for p in self.plugins]
            self._hooks[name] = [(label, hook) for label, hook in found if callable(hook)]
        self._hooks[AUTHENTICATE] = [
            (label, _with_certificate(hook)) for label, hook in self._hooks[AUTHENTICATE]
        ]
        self._notes: set[asyncio.Task[None]] = set()
        self._pending: dict[tuple[str, str], int] = {}  # notifications running, by hook
        self._behind: set[tuple[str, str]] = set()  # hooks skipping them (logged once)
        self._started: list[object] = []  # whose stop() is owed, in start order
        # (plug-in class name, hook name) -> calls that raised / took over ``timeout``.
        self.errors: dict[tuple[str, str], int] = {}
        self.timeouts: dict[tuple[str, str], int] = {}

    def _raised(self, label: str, name: str, outcome: str) -> None:
        # Logged with the traceback of the exception being handled, and counted.
        log.exception("plug-in %s.%s raised%s", label, name, outcome)
        key = (label, name)
        self.errors[key] = self.errors.get(key, 0) + 1

    def _late(self, label: str, name: str, outcome: str) -> None:
        log.warning("plug-in %s.%s took over %gs: %s", label, name, self.timeout, outcome)
        key = (label, name)
        self.timeouts[key] = self.timeouts.get(key, 0) + 1

    def has(self, name: str) -> bool:
        """Whether any plug-in has the hook ``name``."""
        return bool(self._hooks[name])

    # -- decisions ------------------------------------------------------------------

    def authenticate(
        self,
        client_id: str,
        username: str | None,
        password: bytes | None,
        peer: str,
        certificate: PeerCertificate | None = None,
    ) -> Verdict | Awaitable[Verdict]:
        """The verdict on a CONNECT: False means 0x86 Bad user name or password.
        ``certificate``: the client's, verified, on a TLS listener with ``ca``."""
        args = (client_id, username, password, peer, certificate)
        return self.decide(
            AUTHENTICATE, args, BAD_USER_NAME_OR_PASSWORD, SERVER_UNAVAILABLE, CONNACK_REFUSALS
        )

    def authorize_publish(
        self, client_id: str, username: str | None, topic: str, qos: int, retain: bool
    ) -> Verdict | Awaitable[Verdict]:
        """The verdict on a PUBLISH: False means 0x87 Not authorized."""
        args = (client_id, username, topic, qos, retain)
        return self.decide(
            AUTHORIZE_PUBLISH, args, NOT_AUTHORIZED, UNSPECIFIED_ERROR, PUBACK_REFUSALS
        )

    def authorize_subscribe(
        self, client_id: str, username: str | None, topic_filter: str, qos: int
    ) -> Verdict | Awaitable[Verdict]:
        """The verdict on one filter of a SUBSCRIBE: False means 0x87 Not authorized."""
        args = (client_id, username, topic_filter, qos)
        return self.decide(
            AUTHORIZE_SUBSCRIBE, args, NOT_AUTHORIZED, UNSPECIFIED_ERROR, SUBACK_REFUSALS
        )

    def decide(
        self,
        name: str,
        args: tuple[Any, ...],
        refusal: int,
        failure: int,
        codes: frozenset[int],
    ) -> Verdict | Awaitable[Verdict]:
        """Ask each plug-in's hook ``name`` with ``args`` until one has an opinion.
        Returns the verdict, or an awaitable of it once a hook returned an awaitable.
        False becomes ``refusal``; an error, a timeout or an int not in ``codes`` (nor
        0) becomes ``failure``."""
        hooks = self._hooks[name]
        for i, (label, hook) in enumerate(hooks):
            try:
                result = hook(*args)
            except Exception:
                self._raised(label, name, ": refused")
                return failure
            if inspect.isawaitable(result):
                return self._decide_later(name, args, refusal, failure, codes, i, result)
            verdict = _verdict(label, name, result, refusal, failure, codes)
            if verdict is not None:
                return verdict
        return None

    async def _decide_later(
        self,
        name: str,
        args: tuple[Any, ...],
        refusal: int,
        failure: int,
        codes: frozenset[int],
        i: int,
        pending: Awaitable[Any],
    ) -> Verdict:
        first: Any = pending
        for label, hook in self._hooks[name][i:]:
            if first is not None:
                result, first = first, None  # the first one was called already
            else:
                try:
                    result = hook(*args)
                except Exception:
                    self._raised(label, name, ": refused")
                    return failure
            if inspect.isawaitable(result):
                try:
                    result = await asyncio.wait_for(result, self.timeout)
                except TimeoutError:
                    self._late(label, name, "refused")
                    return failure
                except Exception:
                    self._raised(label, name, ": refused")
                    return failure
            verdict = _verdict(label, name, result, refusal, failure, codes)
            if verdict is not None:
                return verdict
        return None

    async def auth(
        self, args: tuple[Any, ...], handler: int | None = None
    ) -> tuple[int | None, Verdict, bytes | None]:
        """One step of MQTT 5.0 enhanced authentication; ``args`` are ``(client_id,
        username, method, data, step)``. The plug-in at index ``handler`` (the one that
        answered step 0) answers; without one, each plug-in's ``auth`` in order until
        one has an opinion. Returns ``(handler, code, data)``: code None when no plug-in
        knows the method; CONTINUE_AUTHENTICATION: send ``data`` in AUTH 0x18; 0:
        success (``data`` goes in the CONNACK or AUTH 0x00); a refusal code. An error,
        a timeout or an answer that is none of those refuses with 0x88; a handler with
        no opinion in a later step, with 0x87."""
        hooks = self._hooks[AUTH]
        for i in range(len(hooks)) if handler is None else (handler,):
            label, hook = hooks[i]
            try:
                result = hook(*args)
                if inspect.isawaitable(result):
                    result = await asyncio.wait_for(result, self.timeout)
            except TimeoutError:
                self._late(label, AUTH, "refused")
                return i, SERVER_UNAVAILABLE, None
            except Exception:
                self._raised(label, AUTH, ": refused")
                return i, SERVER_UNAVAILABLE, None
            code, data = _auth_answer(label, result)
            if code is not None:
                return i, code, data
            if handler is not None:
                return i, NOT_AUTHORIZED, None  # it started the exchange: it must end it
        return None, None, None

    # -- start and stop ----------------------------------------------------------------

    async def start(self, broker: Broker) -> None:
        """Call each plug-in's ``start(broker)``, in order, each awaited (``timeout``
        at most) before the next. Raises ConfigError naming the plug-in whose start
        raised or took longer; the plug-ins started before it are stopped again."""
        for plugin in self.plugins:
            hook = getattr(plugin, START, None)
            if callable(hook):
                label = type(plugin).__name__
                try:
                    await self._call(hook, broker)
                except Exception as e:
                    await self.stop()
                    if isinstance(e, TimeoutError):
                        why = f"took over {self.timeout:g}s"
                    else:
                        why = f"raised {e!r}"
                    raise ConfigError(f"plug-in {label}: start() {why}") from e
            self._started.append(plugin)

    async def stop(self) -> None:
        """Call ``stop()`` of each plug-in started, in reverse order (what started last
        may use what started first), each ``timeout`` at most. Errors are logged."""
        started, self._started = self._started, []
        for plugin in reversed(started):
            hook = getattr(plugin, STOP, None)
            if not callable(hook):
                continue
            label = type(plugin).__name__
            try:
                await self._call(hook)
            except TimeoutError:
                self._late(label, STOP, "cancelled")
            except Exception:
                self._raised(label, STOP, "")

    async def _call(self, hook: Hook, *args: Any) -> None:
        result = hook(*args)
        if inspect.isawaitable(result):
            await asyncio.wait_for(result, self.timeout)

    # -- notifications ---------------------------------------------------------------

    def notify(self, name: str, *args: Any) -> None:
        """Call each plug-in's hook ``name`` with ``args``; an awaitable it returns runs
        in a task (``drain()`` waits for them). Errors are logged, never raised."""
        for label, hook in self._hooks[name]:
            try:
                result = hook(*args)
            except Exception:
                self._raised(label, name, "")
                continue
            if not inspect.isawaitable(result):
                continue
            key = (label, name)
            n = self._pending.get(key, 0)
            if n >= MAX_PENDING_NOTIFICATIONS:
                if inspect.iscoroutine(result):
                    result.close()  # never to run: no "never awaited" warning
                self.timeouts[key] = self.timeouts.get(key, 0) + 1
                if key not in self._behind:
                    self._behind.add(key)
                    log.warning("plug-in %s.%s has %d notifications running: further ones "
                                "skipped until it catches up", label, name, n)  # fmt: skip
                continue
            self._pending[key] = n + 1
            task = asyncio.get_running_loop().create_task(self._note(label, name, result))
            self._notes.add(task)
            task.add_done_callback(self._notes.discard)

    async def _note(self, label: str, name: str, pending: Awaitable[Any]) -> None:
        try:
            await asyncio.wait_for(pending, self.timeout)
        except TimeoutError:
            self._late(label, name, "cancelled")
        except Exception:
            self._raised(label, name, "")
        finally:
            key = (label, name)
            self._pending[key] -= 1
            self._behind.discard(key)

    async def drain(self) -> None:
        """Wait for the notifications still running (each has ``timeout`` at most)."""
        while self._notes:
            await asyncio.wait(list(self._notes))


def load_plugins(
    plugins: Sequence[object], options: Mapping[str, Mapping[str, Any]] | None = None
) -> list[object]:
    """The plug-in objects for ``plugins``: objects as they are, and for each string
    ``"package.module:Name"`` an instance of that class, made with the keyword
    arguments ``options[Name]`` (none if absent). Raises ConfigError naming the
    plug-in if the module cannot be imported, has no such name, or the class raises."""
    options = options or {}
    out: list[object] = []
    for spec in plugins:
        if not isinstance(spec, str):
            out.append(spec)
            continue
        module_name, _, name = (part.strip() for part in spec.partition(":"))
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ConfigError(f"plug-in {spec!r}: cannot import {module_name}: {e}") from None
        target: Any = module
        try:
            for part in name.split("."):
                target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"plug-in {spec!r}: {module_name} has no {name!r}") from None
        kwargs = dict(options.get(name, {}))
        try:
            out.append(target(**kwargs))
        except Exception as e:
            raise ConfigError(f"plug-in {spec!r}: {name}(...) raised {e!r}") from None
    return out


def _with_certificate(hook: Hook) -> Hook:
    """``hook`` called as ``(client_id, username, password, peer, certificate)``: the
    certificate passed as a keyword if the hook takes it, left out if not."""
    if _takes_certificate(hook):

        def call(*args: Any) -> Any:
            return hook(*args[:4], certificate=args[4])
    else:

        def call(*args: Any) -> Any:
            return hook(*args[:4])

    return call


def _auth_answer(label: str, result: Any) -> tuple[Verdict, bytes | None]:
    """An auth hook's answer as ``(code, data)``: bytes continue the exchange, a
    verdict ends it, ``(verdict, data)`` ends it with data for the client."""
    if isinstance(result, bytes | bytearray | memoryview):
        return CONTINUE_AUTHENTICATION, bytes(result)
    data = None
    if isinstance(result, tuple) and len(result) == 2:
        result, data = result
        if data is not None and not isinstance(data, bytes | bytearray | memoryview):
            log.error("plug-in %s.auth returned data %r, not bytes: refused", label, data)
            return SERVER_UNAVAILABLE, None
        if data is not None:
            data = bytes(data)
    code = _verdict(label, AUTH, result, NOT_AUTHORIZED, SERVER_UNAVAILABLE, CONNACK_REFUSALS)
    return code, data


def _takes_certificate(hook: Hook) -> bool:
    try:
        params = inspect.signature(hook).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin, say)
        return False
    for p in params:
        if p.kind == p.VAR_KEYWORD:
            return True
        if p.name == "certificate" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
            return True
    return False


def _verdict(
    label: str, name: str, result: Any, refusal: int, failure: int, codes: frozenset[int]
) -> Verdict:
    if result is None:
        return None
    if result is True:
        return OK
    if result is False:
        return refusal
    if isinstance(result, int) and (result == OK or result in codes):
        return int(result)  # an IntEnum, say, as a plain int
    log.error("plug-in %s.%s returned %r, not a verdict: refused", label, name, result)
    return failure
