# Driven by tests/test_micropython.py: the blocking client over TLS, with the
# CA (and optionally a client certificate) made by the test; MicroPython's own
# ssl module does the TLS.
#
#   micropython tests/mpy/client_tls.py blocking|asyncio PORT CA_FILE [CERT_FILE KEY_FILE]

import sys

sys.path.insert(0, ".")  # run from the repository root

import asyncio  # noqa: E402

from fieldline.mqtt import AsyncClient, Client  # noqa: E402

kind, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cert = sys.argv[4] if len(sys.argv) > 4 else None
key = sys.argv[5] if len(sys.argv) > 5 else None
opts = {"version": 4, "ca_file": ca, "cert_file": cert, "key_file": key, "timeout": 10}


async def main():
    async with AsyncClient("localhost", port, **opts) as c:
        await c.subscribe("mpy/tls", qos=1)
        stream = c.messages()
        await c.publish("mpy/tls", b"over TLS", qos=1)
        assert (await stream.__anext__()).payload == b"over TLS"


if kind == "asyncio":
    asyncio.run(main())
else:
    with Client("localhost", port, **opts) as c:
        c.subscribe("mpy/tls", qos=1)
        c.publish("mpy/tls", b"over TLS", qos=1)
        assert c.recv().payload == b"over TLS"
print("OK")
