"""The `fieldline` command. Later issues add sub-commands (hub, demo)."""

from __future__ import annotations

import argparse
import asyncio
import sys

import fieldline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fieldline", description=__doc__)
    parser.add_argument("--version", action="version", version="fieldline " + fieldline.__version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    broker = commands.add_parser(
        "broker", help="run the MQTT 3.1.1/5.0 broker", description="Run the MQTT broker."
    )
    broker.add_argument("--host", default="127.0.0.1", help="address to listen on")
    broker.add_argument("--port", type=int, default=1883, help="TCP port (0: a free one)")
    args = parser.parse_args(argv)
    if args.command == "broker":
        from fieldline.broker.run import serve

        try:
            asyncio.run(serve(args.host, args.port))
        except OSError as e:
            print(f"fieldline broker: {e}", file=sys.stderr)
            return 1
        return 0
    print("fieldline", fieldline.__version__)
    print("The MQTT protocol core is ready: see docs/mqtt.md for how to use it.")
    print("Run an MQTT broker with `fieldline broker` (docs/broker.md).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
