"""PUBRELs come back in the order the PUBRECs came, across a restart of the broker
(MQTT-4.6.0-3). A subscriber takes two QoS 2 messages, a then b, and answers PUBREC for b
first, then a; it gets both PUBRELs and completes neither. The broker restarts on its
file, and the subscriber resumes its session: the PUBRELs it is sent again must come b
then a, not in the order the messages were published."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from test_broker import WAIT, read_packet, send_connect
from test_broker_persistence import BrokerProc, Peer, brokers, props, read_until  # noqa: F401

from fieldline.mqtt import ConnAck, Connect, PubRel, Subscription


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("ending", ["kill", "stop"])
def test_pubrels_are_resent_in_pubrec_order_after_a_restart(
    brokers: Callable[..., BrokerProc],  # noqa: F811
    version: int,
    ending: str,
) -> None:
    # Durability "full": the PUBLISHes are in the file before the PUBRECs come, which
    # then change rows already written.
    b = brokers("--durability", "full").start()
    sub = Peer(b.port, "order-sub", version, clean_start=False, properties=props(version),
               auto_flush=False, manual_ack=True)  # fmt: skip
    sub.subscribe(Subscription("o/#", 2))
    sub.flush()
    pub = Peer(b.port, "order-pub", version)
    pub.publish("o/a", b"a", 2)
    pub.publish("o/b", b"b", 2)
    pub.close()
    a, m = sub.messages(2)
    assert (a.payload, m.payload) == (b"a", b"b")
    sub.session.ack(m.packet_id)  # PUBREC for b first
    sub.flush()
    sub.session.ack(a.packet_id)  # then for a
    sub.flush()
    # Both PUBRELs came (with durability "full", once the commit recording the PUBRECs
    # was done); our PUBCOMPs are never sent.
    read_until(sub, lambda: not sub.session._rx2)
    sub.close()
    if ending == "kill":
        b.kill()
    else:
        b.stop()
    b.start()
    connect = Connect("order-sub", False, 60, protocol_level=version, properties=props(version))
    sock = send_connect(b.port, connect, version)
    try:
        ack = read_packet(sock, version)
        assert isinstance(ack, ConnAck) and ack.session_present
        sock.settimeout(WAIT)
        resent = [read_packet(sock, version), read_packet(sock, version)]
    finally:
        sock.close()
    assert all(isinstance(p, PubRel) for p in resent), resent
    assert [p.packet_id for p in resent] == [m.packet_id, a.packet_id]  # MQTT-4.6.0-3
    b.stop()
