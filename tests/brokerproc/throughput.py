"""QoS 1 (or 2) throughput of ``fieldline broker`` at each durability level, for
docs/broker.md.

    python tests/brokerproc/throughput.py [--messages 20000] [--size 64] [--inflight 100]
                                          [--offline N] [--qos 1]

For each of none, batched and full: a broker process (``--persist`` on a fresh file
in a temporary folder), a persistent QoS 1 subscriber (clean session 0) that is
online, and one paho publisher with 100 messages in flight. Prints messages a second
from the first PUBLISH to the last PUBACK, and to the last delivery. ``--offline N``
adds N persistent subscribers that are offline, so each message is also queued (and
written) N times. ``--qos 2``: published and subscribed at QoS 2 (the rate is then
to the last PUBCOMP). Not a test: a quick local measurement, one run per level.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho

ROOT = Path(__file__).resolve().parent.parent.parent


def start(args: list[str]) -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fieldline", "broker", "--port", "0", *args],
        stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None
    m = re.search(r"mqtt://127\.0\.0\.1:(\d+)", proc.stdout.readline())
    assert m is not None, "the broker did not start"
    proc.stdout.readline()
    return proc, int(m.group(1))


def offline(port: int, n: int, qos: int) -> None:
    """``n`` persistent sessions subscribed to tp/# at ``qos``, left offline."""
    for i in range(n):
        done = threading.Event()
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"tp-off{i}",
                        clean_session=False)  # fmt: skip
        c.on_subscribe = lambda *a, done=done: done.set()
        c.connect("127.0.0.1", port)
        c.loop_start()
        c.subscribe("tp/#", qos)
        assert done.wait(10)
        c.disconnect()
        c.loop_stop()


def run(
    level: str, n: int, size: int, inflight: int, n_offline: int, folder: Path, qos: int = 1
) -> tuple[float, float]:
    config = folder / f"{level}.toml"
    config.write_text(f"max_queued_messages = {2 * n}\nmax_queued_bytes = {4 * n * size}\n")
    # A fresh file per run (and per level).
    args = ["--config", str(config)]
    if level != "none":
        args += ["--persist", str(folder / f"{level}.db"), "--durability", level]
    proc, port = start(args)
    try:
        offline(port, n_offline, qos)
        got = threading.Event()
        received = 0

        def on_message(c: paho.Client, u: object, m: paho.MQTTMessage) -> None:
            nonlocal received
            received += 1
            if received == n:
                got.set()

        sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="tp-sub",
                          clean_session=False)  # fmt: skip
        sub.on_message = on_message
        subscribed = threading.Event()
        sub.on_subscribe = lambda *a: subscribed.set()
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        sub.subscribe("tp/#", qos)
        assert subscribed.wait(10)
        acked = threading.Event()
        acks = 0

        def on_publish(c: paho.Client, u: object, mid: int, rc: object, p: object) -> None:
            nonlocal acks
            acks += 1
            if acks == n:
                acked.set()

        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="tp-pub")
        pub.max_inflight_messages_set(inflight)
        pub.max_queued_messages_set(0)
        pub.on_publish = on_publish
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        payload = b"x" * size
        t0 = time.perf_counter()
        for i in range(n):
            pub.publish(f"tp/{i % 10}", payload, qos=qos)
        assert acked.wait(300), f"{acks} PUBACKs"
        t_ack = time.perf_counter() - t0
        assert got.wait(300), f"{received} deliveries"
        t_all = time.perf_counter() - t0
        for c in (pub, sub):
            c.disconnect()
            c.loop_stop()
        return n / t_ack, n / t_all
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--inflight", type=int, default=100)
    parser.add_argument(
        "--offline", type=int, default=0, metavar="N",
        help="also N persistent subscribers, offline: each message is queued N times",
    )  # fmt: skip
    parser.add_argument("--qos", type=int, default=1, choices=(1, 2))
    a = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        print(f"{a.messages} QoS {a.qos} messages of {a.size} bytes, {a.inflight} in flight, "
              f"{a.offline} offline subscribers")  # fmt: skip
        print("durability   completed/s  delivered/s")
        for level in ("none", "batched", "full"):
            acked, delivered = run(
                level, a.messages, a.size, a.inflight, a.offline, Path(folder), a.qos
            )
            print(f"{level:<12} {acked:>10.0f}   {delivered:>11.0f}", flush=True)


if __name__ == "__main__":
    main()
