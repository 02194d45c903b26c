"""MQTT 5.0 enhanced authentication (4.12) through a plug-in's ``auth`` hook: a
SCRAM-like two-step challenge with our ``Client`` (``on_auth``) as the peer, refusals,
an unknown method, re-authentication, and the raw AUTH packets a hand-made session
sends."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_broker import WAIT, Closed, Raw, running
from test_broker_hooks import Calls

from fieldline.broker import BrokerThread
from fieldline.mqtt import (
    CLIENT,
    Auth,
    Client,
    ConnAck,
    Connect,
    ConnectionLost,
    ConnectionRefused,
    Disconnect,
    NotAuthorized,
    Session,
)

NOT_AUTHORIZED, BAD_AUTHENTICATION_METHOD, SERVER_UNAVAILABLE = 0x87, 0x8C, 0x88
METHOD = "HMAC-CHALLENGE"
KEYS = {"alice": b"alice's key", "bob": b"bob's key"}


def proof(key: bytes, nonce: bytes) -> bytes:
    return hmac.new(key, b"client " + nonce, hashlib.sha256).digest()


def server_signature(key: bytes, nonce: bytes) -> bytes:
    return hmac.new(key, b"server " + nonce, hashlib.sha256).digest()


class Challenge:
    """A SCRAM-like exchange: the client names itself and sends a nonce (step 0); the
    plug-in answers with its own nonce appended; the client proves it holds the key
    with an HMAC over both (step 1); the plug-in answers success with its signature,
    which the client can check. Async, as a database lookup would be."""

    def __init__(self) -> None:
        self.nonces: dict[str, bytes] = {}
        self.calls = Calls()  # on the broker's thread: tests wait for them

    @property
    def steps(self) -> list[tuple[Any, ...]]:
        return self.calls.of("auth")

    async def auth(
        self, client_id: str, username: str | None, method: str, data: bytes | None, step: int
    ) -> bytes | bool | tuple[bool, bytes] | None:
        await asyncio.sleep(0)
        try:
            return self._answer(client_id, username, method, data, step)
        finally:
            self.calls.add("auth", client_id, username, method, data, step)

    def _answer(
        self, client_id: str, username: str | None, method: str, data: bytes | None, step: int
    ) -> bytes | bool | tuple[bool, bytes] | None:
        if method != METHOD:
            return None  # not ours
        if step == 0:
            user, _, client_nonce = (data or b"").partition(b",")
            if user.decode() != username or username not in KEYS:
                return False  # the claimed name must be the CONNECT's: the ACL sees that one
            nonce = client_nonce + os.urandom(8).hex().encode()
            self.nonces[client_id] = nonce
            return nonce
        nonce = self.nonces.pop(client_id, b"")
        assert username is not None
        key = KEYS[username]
        if not hmac.compare_digest(data or b"", proof(key, nonce)):
            return False
        return True, server_signature(key, nonce)


@pytest.fixture(scope="module")
def broker() -> Iterator[tuple[BrokerThread, Challenge]]:
    plugin = Challenge()
    for b in running(plugins=[plugin]):
        yield b, plugin


def scram_client(
    b: BrokerThread, user: str, key: bytes, client_id: str = "", **kw: Any
) -> tuple[Client, list[bytes]]:
    """Our client set for the exchange; returns it and the nonces it was challenged with."""
    client_nonce = b"cn" + os.urandom(4).hex().encode()
    kw.setdefault("auth_data", user.encode() + b"," + client_nonce)
    c = Client("127.0.0.1", b.port, client_id=client_id, username=user, version=5,
               auth_method=METHOD, timeout=WAIT, reconnect=False, **kw)  # fmt: skip
    seen: list[bytes] = []

    def on_auth(packet: Auth) -> bytes:
        nonce = packet.properties["authentication_data"]
        seen.append(nonce)
        return proof(key, nonce)

    c.on_auth = on_auth
    return c, seen


def test_two_step_challenge(broker: tuple[BrokerThread, Challenge]) -> None:
    b, plugin = broker
    c, seen = scram_client(b, "alice", KEYS["alice"], "alice-1")
    connack = c.connect()
    try:
        assert connack.reason_code == 0
        (nonce,) = seen
        props = connack.properties
        assert props["authentication_method"] == METHOD  # MQTT-4.12.0-5... and the last word:
        assert props["authentication_data"] == server_signature(KEYS["alice"], nonce)
        assert [s[4] for s in plugin.steps[-2:]] == [0, 1]
        assert plugin.steps[-1][:4] == ("alice-1", "alice", METHOD, proof(KEYS["alice"], nonce))
        assert c.subscribe("t", qos=1) == [1]
        c.publish("t", b"in", qos=1)
        assert c.recv(timeout=WAIT).payload == b"in"
    finally:
        c.disconnect()


def test_refusals(broker: tuple[BrokerThread, Challenge]) -> None:
    b, _ = broker
    wrong, _ = scram_client(b, "alice", b"not alice's key")
    with pytest.raises(NotAuthorized) as e:
        wrong.connect()
    assert e.value.reason_code == NOT_AUTHORIZED
    # Claiming another name in the exchange than in the CONNECT.
    posing, _ = scram_client(b, "bob", KEYS["alice"], auth_data=b"alice,cn1")
    with pytest.raises(NotAuthorized) as e:
        posing.connect()
    assert e.value.reason_code == NOT_AUTHORIZED
    # A method no plug-in knows: 0x8C Bad authentication method.
    other = Client("127.0.0.1", b.port, version=5, auth_method="KERBEROS", timeout=WAIT)
    with pytest.raises(NotAuthorized) as e:
        other.connect()
    assert e.value.reason_code == BAD_AUTHENTICATION_METHOD


def test_without_an_auth_hook_the_method_is_refused() -> None:
    for b in running():
        c = Client("127.0.0.1", b.port, version=5, auth_method=METHOD, timeout=WAIT)
        with pytest.raises(NotAuthorized) as e:
            c.connect()
        assert e.value.reason_code == BAD_AUTHENTICATION_METHOD


def test_a_broken_auth_hook_refuses_with_0x88(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def auth(self, *args: Any) -> Any:
            return 3.5  # no answer

    with caplog.at_level("ERROR", logger="fieldline.broker"):
        for b in running(plugins=[Broken()]):
            c = Client("127.0.0.1", b.port, version=5, auth_method=METHOD, timeout=WAIT)
            with pytest.raises(ConnectionRefused) as e:
                c.connect()
            assert e.value.reason_code == SERVER_UNAVAILABLE
    assert "plug-in Broken.auth returned 3.5, not a verdict: refused" in caplog.text


def test_reauthentication(broker: tuple[BrokerThread, Challenge]) -> None:
    b, plugin = broker
    c, seen = scram_client(b, "bob", KEYS["bob"], "bob-1")
    c.connect()
    try:
        n = len(plugin.steps)
        c.reauthenticate(b"bob,cn-again")  # AUTH 0x19, then the same two steps
        # The connection goes on during the exchange (and our blocking client answers
        # the challenge while it waits for this PUBACK).
        c.publish("during/reauth", b"x", qos=1)
        steps = plugin.calls.wait("auth", n + 2)[n:]
        assert [(s[1], s[3], s[4]) for s in steps[:1]] == [("bob", b"bob,cn-again", 0)]
        assert steps[1][4] == 1 and len(seen) == 2
        c.publish("after/reauth", b"x", qos=1)  # still connected: AUTH 0x00 came
    finally:
        c.disconnect()


def test_raw_exchange_and_failed_reauthentication(broker: tuple[BrokerThread, Challenge]) -> None:
    """The packets themselves: AUTH 0x18 during CONNECT, 0x00 ending a
    re-authentication, and a failed one ending the connection with DISCONNECT 0x87
    (MQTT-4.12.1-2)."""
    b, _ = broker

    class RawAuth(Raw):
        def __init__(self) -> None:  # Raw's, with a user name
            self.sock = socket.create_connection(("127.0.0.1", b.port), timeout=WAIT)
            self.session = Session(CLIENT)
            self.auto_flush, self.early = True, []
            props = {"authentication_method": METHOD, "authentication_data": b"alice,n1"}
            connect = Connect("raw-auth", username="alice", properties=props)
            self.session.connect(connect, time.monotonic())
            self.flush()

    r = RawAuth()
    try:
        challenge = r.next()  # the broker's AUTH, not yet the CONNACK
        assert isinstance(challenge, Auth) and challenge.reason_code == 0x18
        nonce = challenge.properties["authentication_data"]
        assert nonce.startswith(b"n1")
        r.session.auth(proof(KEYS["alice"], nonce))
        r.flush()
        connack = r.next()
        assert isinstance(connack, ConnAck) and connack.reason_code == 0
        # Re-authenticate: 0x19, 0x18 back, the proof, 0x00 back.
        r.session.auth(b"alice,n2")
        r.flush()
        challenge = r.next()
        assert isinstance(challenge, Auth) and challenge.reason_code == 0x18
        r.session.auth(proof(KEYS["alice"], challenge.properties["authentication_data"]))
        r.flush()
        done = r.next()
        assert isinstance(done, Auth) and done.reason_code == 0
        # Again, with a wrong proof: DISCONNECT 0x87.
        r.session.auth(b"alice,n3")
        r.flush()
        assert isinstance(r.next(), Auth)
        r.session.auth(b"wrong proof")
        r.flush()
        ev = r.next()
        assert isinstance(ev, Disconnect) and ev.reason_code == NOT_AUTHORIZED
        with pytest.raises((Closed, ConnectionLost)):
            r.next()
    finally:
        r.close()
