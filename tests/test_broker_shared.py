"""Shared subscriptions (``$share``, MQTT 5.0 4.8.2): where a group's messages go when a
member leaves, its session expires, or the broker restarts, and what the group refuses.
Over real sockets, against our broker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_broker import Raw, publish_each, read_packet, running, send_connect
from test_broker_sessions import wait_for

from fieldline.broker import BrokerThread
from fieldline.mqtt import Connect, Disconnect, Subscribe, Subscription, encode

# On uvloop (the default when installed) and on asyncio's own loop.
pytestmark = pytest.mark.usefixtures("both_event_loops")


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    yield from running()


@pytest.mark.parametrize("version", [4, 5])
def test_shared_member_leaving_hands_its_unacked_qos1_messages_to_the_group(
    broker: BrokerThread, version: int
) -> None:
    # 4.8.2: a member's session ends with QoS 1 messages in flight (unacknowledged)
    # and queued behind its Receive Maximum: the group's other member gets them.
    slow = Raw(broker.port, "slow", version, auto_flush=False, receive_maximum=1)
    slow.subscribe(Subscription("$share/g/jobs", 1))
    slow.flush()
    fast = Raw(broker.port, "fast", version)
    fast.subscribe(Subscription("$share/g/jobs", 1))
    sent = [b"%d" % i for i in range(6)]
    publish_each(broker, "jobs", sent, 1)
    (in_flight,) = slow.messages(1)  # never acknowledged (auto_flush=False)
    slow.close()  # clean session: it ends now
    got = [m.payload for m in fast.messages(6)]
    assert sorted(got) == sent  # each exactly once, the slow member's included
    assert in_flight.payload in got
    assert fast.quiet()
    fast.close()


def test_shared_member_leaving_keeps_a_qos2_message_it_started(broker: BrokerThread) -> None:
    # MQTT-4.8.2-5: a QoS 2 message whose delivery started goes to no other member;
    # those still queued for the member had not started and do go to the group.
    slow = Raw(broker.port, "slow", auto_flush=False, receive_maximum=1)
    slow.subscribe(Subscription("$share/g/jobs", 2))
    slow.flush()
    fast = Raw(broker.port, "fast")
    fast.subscribe(Subscription("$share/g/jobs", 2))
    sent = [b"%d" % i for i in range(6)]
    publish_each(broker, "jobs", sent, 2)
    (in_flight,) = slow.messages(1)  # no PUBREC
    slow.close()
    got = [m.payload for m in fast.messages(5)]
    assert sorted(got + [in_flight.payload]) == sent
    assert fast.quiet()
    fast.close()


def test_shared_member_with_a_persistent_session_keeps_its_messages(
    broker: BrokerThread,
) -> None:
    # 4.8.2: the broker may wait for the member to come back; only when its session
    # ends do its messages go to another member.
    props = {"session_expiry_interval": 60}
    slow = Raw(broker.port, "slow", auto_flush=False, receive_maximum=1, properties=props)
    slow.subscribe(Subscription("$share/g/jobs", 1))
    slow.flush()
    fast = Raw(broker.port, "fast")
    fast.subscribe(Subscription("$share/g/jobs", 1))
    sent = [b"%d" % i for i in range(4)]
    publish_each(broker, "jobs", sent, 1)
    (first,) = slow.messages(1)
    theirs = [m.payload for m in fast.messages(2)]
    slow.close()
    assert fast.quiet()
    back = Raw(broker.port, "slow", clean_start=False, properties=props)
    mine = [m.payload for m in back.messages(2)]  # the one in flight again, then the next
    assert first.payload in mine
    assert sorted(mine + theirs) == sent
    back.close()
    fast.close()


def test_shared_member_whose_session_expires_hands_its_queue_to_the_group(
    tmp_path: Path,
) -> None:
    # 4.8.2: messages queued for an offline member wait for it while its session
    # lasts; when the session expires first, the group's other member gets them (here
    # through the expiry timer, with the queues kept in a persistence file).
    with BrokerThread(persistence=str(tmp_path / "b.db")) as broker:
        for client_id, expiry in (("away", 1), ("here", 60)):
            c = Raw(broker.port, client_id, properties={"session_expiry_interval": expiry})
            c.subscribe(Subscription("$share/g/jobs", 1))
            c.close()
        wait_for(broker, "connected", 0)
        sent = [b"%d" % i for i in range(4)]
        publish_each(broker, "jobs", sent, 1)  # both offline: two queued for each
        assert broker.call(broker.broker.stats)["queued"] == 4
        here = Raw(
            broker.port, "here", clean_start=False, properties={"session_expiry_interval": 60}
        )
        got = [m.payload for m in here.messages(4)]  # its own two, then away's at expiry
        assert sorted(got) == sent
        assert here.quiet()
        here.close()


# -- Shared subscriptions across a restart (4.8.2) ---------------------------------------


def test_shared_member_ending_after_a_restart_hands_on_what_the_file_held(
    tmp_path: Path,
) -> None:
    # 4.8.2: a member whose session ends hands the group its queued messages and its
    # unacknowledged QoS 1 ones. Those loaded from the persistence file after a
    # restart were not marked as a shared subscription's, and were lost.
    options: dict[str, Any] = {"persistence": str(tmp_path / "b.db")}
    props = {"session_expiry_interval": 60}
    sent = [b"%d" % i for i in range(4)]
    with BrokerThread(**options) as broker:
        here = Raw(broker.port, "here", properties=props)
        here.subscribe(Subscription("$share/g/jobs", 1))
        here.close()
        away = Raw(broker.port, "away", auto_flush=False, receive_maximum=1, properties=props)
        away.subscribe(Subscription("$share/g/jobs", 1))
        away.flush()
        wait_for(broker, "connected", 1)
        publish_each(broker, "jobs", sent, 1)  # all to the member online: away
        (in_flight,) = away.messages(1)  # never acknowledged
        wait_for(broker, "queued", 3)
    away.close()
    with BrokerThread(**options) as broker:
        here = Raw(broker.port, "here", clean_start=False, properties=props)
        assert here.connack.session_present
        assert here.quiet()  # away's session lasts: its messages wait for it
        gone = Raw(broker.port, "away")  # clean start: away's session ends now
        got = [m.payload for m in here.messages(4)]
        assert sorted(got) == sent
        assert in_flight.payload in got
        assert here.quiet()
        assert gone.quiet()
        here.close()
        gone.close()


def test_shared_member_whose_session_expired_while_the_broker_was_down_hands_on(
    tmp_path: Path,
) -> None:
    # The same when the member's session ran out while the broker was down: the
    # start that finds it gone hands its messages to the group.
    options: dict[str, Any] = {"persistence": str(tmp_path / "b.db")}
    sent = [b"%d" % i for i in range(4)]
    with BrokerThread(**options) as broker:
        for client_id, expiry in (("here", 60), ("away", 1)):
            c = Raw(broker.port, client_id, properties={"session_expiry_interval": expiry})
            c.subscribe(Subscription("$share/g/jobs", 1))
            c.close()
        wait_for(broker, "connected", 0)
        publish_each(broker, "jobs", sent, 1)  # both offline: two queued for each
        wait_for(broker, "queued", 4)
    time.sleep(1.1)  # what is under test is time passing: away's session runs out
    with BrokerThread(**options) as broker:
        assert broker.call(broker.broker.stats)["sessions"] == 1
        here = Raw(
            broker.port, "here", clean_start=False, properties={"session_expiry_interval": 60}
        )
        assert sorted(m.payload for m in here.messages(4)) == sent
        assert here.quiet()
        here.close()


# -- SUBSCRIBE --------------------------------------------------------------------------


def test_no_local_on_a_shared_subscription_is_a_protocol_error(broker: BrokerThread) -> None:
    # MQTT-3.8.3-4: "It is a Protocol Error to set the No Local bit to 1 on a Shared
    # Subscription": DISCONNECT 0x82, and nothing of the SUBSCRIBE is kept (EMQX
    # does the same). Held already (the codec refuses it); checked end to end here.
    with send_connect(broker.port, Connect("s", protocol_level=5)) as sock:
        assert read_packet(sock).reason_code == 0
        subs = [Subscription("plain/#", 1), Subscription("$share/g/jobs", 1)]
        data = bytearray(encode(Subscribe(1, subs), 5))
        options = data.index(b"$share/g/jobs") + len("$share/g/jobs")
        data[options] |= 0x04  # No Local (3.8.3.1); our encoder refuses to set it here
        sock.sendall(data)
        answer = read_packet(sock)
        assert isinstance(answer, Disconnect) and answer.reason_code == 0x82
        assert read_packet(sock) is None
    wait_for(broker, "connected", 0)
    assert broker.call(broker.broker.stats)["subscriptions"] == 0


# -- a shared subscription group with no member left (4.8.2) --------------------------


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
