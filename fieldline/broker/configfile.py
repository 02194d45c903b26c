"""The broker's TOML configuration file, and the command-line flags laid over it.

The file's top-level keys are ``BrokerConfig``'s fields; each ``[[listeners]]`` table is a
``Listener``; ``plugins`` is an array of ``"package.module:ClassName"`` strings and each
``[plugin.ClassName]`` table the keyword arguments of one. Every key and type is checked
here, against the dataclasses' own type hints, so a new setting needs no second list: an
unknown key, a value of the wrong type or out of range is a ``ConfigError`` naming the
file, the table and the key.
"""

from __future__ import annotations

import difflib
import tomllib
import types
import typing
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from .config import MQTT, MQTTS, TLS_KINDS, WS, WS_KINDS, WSS, BrokerConfig, ConfigError, Listener

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
# Paths relative to the file.
_PATH_KEYS = ("cert", "key", "ca", "crl", "password_file", "acl_file", "persistence")


def load_config(path: str | Path) -> BrokerConfig:
    """Read the TOML file at ``path``. Returns the BrokerConfig it describes. Raises
    ConfigError (the message names the file and the key) if it cannot be read, is not
    TOML, or holds an unknown key or a bad value."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return config_from_dict(data, str(path), path.parent)


def config_from_dict(
    data: dict[str, Any], source: str = "configuration", base: Path | None = None
) -> BrokerConfig:
    """The BrokerConfig for ``data`` (a parsed TOML document). ``source`` names it in
    errors; relative TLS file paths are taken relative to ``base``. Raises ConfigError."""
    hints = _hints(BrokerConfig)
    options: dict[str, Any] = {}
    entries = data.get("listeners")
    for key, value in data.items():
        if key == "listeners":
            continue
        if key == "plugins":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(
                    f"{source}: 'plugins' must be an array of strings ('package.module:ClassName')"
                )
            options[key] = value
            continue
        if key == "plugin":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise ConfigError(f"{source}: 'plugin' must hold tables: write [plugin.ClassName]")
            options[key] = value
            continue
        if key not in hints:
            raise ConfigError(f"{source}: {_unknown(key, [*hints])}")
        value = _value(source, "", key, value, hints[key])
        if key in _PATH_KEYS and base is not None:
            value = str(base / value)  # an absolute value stays as it is
        options[key] = value
    if entries is not None:
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ConfigError(f"{source}: 'listeners' must be tables: write [[listeners]]")
        if "port" in options:
            raise ConfigError(
                f"{source}: 'port' at the top level is the plain listener's when there are "
                "no [[listeners]]; give each [[listeners]] table its port"
            )
        host = options.get("host")
        options["listeners"] = [
            _listener(source, i + 1, entry, host, base) for i, entry in enumerate(entries)
        ]
    try:
        return BrokerConfig(**options)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def apply_flags(
    config: BrokerConfig,
    *,
    host: str | None = None,
    port: int | None = None,
    tls_port: int | None = None,
    ws_port: int | None = None,
    wss_port: int | None = None,
    ws_path: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    ca: str | None = None,
    crl: str | None = None,
    require_certificate: bool = False,
    use_identity_as_username: bool = False,
    password_file: str | None = None,
    allow_anonymous: bool = False,
    use_username_as_clientid: bool = False,
    acl_file: str | None = None,
    max_connections: int | None = None,
    max_publish_rate: float | None = None,
    max_sessions: int | None = None,
    max_retained: int | None = None,
    persistence: str | None = None,
    durability: str | None = None,
    persist_interval: int | None = None,
    sys_interval: float | None = None,
    metrics_port: int | None = None,
    log_format: str | None = None,
    log_level: str | None = None,
    event_loop: str | None = None,
) -> BrokerConfig:
    """``config`` with the command line's settings over it. ``host``: every listener's
    host. ``port``, ``tls_port``, ``ws_port``, ``wss_port``: the port of the first mqtt,
    mqtts, ws or wss listener, which is added if there is none. ``ws_path``: the path
    of every WebSocket listener. ``cert``, ``key``, ``ca``, ``crl``, ``require_certificate``,
    ``use_identity_as_username``: the TLS settings of every mqtts and wss listener.
    ``password_file``, ``allow_anonymous`` (True: allow; False: as configured),
    ``use_username_as_clientid`` (True: on; False: as configured): the
    authentication settings; ``acl_file``: the ACL file. ``max_connections``,
    ``max_publish_rate``, ``max_sessions``, ``max_retained``: those limits (None: as
    configured). ``persistence``, ``durability``, ``persist_interval``: the
    persistence settings (None: as configured).
    ``sys_interval``, ``metrics_port``, ``log_format``, ``log_level``: the
    observability settings; ``event_loop``: auto, asyncio or uvloop (None: as
    configured). Raises ConfigError."""
    items = [asdict(listener) for listener in config.all_listeners()]
    default_host = host or config.host

    def set_port(kind: str, value: int | None) -> None:
        if value is None:
            return
        for item in items:
            if item["kind"] == kind:
                item["port"] = value
                return
        items.append({"kind": kind, "host": default_host, "port": value})

    for kind, value in ((MQTT, port), (MQTTS, tls_port), (WS, ws_port), (WSS, wss_port)):
        set_port(kind, value)
    if host is not None:
        for item in items:
            item["host"] = host
    tls_items = [item for item in items if item["kind"] in TLS_KINDS]
    tls_flags: dict[str, str | bool | None] = {
        "cert": cert,
        "key": key,
        "ca": ca,
        "crl": crl,
        "require_certificate": require_certificate or None,
        "use_identity_as_username": use_identity_as_username or None,
    }
    for name, flag_value in tls_flags.items():
        if flag_value is None:
            continue
        if not tls_items:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"{flag} applies to TLS listeners: add one with --tls-port or --wss-port "
                "(or in the configuration file)"
            )
        for item in tls_items:
            item[name] = flag_value
    if ws_path is not None:
        for item in items:
            if item["kind"] in WS_KINDS:
                item["path"] = ws_path
    listeners = []
    for item in items:
        try:
            listeners.append(Listener(**item))
        except ConfigError as e:
            raise ConfigError(f"{item['kind']} listener on port {item['port']}: {e}") from None
    auth: dict[str, Any] = {}
    if password_file is not None:
        auth["password_file"] = password_file
    if allow_anonymous:
        auth["allow_anonymous"] = True
    if use_username_as_clientid:
        auth["use_username_as_clientid"] = True
    if acl_file is not None:
        auth["acl_file"] = acl_file
    limits: dict[str, Any] = {}
    if max_connections is not None:
        limits["max_connections"] = max_connections
    if max_publish_rate is not None:
        limits["max_publish_rate"] = float(max_publish_rate)
    for name, value in (("max_sessions", max_sessions), ("max_retained", max_retained)):
        if value is not None:
            limits[name] = value
    persist = {"persistence": persistence, "durability": durability,
               "persist_interval": persist_interval}  # fmt: skip
    limits.update((k, v) for k, v in persist.items() if v is not None)
    observe: dict[str, Any] = {
        "sys_interval": None if sys_interval is None else float(sys_interval),
        "metrics_port": metrics_port,
        "log_format": log_format,
        "log_level": log_level,
        "event_loop": event_loop,
    }
    limits.update((k, v) for k, v in observe.items() if v is not None)
    return replace(config, host=default_host, listeners=listeners, **auth, **limits)


# -- checking ---------------------------------------------------------------------------


def _listener(
    source: str, n: int, entry: dict[str, Any], host: str | None, base: Path | None
) -> Listener:
    where = f"[[listeners]] #{n}: "
    hints = _hints(Listener)
    options: dict[str, Any] = {} if host is None else {"host": host}
    for key, value in entry.items():
        if key not in hints:
            raise ConfigError(f"{source}: {where}{_unknown(key, [*hints])}")
        value = _value(source, where, key, value, hints[key])
        if key in _PATH_KEYS and base is not None:
            value = str(base / value)  # an absolute value stays as it is
        options[key] = value
    if "kind" not in entry:
        raise ConfigError(f"{source}: {where}'kind' is missing (mqtt, mqtts, ws or wss)")
    if "path" in entry and entry["kind"] not in WS_KINDS:
        raise ConfigError(f"{source}: {where}'path' applies to ws and wss listeners only")
    try:
        return Listener(**options)
    except ConfigError as e:
        raise ConfigError(f"{source}: {where}{e}") from None


def _hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    special = ("listeners", "plugins", "plugin")  # checked by config_from_dict itself
    return {f.name: hints[f.name] for f in fields(cls) if f.name not in special}


def _value(source: str, where: str, key: str, value: Any, hint: Any) -> Any:
    """``value`` if it has the type ``hint`` names (an int is a number too); raises
    ConfigError naming the key otherwise. TOML has no null, so ``X | None`` wants X."""
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
    if not ok:
        raise ConfigError(
            f"{source}: {where}'{key}' must be {_TYPE_NAMES.get(hint, hint.__name__)}, "
            f"not {_toml_type(value)} ({value!r})"
        )
    return value


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _unknown(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(known)})"
    return f"unknown key '{key}'{hint}"
