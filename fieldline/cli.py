"""The `fieldline` command: run the MQTT broker and manage its password file.

The MQTT clients and the device store are Python libraries, not commands:
see README.md and docs/ for how to use them."""

from __future__ import annotations

import argparse
import sys

import fieldline

_DESCRIPTION = """\
Self-hostable MQTT 3.1.1/5.0 messaging from MicroPython devices to CPython. The clients
(fieldline.mqtt) and the device store (fieldline.store) are Python libraries: see
README.md and the docs/ folder of the project."""

_EXAMPLES = """\
examples:
  fieldline broker                        plain MQTT on 127.0.0.1:1883, anyone may connect
  fieldline broker --host 0.0.0.0 --password-file passwd   reachable from your devices
  fieldline passwd passwd esp32-1         add a user (asks for the password twice)
  fieldline broker --help                 every broker option"""

_BROKER_EPILOG = """\
Flags override the configuration file (--config). --host sets every listener's address;
--port, --tls-port, --ws-port and --wss-port set the port of the first listener of that
kind, adding one if there is none; the TLS flags apply to every TLS listener (mqtts, wss).
Without a file or flags: plain MQTT on 127.0.0.1:1883, open to anyone on this machine.
A broker listening beyond loopback (--host 0.0.0.0, to reach it from a device) needs
--password-file (made with `fieldline passwd`) or --allow-anonymous, or it refuses every
client. Ctrl-C or SIGTERM stops it; SIGHUP re-reads the files. See docs/broker.md of the
project for the configuration file's keys."""

_PASSWD_EPILOG = """\
Each line of FILE is username:hash, the hash a salted scrypt one. The file is created if
missing and rewritten atomically with mode 0600. See docs/broker.md, Security."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fieldline",
        description=_DESCRIPTION,
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version="fieldline " + fieldline.__version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    broker = commands.add_parser(
        "broker",
        help="run the MQTT 3.1.1/5.0 broker",
        description="Run the MQTT 3.1.1/5.0 broker until Ctrl-C. It prints one line per\n"
        "listener, then one saying where it keeps its state and who may connect.",
        epilog=_BROKER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    broker.add_argument("--config", metavar="FILE", help="TOML configuration file (docs/broker.md)")
    add = broker.add_argument_group("listeners").add_argument
    add("--host", help="address every listener binds (default 127.0.0.1)")
    add("--port", type=int, help="plain MQTT port (default 1883; 0: a free one)")
    add("--tls-port", type=int, metavar="PORT", help="MQTT over TLS port (8883 usually)")
    add("--ws-port", type=int, metavar="PORT", help="MQTT over WebSocket port")
    add("--wss-port", type=int, metavar="PORT", help="MQTT over secure WebSocket port")
    add("--ws-path", metavar="PATH", help="WebSocket request path (default /mqtt; *: any)")
    add = broker.add_argument_group("TLS (mqtts and wss listeners)").add_argument
    add("--cert", metavar="FILE", help="server certificate chain (PEM) for TLS listeners")
    add("--key", metavar="FILE", help="its private key (PEM)")
    add("--ca", metavar="FILE", help="CA certificates (PEM) client certificates must chain to")
    add("--crl", metavar="FILE", help="revocation lists (PEM) of --ca: revoked clients are refused")
    add(
        "--require-certificate",
        action="store_true",
        help="refuse TLS clients without a certificate signed by --ca",
    )
    add(
        "--use-identity-as-username",
        action="store_true",
        help="a TLS client's user name is its certificate's CN (no password needed)",
    )
    add = broker.add_argument_group("who may connect, and to which topics").add_argument
    add("--password-file", metavar="FILE", help="check user names and passwords against FILE")
    add(
        "--allow-anonymous",
        action="store_true",
        help="accept clients without a user name (with a password file, or beyond loopback)",
    )
    add(
        "--use-username-as-clientid",
        action="store_true",
        help="a client's id is its user name (one user cannot take over another's session)",
    )
    add("--acl-file", metavar="FILE", help="topics each client may read and write (see docs)")
    add = broker.add_argument_group("limits").add_argument
    add(
        "--max-connections",
        type=int,
        metavar="N",
        help="refuse a CONNECT beyond N open connections (default 10000; 0: no limit)",
    )
    add(
        "--max-publish-rate",
        type=float,
        metavar="R",
        help="PUBLISHes a second each client may send (default 0: no limit)",
    )
    add(
        "--max-sessions",
        type=int,
        metavar="N",
        help="refuse a CONNECT that would make a session beyond N (default 0: no limit)",
    )
    add(
        "--max-retained",
        type=int,
        metavar="N",
        help="retain no message on a new topic beyond N retained (default 0: no limit)",
    )
    add = broker.add_argument_group("persistence").add_argument
    add("--persist", metavar="FILE", help="keep retained messages and sessions in FILE (SQLite)")
    add(
        "--durability",
        choices=["none", "batched", "full"],
        help="batched: write every --persist-interval ms (default with --persist); "
        "full: acknowledge QoS 1/2 messages once on disk; none: write nothing",
    )
    add(
        "--persist-interval",
        type=int,
        metavar="MS",
        help="milliseconds between batched writes (default 100)",
    )
    add = broker.add_argument_group("logs, metrics and the event loop").add_argument
    add(
        "--sys-interval",
        type=float,
        metavar="SECONDS",
        help="seconds between updates of the $SYS topics (default 10; 0: none)",
    )
    add(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (default: none)",
    )
    add("--log-format", choices=["text", "json"], help="log lines as text (default) or JSON")
    add(
        "--event-loop",
        choices=["auto", "asyncio", "uvloop"],
        help="the event loop: uvloop when installed (auto, the default), or the one named",
    )
    add(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="least important log records written (default warning; info: connections)",
    )
    passwd = commands.add_parser(
        "passwd",
        help="add, change or delete a user of a broker password file",
        description="Add a user to the broker's password file or change their password\n"
        "(asked for twice), or delete them.",
        epilog=_PASSWD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    passwd.add_argument("file", metavar="FILE", help="the password file")
    passwd.add_argument("user", metavar="USER", help="the user name")
    passwd.add_argument("--delete", action="store_true", help="delete USER")
    passwd.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )
    args = parser.parse_args(argv)
    if args.command == "broker":
        return _broker(args)
    if args.command == "passwd":
        return _passwd(args)
    parser.print_help()  # no command: say what there is
    return 0


def _broker(args: argparse.Namespace) -> int:
    from fieldline.broker.config import BrokerConfig, ConfigError
    from fieldline.broker.configfile import apply_flags, load_config
    from fieldline.broker.persist import PersistenceError
    from fieldline.broker.run import run

    def read() -> BrokerConfig:
        config = load_config(args.config) if args.config else BrokerConfig()
        return apply_flags(
            config,
            host=args.host,
            port=args.port,
            tls_port=args.tls_port,
            ws_port=args.ws_port,
            wss_port=args.wss_port,
            ws_path=args.ws_path,
            cert=args.cert,
            key=args.key,
            ca=args.ca,
            crl=args.crl,
            require_certificate=args.require_certificate,
            use_identity_as_username=args.use_identity_as_username,
            password_file=args.password_file,
            allow_anonymous=args.allow_anonymous,
            use_username_as_clientid=args.use_username_as_clientid,
            acl_file=args.acl_file,
            max_connections=args.max_connections,
            max_publish_rate=args.max_publish_rate,
            max_sessions=args.max_sessions,
            max_retained=args.max_retained,
            persistence=args.persist,
            durability=args.durability,
            persist_interval=args.persist_interval,
            sys_interval=args.sys_interval,
            metrics_port=args.metrics_port,
            log_format=args.log_format,
            log_level=args.log_level,
            event_loop=args.event_loop,
        )

    try:
        run(read(), read if args.config else None)
    except ConfigError as e:
        print(f"fieldline broker: {e}", file=sys.stderr)
        return 2
    except PersistenceError as e:
        print(f"fieldline broker: {e}", file=sys.stderr)
        print("fieldline broker: not started; move the file aside to start empty", file=sys.stderr)
        return 3
    except OSError as e:
        print(f"fieldline broker: {e}", file=sys.stderr)
        return 1
    return 0


def _passwd(args: argparse.Namespace) -> int:
    import getpass

    from fieldline.broker.config import ConfigError
    from fieldline.broker.passwords import Passwords, check_username

    def fail(message: str, status: int = 2) -> int:
        print(f"fieldline passwd: {message}", file=sys.stderr)
        return status

    try:
        check_username(args.user)
        passwords = Passwords.load(args.file, missing_ok=not args.delete)
    except (ValueError, ConfigError) as e:
        return fail(str(e))
    if args.delete:
        if passwords.users.pop(args.user, None) is None:
            return fail(f"no user {args.user!r} in {args.file}", 1)
    else:
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = getpass.getpass(f"Password for {args.user}: ")
            if getpass.getpass("Again: ") != password:
                return fail("the passwords differ")
        if not password:
            return fail("the password is empty")
        passwords.set(args.user, password.encode())
    try:
        passwords.save()
    except OSError as e:
        return fail(f"cannot write {args.file}: {e.strerror}", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
