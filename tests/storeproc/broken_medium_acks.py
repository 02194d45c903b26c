"""A device whose outgoing queue stops being writable once the messages are
sent, for tests/test_client_persistence_faults.py.

``broken_medium_acks.py HOST PORT VERSION FOLDER QOS N``: a ``Queue`` in FOLDER
as the client's ``persistence``, whose ``done()`` and ``released()`` then fail
as a broken flash chip does (``StoreFullError`` around ``EIO``: on MicroPython
no ``OSError``); publish N messages at QOS, each waiting for its
acknowledgement, printing ``acked I`` after each; then ``connected N``, N the connections
made (0 if none is up now), and exit 0.
"""

import errno
import sys

from fieldline.mqtt import Client
from fieldline.store import Queue, StoreFullError


class BrokenAfterPut(Queue):
    """The medium takes the message, then fails every later write."""

    def done(self, key):  # type: ignore[no-untyped-def]
        raise StoreFullError("the acknowledgement", OSError(errno.EIO, "I/O error"))

    def released(self, key):  # type: ignore[no-untyped-def]
        raise StoreFullError("the release", OSError(errno.EIO, "I/O error"))


def say(line: str) -> None:
    print(line)
    sys.stdout.flush()


def main() -> None:
    host, port, version, folder, qos, n = sys.argv[1:7]
    outbox = BrokenAfterPut(folder)
    c = Client(host, int(port), client_id="broken-flash", version=int(version), persistence=outbox)
    connects = []  # type: list[object]
    c.on_connect = connects.append
    c.connect()
    for i in range(int(n)):
        c.publish(f"flash/{i}", b"m" + str(i).encode(), qos=int(qos), timeout=10)
        say(f"acked {i}")
    say(f"connected {len(connects) if c.is_connected else 0}")
    c.disconnect()
    outbox.close()


main()
