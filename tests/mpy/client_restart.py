# Driven by tests/test_micropython.py: a client keeps its session across a
# broker restart. Prints RESTART, waits for a line on stdin (the broker was
# stopped and started again meanwhile), then checks the client reconnects,
# restores its subscription and delivers a message sent while it was down.
#
#   micropython tests/mpy/client_restart.py HOST PORT VERSION blocking|asyncio

import sys

sys.path.insert(0, ".")  # run from the repository root

import asyncio  # noqa: E402

from fieldline.mqtt import AsyncClient, Client  # noqa: E402

host, port, version, kind = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
topic = "mpy/restart/%s/%d" % (kind, version)
opts = {
    "client_id": "mpy-restart-%s-%d" % (kind, version),
    "version": version,
    "clean_start": True,
    "session_expiry": 3600,
    "backoff_min": 0.05,
    "backoff_max": 0.5,
    "timeout": 20,
}
if version == 4:
    opts["clean_start"] = False  # 3.1.1: a persistent session


def blocking():
    c = Client(host, port, **opts)
    c.connect()
    c.subscribe(topic, qos=1)
    c.publish(topic, b"before", qos=1)
    assert c.recv().payload == b"before"
    print("RESTART")
    sys.stdin.readline()
    c.publish(topic, b"after", qos=2)  # reconnects, then delivers
    assert c.recv().payload == b"after"
    c.disconnect()


async def asyncio_main():
    c = AsyncClient(host, port, **opts)
    await c.connect()
    await c.subscribe(topic, qos=1)
    stream = c.messages()
    await c.publish(topic, b"before", qos=1)
    assert (await stream.__anext__()).payload == b"before"
    print("RESTART")
    sys.stdin.readline()  # blocks the loop; the reading task notices the loss after
    await c.publish(topic, b"after", qos=2)
    assert (await stream.__anext__()).payload == b"after"
    await c.disconnect()


if kind == "blocking":
    blocking()
else:
    asyncio.run(asyncio_main())
print("OK")
