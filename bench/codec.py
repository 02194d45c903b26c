"""Codec throughput on CPython: one QoS 1 PUBLISH, encoded and parsed back.

Ours is ``encode(packet, version)`` then ``Parser.feed()`` + ``next_packet()``
on one reused Parser (one per connection, as a client keeps it). The
reference is the Rust codec on PyPI, ``mqtt5``: ``PublishPacket.write()`` then
``mqtt5.read()``. mqtt5 speaks 5.0 only, so it is the reference for the 3.1.1
rows too (its 5.0 PUBLISH without properties is one byte longer than 3.1.1's).

Each cell is the best of ``REPEAT`` timed runs, each of at least ``MIN_TIME``
seconds, with the garbage collector off (as ``timeit`` does).
"""

from __future__ import annotations

import gc
import platform
import time
from collections.abc import Callable

import mqtt5

from fieldline.mqtt import Parser, Publish, encode

from ._report import Column, Section, Table, goal_result

TOPIC = "sensors/device-42/temperature"
PAYLOAD_SIZES = (64, 4096)
VERSIONS = ((4, "3.1.1"), (5, "5.0"))
GOAL = 0.3  # from the issue: encode+decode at least 0.3× the Rust codec
MIN_TIME = 0.5
REPEAT = 3

Loop = Callable[[int], object]


def _time(loop: Loop, n: int) -> float:
    enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        loop(n)
        return time.perf_counter() - t0
    finally:
        if enabled:
            gc.enable()


def rate(loop: Loop, min_time: float = MIN_TIME, repeat: int = REPEAT) -> float:
    """Messages per second of ``loop(n)`` (which handles n messages): grow n
    until one run takes ``min_time``, then keep the best of ``repeat`` runs of
    that n (the run that reached ``min_time`` is the first of them)."""
    n = 1
    while True:
        best = _time(loop, n)
        if best >= min_time:
            break
        # Aim 20% past min_time, at least doubling, so calibration ends quickly.
        n = max(2 * n, int(n * 1.2 * min_time / max(best, 1e-9)))
    for _ in range(repeat - 1):
        best = min(best, _time(loop, n))
    return n / best


def _ours(packet: Publish, version: int) -> tuple[Loop, Loop, Loop]:
    data: bytes = encode(packet, version)
    parser = Parser(version)
    parser.feed(data)
    if parser.next_packet() != packet:
        raise AssertionError("Fieldline round trip changed the packet")

    def both(n: int) -> None:
        for _ in range(n):
            parser.feed(encode(packet, version))
            parser.next_packet()

    def enc(n: int) -> None:
        for _ in range(n):
            encode(packet, version)

    def dec(n: int) -> None:
        for _ in range(n):
            parser.feed(data)
            parser.next_packet()

    return both, enc, dec


def _reference(packet: mqtt5.PublishPacket) -> tuple[Loop, Loop, Loop]:
    data = packet.write()
    read = mqtt5.read
    # read() takes any buffer; the stub says memoryview, but wrapping each
    # message in one would charge the reference for our choice of type.
    back, size = read(data)  # type: ignore[arg-type]
    if size != len(data) or not isinstance(back, mqtt5.PublishPacket) or back != packet:
        raise AssertionError("mqtt5 round trip changed the packet")

    def both(n: int) -> None:
        for _ in range(n):
            read(packet.write())  # type: ignore[arg-type]

    def enc(n: int) -> None:
        for _ in range(n):
            packet.write()

    def dec(n: int) -> None:
        for _ in range(n):
            read(data)  # type: ignore[arg-type]

    return both, enc, dec


def run(quick: bool = False) -> Section:
    """Measure every (version, payload size) cell; returns the codec section."""
    min_time, repeat = (0.002, 1) if quick else (MIN_TIME, REPEAT)
    table = Table(
        [
            Column("MQTT"),
            Column("payload"),
            Column("enc+dec ours msg/s", "rate"),
            Column("enc+dec mqtt5 msg/s", "rate"),
            Column("enc+dec ours/mqtt5", "ratio"),
            Column(f"goal ≥{GOAL}×"),
            Column("encode ours msg/s", "rate"),
            Column("encode mqtt5 msg/s", "rate"),
            Column("encode ours/mqtt5", "ratio"),
            Column("decode ours msg/s", "rate"),
            Column("decode mqtt5 msg/s", "rate"),
            Column("decode ours/mqtt5", "ratio"),
        ]
    )
    ratios: list[float] = []
    for size in PAYLOAD_SIZES:
        payload = bytes(i & 255 for i in range(size))
        reference = _reference(
            mqtt5.PublishPacket(
                topic=TOPIC, payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=42
            )
        )
        # The reference is measured once per payload size and shared by both rows.
        theirs = [rate(loop, min_time, repeat) for loop in reference]
        for version, label in VERSIONS:
            ours = [
                rate(loop, min_time, repeat)
                for loop in _ours(Publish(TOPIC, payload, qos=1, packet_id=42), version)
            ]
            r = [o / t for o, t in zip(ours, theirs, strict=True)]
            ratios.append(r[0])
            table.add(
                label,
                f"{size:,} B",
                ours[0],
                theirs[0],
                r[0],
                "met" if r[0] >= GOAL else "not met",
                ours[1],
                theirs[1],
                r[1],
                ours[2],
                theirs[2],
                r[2],
            )
    worst = min(ratios)
    notes = [
        f"One PUBLISH, QoS 1, topic `{TOPIC}`, no properties; msg/s = messages per "
        f"second on one core, best of {repeat} run(s) of ≥{min_time} s each, GC off.",
        "ours: `encode(packet, version)`, then `Parser.feed()` + `next_packet()` on one "
        "reused Parser. mqtt5 (Rust, PyPI `mqtt5`): `PublishPacket.write()`, then "
        "`mqtt5.read()`. mqtt5 speaks MQTT 5.0 only, so its 5.0 figures are the "
        "reference for the 3.1.1 rows too (measured once per payload size).",
        f"Goal (enc+dec ≥{GOAL}× mqtt5): worst row {worst:.2f}× — "
        f"{goal_result(worst, GOAL, at_most=False)}.",
    ]
    env = f"{platform.python_implementation()} {platform.python_version()}"
    return Section("codec", "Codec throughput (CPython)", [table], notes, env)
