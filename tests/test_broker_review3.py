"""Fixes from a third review of the broker against MQTT 5.0, Mosquitto and EMQX: each
test names the rule it checks; those of a fix fail without it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_broker import WAIT, Raw, running
from test_broker_sessions import wait_for

from fieldline.broker import BrokerThread
from fieldline.mqtt import Disconnect, PubAck, SubAck, Subscription

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


# -- 2. Keep Alive while an async plug-in hook decides (MQTT-3.1.2-22) -------------------


@pytest.mark.parametrize("hook", ["authorize_publish", "authorize_subscribe"])
def test_keep_alive_does_not_run_out_while_a_hook_decides(hook: str) -> None:
    # While an async hook decides on a PUBLISH or SUBSCRIBE the broker reads nothing
    # more from that client (its packets stay in order), so the PINGREQs it sends wait
    # in the socket: they are not the client's silence, and MQTT-3.1.2-22 (1.5 x Keep
    # Alive without a packet) must not cut it off. Once the hook has answered, Keep
    # Alive holds as before: a client that then goes silent is disconnected (0x8D).
    started, release = threading.Event(), threading.Event()

    class Slow:
        async def decide(self, client_id: str, *args: Any) -> None:
            started.set()
            while not release.is_set():
                await asyncio.sleep(0.01)

    plugin = Slow()
    setattr(plugin, hook, plugin.decide)
    for broker in running(plugins=[plugin], hook_timeout=WAIT):
        c = Raw(broker.port, "slow", keep_alive=1)
        if hook == "authorize_publish":
            c.session.publish("ka/x", b"x", 1)
        else:
            c.session.subscribe([Subscription("ka/#", 1)])
        c.flush()
        assert started.wait(WAIT)
        # What is under test is time passing: twice 1.5 x Keep Alive, the client
        # sending PINGREQ as it should.
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            c.session.ping()
            c.flush()
            assert c.quiet(0.4), "cut off while the hook decided"
        release.set()
        assert isinstance(c.next(), PubAck if hook == "authorize_publish" else SubAck)
        ev = c.next()  # silent from now on
        assert isinstance(ev, Disconnect) and ev.reason_code == 0x8D
        c.close()


# -- 3. a shared subscription group with no member left (4.8.2) --------------------------


def test_a_message_no_shared_member_is_left_to_take_is_counted_as_dropped(
    broker: BrokerThread,
) -> None:
    # 4.8.2: the messages an ending member had not completed go to another member of
    # its group. With none left they are lost: counted, as every delivery dropped is,
    # in dropped_total ($SYS publish/messages/dropped, messages_dropped_total), and on
    # their own in shared_dropped.
    only = Raw(broker.port, "only", auto_flush=False, receive_maximum=1)
    only.subscribe(Subscription("$share/g/jobs", 1))
    only.flush()
    for payload in (b"1", b"2"):
        broker.call(broker.broker.publish, "jobs", payload, 1)
    only.messages(1)  # never acknowledged; the other one waits in the queue
    only.close()  # clean session: it ends now, and the group with it
    wait_for(broker, "sessions", 0)
    st = broker.call(broker.broker.stats)
    assert (st["shared_dropped"], st["dropped_total"]) == (2, 2)
