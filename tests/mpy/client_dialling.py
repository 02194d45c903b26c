# Driven by tests/test_client_dialling.py: the AsyncClient against a peer that
# accepts TCP and never answers, on CPython and on MicroPython. Prints how
# long (ms) disconnect() took while connect() dialled in another task, how
# connect() ended, and how long connect(timeout=1) took to give up.
#
#   micropython tests/mpy/client_dialling.py PORT [CA_FILE]

import sys

sys.path.insert(0, ".")  # run from the repository root

import asyncio  # noqa: E402

from fieldline.mqtt import AsyncClient  # noqa: E402

try:
    from time import ticks_diff, ticks_ms  # type: ignore[attr-defined]
except ImportError:  # CPython
    from time import monotonic

    def ticks_ms():  # type: () -> int
        return int(monotonic() * 1000)

    def ticks_diff(a, b):  # type: (int, int) -> int
        return a - b


port = int(sys.argv[1])
opts = {"version": 4, "timeout": 5}  # type: dict
if len(sys.argv) > 2:
    opts["ca_file"] = sys.argv[2]


def ms(since):  # type: (int) -> int
    return ticks_diff(ticks_ms(), since)


async def main():  # type: () -> None
    c = AsyncClient("localhost", port, **opts)
    task = asyncio.create_task(c.connect())
    await asyncio.sleep(0.2)  # dialling by now, or about to: either must end at once
    t = ticks_ms()
    await c.disconnect()
    print("disconnect", ms(t))
    try:
        await task
        print("connected")
    except Exception as e:
        print("connect", type(e).__name__, ms(t))
    opts["timeout"] = 1
    c = AsyncClient("localhost", port, reconnect=False, **opts)
    t = ticks_ms()
    try:
        await c.connect()
        print("connected")
    except Exception as e:
        print("timeout", type(e).__name__, ms(t))


asyncio.run(main())
