"""``Session(SERVER, released_events=True)``: a PUBREL is an event too, its PUBCOMP
the last packet queued, so that a broker that stores the ids of the QoS 2 messages it
received can hold the PUBCOMP until the release is on disk (fieldline/broker's
``Connection._complete_later``)."""

from __future__ import annotations

import pytest
from test_session import VERSIONS, Pair, decode_all

from fieldline.mqtt import PubComp, PubRel


@pytest.mark.parametrize("v", VERSIONS)
def test_a_server_with_released_events_hears_of_a_pubrel(v: int) -> None:
    p = Pair(v, server={"released_events": True})
    kept = {"session_expiry_interval": 60} if v == 5 else None
    p.connect(clean=False, props=kept)
    pid = p.c.publish("t", b"two", 2)
    (ev,) = p.c2s()
    assert ev.payload == b"two"
    p.s2c()  # the PUBREC; the client sends its PUBREL
    assert p.c2s() == [PubRel(pid)]
    assert decode_all(p.s._out[-1], v) == [PubComp(pid)]  # queued last: held or sent
    assert pid not in p.s._rx2  # released: the id may carry a new message now
    # A PUBREL sent again (the PUBCOMP lost with a connection) is an event too; a
    # 5.0 server answers it with 0x92 Packet Identifier not found.
    p.s.data_to_send()  # lost with the connection: the client still holds the PUBREL
    p.drop()
    assert p.connect(clean=False, props=kept)
    assert p.sev[-1] == PubRel(pid)  # sent again (MQTT-4.4.0-1), not the PUBLISH
    p.run()
    assert p.cev[-1] == PubComp(pid, 0x92 if v == 5 else 0)


@pytest.mark.parametrize("v", VERSIONS)
def test_a_client_with_released_events_hears_of_no_pubrel(v: int) -> None:
    # A client's released_events are about its own messages (PubRec) only.
    p = Pair(v, client={"released_events": True})
    p.connect()
    p.s.publish("t", b"two", 2)
    (ev,) = p.s2c()
    assert ev.payload == b"two"
    p.c2s()  # the PUBREC; the server sends its PUBREL
    assert p.s2c() == []  # no event for it, and the PUBCOMP goes
    assert p.c2s() == [PubComp(ev.packet_id)]
