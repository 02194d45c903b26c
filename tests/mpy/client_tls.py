# Driven by tests/test_micropython.py: the blocking client over TLS, with the
# CA (and optionally a client certificate) made by the test; MicroPython's own
# ssl module does the TLS.
#
#   micropython tests/mpy/client_tls.py PORT CA_FILE [CERT_FILE KEY_FILE]

import sys

sys.path.insert(0, ".")  # run from the repository root

from fieldline.mqtt import Client  # noqa: E402

port, ca = int(sys.argv[1]), sys.argv[2]
cert = sys.argv[3] if len(sys.argv) > 3 else None
key = sys.argv[4] if len(sys.argv) > 4 else None
c = Client("localhost", port, version=4, ca_file=ca, cert_file=cert, key_file=key, timeout=10)
c.connect()
c.subscribe("mpy/tls", qos=1)
c.publish("mpy/tls", b"over TLS", qos=1)
assert c.recv().payload == b"over TLS"
c.disconnect()
print("OK")
