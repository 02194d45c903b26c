"""A session's timers: the Will Delay Interval against the end of the session, a takeover
and a clean start (MQTT 5.0 3.1.3.2.2), and Keep Alive while a plug-in hook decides
(MQTT-3.1.2-22). Over real sockets, against our broker."""

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
from fieldline.mqtt import Disconnect, PubAck, SubAck, Subscription, Will

# On uvloop (the default when installed) and on asyncio's own loop.
pytestmark = pytest.mark.usefixtures("both_event_loops")


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    yield from running()


# -- Keep Alive while an async plug-in hook decides (MQTT-3.1.2-22) -------------------


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


# -- a review of MQTT 5.0 features against the spec and Mosquitto ---------------------

# Will Delay Interval and Session Expiry (3.1.3.2.2): the Will goes when the delay has
# passed or the session ends, whichever comes first. Covered elsewhere: a reconnect
# (Clean Start 0) before the delay cancels it, DISCONNECT 0x04 publishes it, a normal
# DISCONNECT discards it (test_broker_sessions.py).

LONG_DELAY = {"will_delay_interval": 3600}


def watch(broker: BrokerThread, topic_filter: str) -> Raw:
    w = Raw(broker.port, "watcher")
    w.subscribe(Subscription(topic_filter, 1))
    return w


def test_a_will_goes_when_a_session_of_expiry_0_ends_not_after_its_delay(
    broker: BrokerThread,
) -> None:
    # Session Expiry 0: the session ends with the connection, before the delay.
    w = watch(broker, "will/#")
    c = Raw(broker.port, "d", will=Will("will/d", b"gone", 1, properties=LONG_DELAY))
    c.close()
    (m,) = w.messages(1)
    assert m.payload == b"gone"
    assert "will_delay_interval" not in (m.properties or {})  # a CONNECT property only
    w.close()


def test_a_will_goes_when_the_session_expires_before_its_delay(broker: BrokerThread) -> None:
    # Session Expiry 1 s, lowered to it by DISCONNECT 0x04 (3.14.2.2.2), Will Delay 1 h:
    # the Will goes when the session ends, about 1 s later; not at once, not in an hour.
    w = watch(broker, "will/#")
    will = Will("will/e", b"expired", 1, properties=LONG_DELAY)
    c = Raw(broker.port, "e", properties={"session_expiry_interval": 60}, will=will)
    c.session.disconnect(0x04, {"session_expiry_interval": 1})
    c.flush()
    started = time.monotonic()
    (m,) = w.messages(1)
    assert m.payload == b"expired"
    assert 0.8 <= time.monotonic() - started < 5
    wait_for(broker, "sessions", 1)  # the watcher's alone: the session ended with it
    w.close()
    c.close()


def test_a_clean_start_before_the_will_delay_ends_the_session_and_sends_the_will(
    broker: BrokerThread,
) -> None:
    # A new connection with Clean Start 1 ends the old session (MQTT-3.1.2-4), so its
    # Will goes then, as Mosquitto does (connect__on_authorised: context__send_will);
    # only a connection to the same session cancels it (MQTT-3.1.3-9).
    w = watch(broker, "will/#")
    props = {"session_expiry_interval": 3600}
    will = Will("will/c", b"left", 1, properties=LONG_DELAY)
    Raw(broker.port, "c", clean_start=False, properties=props, will=will).close()
    wait_for(broker, "connected", 1)
    assert w.quiet(0.2)
    again = Raw(broker.port, "c", clean_start=True)
    assert not again.connack.session_present
    assert [m.payload for m in w.messages(1)] == [b"left"]
    again.close()
    w.close()


def test_a_takeover_before_the_will_delay_cancels_the_will(broker: BrokerThread) -> None:
    # A takeover (MQTT-3.1.4-3) ends the old connection, whose Will waits for its delay
    # (3.1.2.5); the new connection continues the session, so it is not sent
    # (MQTT-3.1.3-9). One without a delay goes at the takeover (test_broker_sessions.py).
    w = watch(broker, "will/#")
    props = {"session_expiry_interval": 3600}
    will = Will("will/t", b"taken", 1, properties={"will_delay_interval": 1})
    old = Raw(broker.port, "t", clean_start=False, properties=props, will=will)
    new = Raw(broker.port, "t", clean_start=False, properties=props)
    assert new.connack.session_present
    assert isinstance(old.next(), Disconnect)  # 0x8E
    assert w.quiet(1.5)  # past the delay: nothing
    new.session.disconnect()
    new.flush()
    assert w.quiet(0.3)
    for c in (w, old, new):
        c.close()
