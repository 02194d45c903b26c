"""Client certificates as identities (``tls.py``, ``use_identity_as_username``): the
certificate's CN becomes the user name for the ACL file and plug-ins, with no password;
``authenticate`` hooks that ask for it get the certificate. Certificates are made in the
test by the ``tls_files`` CA."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_broker import WAIT
from test_broker_auth import password_file
from test_broker_hooks import Calls
from tlsfiles import Issued, TlsFiles

from fieldline.broker import BrokerConfig, BrokerThread, ConfigError, Listener
from fieldline.broker.configfile import apply_flags, config_from_dict
from fieldline.broker.tls import PeerCertificate
from fieldline.mqtt import Client, ConnectionLost, ConnectionRefused, PublishRefused

pytestmark = pytest.mark.usefixtures("both_event_loops")

NOT_AUTHORIZED, BANNED = 0x87, 0x8A
ACL = """\
user device-7
topic readwrite devices/%u/#
user alice
topic readwrite people/%u/#
"""
# Listener names of the shared broker, in order.
NAMES = ["mqtt", "id-tls", "id-wss", "mtls"]


class CertGate:
    """Records what authenticate and on_connect get; bans the CN "banned"."""

    def __init__(self) -> None:
        self.calls = Calls()

    def authenticate(
        self,
        client_id: str,
        username: str | None,
        password: bytes | None,
        peer: str,
        certificate: PeerCertificate | None = None,
    ) -> int | None:
        self.calls.add("authenticate", client_id, username, password, certificate)
        if certificate is not None and certificate.common_name == "banned":
            return BANNED
        return None

    def on_connect(self, client_id: str, username: str | None, peer: str) -> None:
        self.calls.add("on_connect", client_id, username)


class OldGate:
    """An authenticate hook written before certificates: four arguments."""

    def __init__(self) -> None:
        self.calls = Calls()

    async def authenticate(
        self, client_id: str, username: str | None, password: bytes | None, peer: str
    ) -> None:
        self.calls.add("authenticate", client_id, username)


@pytest.fixture(scope="module")
def certs(tls_files: TlsFiles) -> dict[str, Issued]:
    return {
        "device-7": tls_files.issue_client("device-7", "device-7"),
        "banned": tls_files.issue_client("banned", "banned"),
        "no-cn": tls_files.issue_client("no-cn", None),
    }


@pytest.fixture(scope="module")
def broker(
    tls_files: TlsFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[BrokerThread, CertGate, OldGate]]:
    """A password file (alice), an ACL file, anonymous access refused; listeners: plain,
    mqtts and wss taking the CN as user name, mqtts requiring a certificate only."""
    pytest.importorskip("wsproto")
    directory = tmp_path_factory.mktemp("identity")
    acl = directory / "acl"
    acl.write_text(ACL)
    pw = password_file(directory / "passwd", alice="s3cret")
    tls: dict[str, Any] = {
        "cert": str(tls_files.server_cert), "key": str(tls_files.server_key),
        "ca": str(tls_files.ca_cert), "require_certificate": True, "port": 0,
    }  # fmt: skip
    listeners = [
        Listener("mqtt", port=0),
        Listener("mqtts", use_identity_as_username=True, **tls),
        Listener("wss", use_identity_as_username=True, **tls),
        Listener("mqtts", **tls),
    ]
    gate, old = CertGate(), OldGate()
    b = BrokerThread(
        listeners=listeners, password_file=str(pw), acl_file=str(acl), plugins=[gate, old]
    ).start()
    try:
        yield b, gate, old
    finally:
        b.stop()


def tls_client(
    b: BrokerThread, tls_files: TlsFiles, name: str, cert: Issued | None, **kw: Any
) -> Client:
    port = b.listening[NAMES.index(name)].port
    opts: dict[str, Any] = {"ca_file": str(tls_files.ca_cert), "reconnect": False}
    if cert is not None:
        opts["cert_file"], opts["key_file"] = str(cert.cert), str(cert.key)
    if name == "id-wss":
        opts["transport"] = "websockets"
    return Client("localhost", port, **opts, **kw)


@pytest.mark.parametrize("name", ["id-tls", "id-wss"])
def test_the_cn_is_the_user_name_for_the_acl(
    broker: tuple[BrokerThread, CertGate, OldGate],
    tls_files: TlsFiles,
    certs: dict[str, Issued],
    name: str,
) -> None:
    b, gate, old = broker
    cid = f"dev-{name}"
    # No user name, no password: the certificate is enough (anonymous is refused here).
    with tls_client(b, tls_files, name, certs["device-7"], client_id=cid) as c:
        c.publish("devices/device-7/temp", b"21", qos=1)  # %u is the CN
        with pytest.raises(PublishRefused) as e:
            c.publish("devices/device-8/temp", b"0", qos=1)
        assert e.value.reason_code == NOT_AUTHORIZED
        assert c.subscribe("devices/device-7/#", qos=1) == [1]
        assert c.subscribe("people/alice/#", qos=1) == [NOT_AUTHORIZED]
    assert ("on_connect", (cid, "device-7")) in gate.calls.calls
    _, username, password, cert = gate.calls.of("authenticate")[-1]
    assert (username, password) == ("device-7", None)
    assert isinstance(cert, PeerCertificate) and cert.common_name == "device-7"
    der = ssl.PEM_cert_to_DER_cert(certs["device-7"].cert.read_text())
    assert cert.der == der and cert.fingerprint == hashlib.sha256(der).hexdigest()
    assert ("authenticate", (cid, "device-7")) in old.calls.calls  # four arguments still


def test_a_user_name_in_the_connect_does_not_override_the_certificate(
    broker: tuple[BrokerThread, CertGate, OldGate], tls_files: TlsFiles, certs: dict[str, Issued]
) -> None:
    b, _, _ = broker
    # alice's name and password: ignored on this listener, the client is device-7.
    kw = {"client_id": "posing", "username": "alice", "password": b"s3cret"}
    with tls_client(b, tls_files, "id-tls", certs["device-7"], **kw) as c:
        with pytest.raises(PublishRefused):
            c.publish("people/alice/x", b"", qos=1)
        c.publish("devices/device-7/x", b"", qos=1)
    # A wrong password does not matter either: none is checked.
    kw["password"] = b"wrong"
    with tls_client(b, tls_files, "id-tls", certs["device-7"], **kw) as c:
        c.publish("devices/device-7/x", b"", qos=1)


def test_refusals(
    broker: tuple[BrokerThread, CertGate, OldGate], tls_files: TlsFiles, certs: dict[str, Issued]
) -> None:
    b, _, _ = broker
    # No certificate: refused in the TLS handshake, before any CONNECT.
    with pytest.raises((OSError, ConnectionLost)):
        with tls_client(b, tls_files, "id-tls", None, client_id="nocert") as c:
            c.publish("devices/x", b"", qos=1)
    assert b.call(b.broker.sessions.get, "nocert") is None
    # A certificate without a CN names no one: 0x87.
    with pytest.raises(ConnectionRefused) as e:
        tls_client(b, tls_files, "id-tls", certs["no-cn"], timeout=WAIT).connect()
    assert e.value.reason_code == NOT_AUTHORIZED
    # A plug-in decides on the certificate.
    with pytest.raises(ConnectionRefused) as e:
        tls_client(b, tls_files, "id-tls", certs["banned"], timeout=WAIT).connect()
    assert e.value.reason_code == BANNED


def test_without_the_option_the_password_file_decides(
    broker: tuple[BrokerThread, CertGate, OldGate], tls_files: TlsFiles, certs: dict[str, Issued]
) -> None:
    b, gate, _ = broker
    # A certificate alone is no login on the plain mtls listener...
    with pytest.raises(ConnectionRefused) as e:
        tls_client(b, tls_files, "mtls", certs["device-7"], timeout=WAIT).connect()
    assert e.value.reason_code == NOT_AUTHORIZED
    # ...but the plug-in still sees it, beside the password that logs alice in.
    kw = {"client_id": "alice-mtls", "username": "alice", "password": b"s3cret"}
    with tls_client(b, tls_files, "mtls", certs["device-7"], **kw) as c:
        c.publish("people/alice/x", b"", qos=1)
    _, username, _, cert = gate.calls.of("authenticate")[-1]
    assert username == "alice" and cert.common_name == "device-7"
    # No TLS: no certificate.
    port = b.listening[0].port
    with Client("127.0.0.1", port, username="alice", password=b"s3cret"):
        pass
    assert gate.calls.of("authenticate")[-1][3] is None


def test_configuration(tmp_path: Path) -> None:
    files: dict[str, Any] = {"cert": "s.crt", "key": "s.key", "ca": "ca.crt"}
    with pytest.raises(ConfigError, match="use_identity_as_username needs require_certificate"):
        Listener("mqtts", use_identity_as_username=True, **files)
    with pytest.raises(ConfigError, match="applies to mqtts and wss listeners, not mqtt"):
        Listener("mqtt", use_identity_as_username=True)
    listener = {"kind": "mqtts", "require_certificate": True, "use_identity_as_username": True}
    cfg = config_from_dict({"listeners": [{**listener, **files}]}, "f.toml", tmp_path)
    (li,) = cfg.listeners
    assert li.use_identity_as_username
    assert li.describe().endswith("(TLS, client certificate required, its CN the user name)")
    with pytest.raises(ConfigError, match="'use_identity_as_username' must be true or false"):
        config_from_dict({"listeners": [{**listener, **files, "use_identity_as_username": 1}]})
    base = BrokerConfig(listeners=[Listener("mqtts", **files)])
    cfg = apply_flags(base, require_certificate=True, use_identity_as_username=True)
    assert cfg.listeners[0].use_identity_as_username
