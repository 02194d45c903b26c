"""Durability "full" holds the PUBCOMP for a publisher's PUBREL until the commit recording
the release is done (``Connection._complete_later``). A client that reconnects while it
is held (a takeover) gets no PUBCOMP on the old connection; the PUBREL it sends again on
the new one is answered once a commit is done, and the packet id then carries a new
message, delivered once."""

from __future__ import annotations

import socket
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from test_broker import WAIT, Raw, read_packet, send_connect
from test_broker_persistence import props

from fieldline.broker import BrokerThread
from fieldline.mqtt import (
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Subscription,
)
from fieldline.mqtt._codec import encode


def send(sock: socket.socket, packets: Iterable[Any], version: int) -> None:
    sock.sendall(b"".join(encode(p, version) for p in packets))


def connect(port: int, version: int) -> socket.socket:
    c = Connect("held-pub", False, 60, protocol_level=version, properties=props(version))
    sock = send_connect(port, c, version)
    assert isinstance(read_packet(sock, version), ConnAck)
    return sock


@pytest.mark.parametrize("version", [4, 5])
def test_takeover_while_a_pubcomp_is_held(tmp_path: Path, version: int) -> None:
    with BrokerThread(persistence=str(tmp_path / "b.db"), durability="full") as b:
        store = b.broker.persist
        assert store is not None
        armed, gate = threading.Event(), threading.Event()
        commit = store._commit

        def gated(db: sqlite3.Connection, ops: Any) -> bool:
            if armed.is_set():
                gate.wait(WAIT)  # the writer thread: every commit from now on waits
            return commit(db, ops)

        store._commit = gated  # type: ignore[method-assign]
        sub = Raw(b.port, "held-sub", version)
        sub.subscribe(Subscription("held/#", 2))
        old = connect(b.port, version)
        try:
            send(old, [Publish("held/1", b"first", 2, packet_id=1)], version)
            assert read_packet(old, version) == PubRec(1)
            armed.set()
            # A PINGRESP is not held: it coming first shows the PUBREL handled and its
            # PUBCOMP waiting for the commit.
            send(old, [PubRel(1), PingReq()], version)
            assert isinstance(read_packet(old, version), PingResp)
            new = connect(b.port, version)  # takes over the session
            rest = []
            while (p := read_packet(old, version)) is not None:
                rest.append(p)
            assert all(isinstance(p, Disconnect) for p in rest), rest  # no PUBCOMP
            # The client had no PUBCOMP: it sends the PUBREL again (MQTT-4.4.0-1).
            send(new, [PubRel(1), PingReq()], version)
            assert isinstance(read_packet(new, version), PingResp)  # still held
            gate.set()
            done = read_packet(new, version)
            assert isinstance(done, PubComp) and done.packet_id == 1
            # The id is free: a new message under it is delivered, once.
            send(new, [Publish("held/2", b"second", 2, packet_id=1)], version)
            assert read_packet(new, version) == PubRec(1)
            send(new, [PubRel(1)], version)
            assert read_packet(new, version) == PubComp(1)
            assert [m.payload for m in sub.messages(2)] == [b"first", b"second"]
            assert sub.quiet()
        finally:
            gate.set()
            old.close()
        new.close()
        sub.close()
