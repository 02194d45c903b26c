"""The `fieldline` command. Later issues add sub-commands (broker, hub, demo)."""

from __future__ import annotations

import argparse
import sys

import fieldline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fieldline", description=__doc__)
    parser.add_argument("--version", action="version", version="fieldline " + fieldline.__version__)
    parser.parse_args(argv)
    print("fieldline", fieldline.__version__)
    print("The MQTT protocol core is ready: see docs/mqtt.md for how to use it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
