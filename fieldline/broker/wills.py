"""Wills: the message a client asks the broker to publish for it if its connection
ends without a normal DISCONNECT (MQTT 3.1.2.5), now or after its Will Delay Interval
(5.0), or when its session ends if that is sooner (3.1.3.2.2); kept in the
persistence file and restored after a restart. A Will is judged as the client's
PUBLISHes are: by the ACL file, the ``$SYS`` rule and the plug-ins."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from fieldline.mqtt import SERVER, Session, Will

from .hooks import Verdict
from .message import Message
from .sessions import ClientSession
from .sysinfo import is_sys_topic

if TYPE_CHECKING:
    from .persist import Persistence
    from .server import Broker

log = logging.getLogger("fieldline.broker")

NEVER = 0xFFFFFFFF  # Session Expiry Interval: the session never expires


def schedule(broker: Broker, cs: ClientSession, will: Will, expiry: int) -> None:
    """``cs``'s connection ended without a normal DISCONNECT, its session to last
    ``expiry`` seconds: publish ``will`` now, or wait for its Will Delay Interval."""
    delay = (will.properties or {}).get("will_delay_interval", 0)
    if expiry != NEVER:
        delay = min(delay, expiry)  # or when the session ends, if sooner (3.1.3.2.2)
    if delay <= 0:
        publish(broker, cs, will)
    else:
        cs.pending_will = will
        cs.will_timer = broker.loop.call_later(delay, _due, broker, cs)
        if broker.persist is not None:
            broker.persist.will(cs.client_id, will, cs.username, time.time() + delay)


def restore(broker: Broker, persist: Persistence) -> None:
    """The Wills of connections open when the broker last stopped or died: each is
    published after its Will Delay Interval, counted from now (or from when its
    connection ended, if it was waiting already), or when its session ends if that
    is sooner (3.1.3.2.2); a client back before then cancels it (MQTT-3.1.3-9)."""
    wall = time.time()
    now = broker.loop.time()
    for client_id, (will, username, due) in list(persist.wills.items()):
        cs = broker.sessions.get(client_id)
        if due is None:
            delay = float((will.properties or {}).get("will_delay_interval", 0))
        else:
            delay = due - wall
        if cs is not None and cs.expiry_timer is not None:
            delay = min(delay, cs.expiry_timer.when() - now)
        if cs is not None and delay > 0:
            cs.pending_will = will
            cs.will_timer = broker.loop.call_later(delay, _due, broker, cs)
            if due is None:
                persist.will(client_id, will, username, wall + delay)
            continue
        if cs is None:  # its session ended with the connection
            cs = ClientSession(client_id, Session(SERVER))
            cs.username = username
            if broker.acl is not None:
                cs.permissions = broker.acl.permissions(username, client_id)
        publish(broker, cs, will)


def publish(broker: Broker, cs: ClientSession, will: Will) -> None:
    """Publish ``cs``'s Will now, if its ACL rules, ``$SYS`` and the plug-ins let it."""
    if broker.persist is not None:
        broker.persist.will_gone(cs.client_id, will)
    perms = cs.permissions
    if perms is not None and not perms.can_write(will.topic):
        log.info("client id %r: Will on %r denied by the ACL", cs.client_id, will.topic)
        return
    if is_sys_topic(will.topic):
        log.info("client id %r: Will on %r refused, $SYS is the broker's", cs.client_id,
                 will.topic, extra={"client_id": cs.client_id,
                 "topic": will.topic})  # fmt: skip
        return
    # A Will is a PUBLISH the client asked for in advance: the plug-ins that judge
    # its PUBLISHes judge it too, as it goes.
    verdict = broker.plugins.authorize_publish(
        cs.client_id, cs.username, will.topic, will.qos, will.retain
    )
    if inspect.isawaitable(verdict):
        broker.spawn(_later(broker, cs, will, verdict))
    else:
        _send(broker, cs, will, verdict)


async def _later(
    broker: Broker, cs: ClientSession, will: Will, verdict: Awaitable[Verdict]
) -> None:
    _send(broker, cs, will, await verdict)


def _send(broker: Broker, cs: ClientSession, will: Will, verdict: Verdict) -> None:
    if verdict:
        broker.counters.denied += 1
        log.info("client id %r: Will on %r refused by a plug-in (0x%02X)", cs.client_id,
                 will.topic, verdict, extra={"client_id": cs.client_id,
                 "topic": will.topic, "reason_code": verdict})  # fmt: skip
        return
    props = will.properties
    if props and "will_delay_interval" in props:
        props = {k: v for k, v in props.items() if k != "will_delay_interval"}
    now = broker.loop.time()
    broker._route(
        Message(will.topic, will.payload, will.qos, will.retain, props, now, cs.client_id)
    )


def _due(broker: Broker, cs: ClientSession) -> None:
    """``cs``'s Will Delay Interval has passed: its Will goes."""
    cs.will_timer = None
    will, cs.pending_will = cs.pending_will, None
    if will is not None:
        publish(broker, cs, will)
