"""A device whose MQTT client keeps its QoS 1 messages in a Queue, for
tests/test_store_queue_mqtt.py.

``device.py first HOST PORT VERSION FOLDER N``: connect, publish one message
(acknowledged: it leaves the queue), print ``up``; on the line ``offline`` on
stdin (the test has cut the network) wait until the client saw the connection
go, print ``offline``, publish N QoS 1 messages with ``timeout=0`` (each call
returns once the message is in the queue), printing ``queued I ENTRIES``
after each, then ``done``, and wait to be killed.

``device.py second HOST PORT VERSION FOLDER``: open the queue, print
``pending ENTRIES``, connect (the stored messages go out), handle the
connection until the queue is empty, disconnect, print ``empty``, exit 0.

With a persistent session, for tests/test_client_persist_qos2.py:
``device.py qos2-first HOST PORT VERSION FOLDER``: connect (clean start 0),
publish ``A`` at QoS 2 and wait until it is complete, print ``A``; on the
line ``B`` publish ``B`` with ``timeout=0`` (the PUBLISH is written, nothing
more is read),
print ``B``, and wait to be killed: the broker's PUBREC for ``B`` stays
unread. ``device.py qos2-released ...``: the same, but once ``B`` is
published it handles the connection until the PUBREC has come and is noted
in the queue, prints ``released`` and waits to be killed: the PUBCOMP for
``B`` stays unread. ``device.py qos2-second HOST PORT VERSION FOLDER``: resume the
session (``B`` goes out again), publish ``C`` at QoS 2, handle the
connection until the queue is empty, disconnect, print ``done``, exit 0.
"""

import sys
import time

from fieldline.mqtt import Client
from fieldline.store import Queue

try:
    from collections.abc import Callable
    from typing import Any
except ImportError:  # MicroPython: it never evaluates the annotations
    pass

WAIT = 10.0
TOPIC = "outbox/device-7"
QOS2_TOPIC = "qos2/device-9"


def payload(i: int) -> bytes:
    """Message ``i``: binary, with a newline and a size that varies."""
    return b"msg %d\n" % i + bytes(range(256))[: (i * 37) % 256]


def properties(version: int, i: int) -> "dict[str, Any] | None":
    if version != 5:
        return None
    return {"content_type": "application/x-test", "user_property": [("n", str(i))]}


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def client(host: str, port: str, version: str, queue: Queue, **options: Any) -> Client:
    options.setdefault("client_id", "device-7")
    options.setdefault("backoff_min", 0.05)
    options.setdefault("backoff_max", 0.2)
    return Client(host, int(port), version=int(version), persistence=queue, timeout=WAIT, **options)


def first(host: str, port: str, version: str, folder: str, n: str) -> None:
    q = Queue(folder)
    c = client(host, port, version, q)
    c.connect()
    c.publish("outbox/online", b"online", qos=1)  # returns on its PUBACK
    assert len(q) == 0, len(q)
    say("up")
    assert sys.stdin.readline() == "offline\n"
    deadline = time.time() + WAIT
    while c.is_connected:  # the proxy reset the connection: the next read sees it
        assert time.time() < deadline, "still connected"
        c.loop(0.5)
    say("offline")
    for i in range(int(n)):
        c.publish(TOPIC, payload(i), qos=1, properties=properties(int(version), i), timeout=0)
        say(f"queued {i} {len(q)}")
    say("done")
    sys.stdin.read()  # killed here, still offline, without a DISCONNECT


def second(host: str, port: str, version: str, folder: str) -> None:
    q = Queue(folder)
    say(f"pending {len(q)}")
    c = client(host, port, version, q)
    c.connect()
    deadline = time.time() + WAIT
    while len(q):  # each PUBACK removes its message
        assert time.time() < deadline, f"{len(q)} messages still queued"
        c.loop(0.5)
    c.disconnect()
    q.close()
    say("empty")


def resuming(host: str, port: str, version: str, queue: Queue) -> Client:
    return client(
        host,
        port,
        version,
        queue,
        client_id="device-9",
        clean_start=False,
        session_expiry=3600,
        reconnect=False,
    )


def qos2_first(host: str, port: str, version: str, folder: str) -> None:
    c = resuming(host, port, version, Queue(folder))
    c.connect()
    c.publish(QOS2_TOPIC, b"A", qos=2)  # returns on its PUBCOMP
    say("A")
    assert sys.stdin.readline() == "B\n"
    c.publish(QOS2_TOPIC, b"B", qos=2, timeout=0)
    say("B")
    sys.stdin.read()  # killed here, with B's PUBREC unread


def qos2_released(host: str, port: str, version: str, folder: str) -> None:
    q = Queue(folder)
    c = resuming(host, port, version, q)
    c.connect()
    c.publish(QOS2_TOPIC, b"A", qos=2)
    say("A")
    assert sys.stdin.readline() == "B\n"
    c.publish(QOS2_TOPIC, b"B", qos=2, timeout=0)
    deadline = time.time() + WAIT
    while not q.pending()[0][1][6]:  # until the PUBREC is handled and noted
        assert time.time() < deadline, "B never released"
        c.loop(0.5)
    say("released")
    sys.stdin.read()  # killed here, with the PUBCOMP for B unread


def qos2_second(host: str, port: str, version: str, folder: str) -> None:
    q = Queue(folder)
    c = resuming(host, port, version, q)
    c.connect()
    c.publish(QOS2_TOPIC, b"C", qos=2)
    deadline = time.time() + WAIT
    while len(q):
        assert time.time() < deadline, f"{len(q)} messages still queued"
        c.loop(0.5)
    c.disconnect()
    q.close()
    say("done")


if __name__ == "__main__":
    modes: dict[str, Callable[..., None]] = {
        "first": first,
        "second": second,
        "qos2-first": qos2_first,
        "qos2-released": qos2_released,
        "qos2-second": qos2_second,
    }
    modes[sys.argv[1]](*sys.argv[2:])
