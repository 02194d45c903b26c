"""Fixes from a third review of the broker against MQTT 5.0, Mosquitto and EMQX: each
test names the rule it checks; those of a fix fail without it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from test_broker import WAIT, Raw, running
from test_broker_sessions import wait_for

from fieldline.broker import BrokerThread
from fieldline.mqtt import Subscription

# On uvloop (the default when installed) and on asyncio's own loop.
pytestmark = pytest.mark.usefixtures("both_event_loops")


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    yield from running()


def wait_past(broker: BrokerThread, client_id: str) -> None:
    """Wait until the broker's clock has passed when the Message Expiry Interval of
    every message in flight to ``client_id`` runs out."""
    b = broker.broker

    def left() -> float:
        deadlines = b.sessions.get(client_id).expiry.values()  # type: ignore[union-attr]
        return max(deadlines) - b.loop.time()

    end = time.monotonic() + WAIT
    while broker.call(left) >= 0:
        assert time.monotonic() < end, "the messages never expired"
        time.sleep(0.05)


# -- 1. an in-flight message whose Message Expiry Interval ran out (3.3.2.3.3) ----------


@pytest.mark.parametrize("interval", [1, 0])
def test_an_expired_message_in_flight_is_resent_with_interval_0(
    broker: BrokerThread, interval: int
) -> None:
    # Sent and never acknowledged, the messages' delivery has started: MQTT-3.3.2-5
    # deletes only a copy whose delivery has not, and MQTT-4.4.0-1 has them sent again
    # when the session resumes. They carry the interval left (MQTT-3.3.2-6): none, 0,
    # which the broker itself reads as a lifetime of 0 s, not as "never expires".
    # (Mosquitto drops them instead: db__message_write_inflight_out_single.)
    props = {"session_expiry_interval": 60}
    c = Raw(broker.port, "x", clean_start=False, properties=props, auto_flush=False)
    c.subscribe(Subscription("exp/#", 2))
    expiring = {"message_expiry_interval": interval}
    broker.call(broker.broker.publish, "exp/1", b"qos 1", 1, False, expiring)
    broker.call(broker.broker.publish, "exp/2", b"qos 2", 2, False, expiring)
    first = c.messages(2)
    assert [m.properties["message_expiry_interval"] for m in first] == [interval] * 2
    c.close()  # no PUBACK, no PUBREC sent
    wait_for(broker, "connected", 0)
    wait_past(broker, "x")
    again = Raw(broker.port, "x", clean_start=False, properties=props)
    assert again.connack.session_present
    got = again.messages(2)
    assert [(m.topic, m.dup) for m in got] == [("exp/1", True), ("exp/2", True)]
    assert [m.properties["message_expiry_interval"] for m in got] == [0, 0]
    assert broker.call(broker.broker.stats)["expired"] == 0
    assert again.quiet(0.2)
    again.close()
