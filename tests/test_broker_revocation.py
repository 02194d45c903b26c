"""Certificate revocation (``crl``) and TLS files read again on reload: a revoked
client certificate is refused at the handshake, and ``Broker.reload()`` (SIGHUP)
takes a new revocation list or a renewed server certificate for the connections
that follow. Certificates and lists are made in the test by the ``tls_files`` CA."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_broker import WAIT
from tlsfiles import Issued, TlsFiles

from fieldline.broker import BrokerConfig, BrokerThread, ConfigError, Listener
from fieldline.broker.configfile import apply_flags, config_from_dict
from fieldline.mqtt import Client, ConnectionLost

pytestmark = pytest.mark.usefixtures("both_event_loops")


@pytest.fixture(scope="module")
def certs(tls_files: TlsFiles) -> dict[str, Issued]:
    return {name: tls_files.issue_client(f"rev-{name}", name) for name in ("good", "stolen")}


def tls(tls_files: TlsFiles, crl: Path, **kw: Any) -> dict[str, Any]:
    return {
        "cert": str(tls_files.server_cert), "key": str(tls_files.server_key),
        "ca": str(tls_files.ca_cert), "crl": str(crl), "require_certificate": True,
        "port": 0, **kw,
    }  # fmt: skip


@pytest.fixture
def broker(
    tls_files: TlsFiles, certs: dict[str, Issued], tmp_path: Path
) -> Iterator[tuple[BrokerThread, Path]]:
    """mqtts and wss listeners whose revocation list names "stolen"."""
    pytest.importorskip("wsproto")
    crl = tls_files.write_crl(tmp_path / "ca.crl", [certs["stolen"]])
    opts = tls(tls_files, crl)
    b = BrokerThread(
        listeners=[Listener("mqtts", **opts), Listener("wss", **opts)], allow_anonymous=True
    ).start()
    try:
        yield b, crl
    finally:
        b.stop()


def client(b: BrokerThread, tls_files: TlsFiles, cert: Issued, wss: bool = False) -> Client:
    opts: dict[str, Any] = {
        "ca_file": str(tls_files.ca_cert),
        "cert_file": str(cert.cert),
        "key_file": str(cert.key),
        "reconnect": False,
        "timeout": WAIT,
    }
    if wss:
        opts["transport"] = "websockets"
    return Client("localhost", b.listening[1 if wss else 0].port, **opts)


def refused(b: BrokerThread, tls_files: TlsFiles, cert: Issued, wss: bool = False) -> bool:
    """True if the handshake refuses ``cert`` (TLS 1.3 reports it at the first read)."""
    try:
        with client(b, tls_files, cert, wss) as c:
            c.publish("t", b"x", qos=1)
    except (OSError, ConnectionLost):
        return True
    return False


@pytest.mark.parametrize("wss", [False, True], ids=["mqtts", "wss"])
def test_a_revoked_certificate_is_refused(
    broker: tuple[BrokerThread, Path], tls_files: TlsFiles, certs: dict[str, Issued], wss: bool
) -> None:
    b, _ = broker
    assert refused(b, tls_files, certs["stolen"], wss)
    assert not refused(b, tls_files, certs["good"], wss)
    assert "revocation list checked" in b.listening[0].describe()


def test_reload_takes_a_new_list_for_new_connections(
    broker: tuple[BrokerThread, Path], tls_files: TlsFiles, certs: dict[str, Issued]
) -> None:
    b, crl = broker
    with client(b, tls_files, certs["good"]) as connected:
        connected.publish("t", b"before", qos=1)
        # "good" is revoked too now: new connections with it are refused...
        tls_files.write_crl(crl, [certs["stolen"], certs["good"]])
        assert b.call(b.broker.reload) is True
        assert refused(b, tls_files, certs["good"])
        assert refused(b, tls_files, certs["good"], wss=True)
        # ...the one already open stays, as it does when a password is removed.
        connected.publish("t", b"after", qos=1)
    # A list without "stolen" lets it in again.
    tls_files.write_crl(crl, [])
    assert b.call(b.broker.reload) is True
    assert not refused(b, tls_files, certs["stolen"])


def test_a_broken_list_keeps_the_one_read_before(
    broker: tuple[BrokerThread, Path], tls_files: TlsFiles, certs: dict[str, Issued]
) -> None:
    b, crl = broker
    crl.write_text("not a revocation list\n")
    assert b.call(b.broker.reload) is False
    assert refused(b, tls_files, certs["stolen"])
    assert not refused(b, tls_files, certs["good"])
    crl.unlink()
    assert b.call(b.broker.reload) is False
    assert refused(b, tls_files, certs["stolen"])


def _server_serial(port: int, tls_files: TlsFiles) -> int:
    from cryptography import x509

    ctx = tls_files.client_context(client_cert=True)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_reload_takes_a_renewed_server_certificate(tls_files: TlsFiles, tmp_path: Path) -> None:
    renewed = tls_files.issue_server("renewed")
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    cert.write_bytes(tls_files.server_cert.read_bytes())
    key.write_bytes(tls_files.server_key.read_bytes())
    listener = Listener("mqtts", cert=str(cert), key=str(key), ca=str(tls_files.ca_cert), port=0)
    with BrokerThread(listeners=[listener], allow_anonymous=True) as b:
        port = b.listening[0].port
        first = _server_serial(port, tls_files)
        cert.write_bytes(renewed.cert.read_bytes())
        key.write_bytes(renewed.key.read_bytes())
        assert _server_serial(port, tls_files) == first  # not before the reload
        assert b.call(b.broker.reload) is True
        second = _server_serial(port, tls_files)
        assert second != first
        # A key that does not match the certificate: the renewed pair stays.
        key.write_bytes(tls_files.client_key.read_bytes())
        assert b.call(b.broker.reload) is False
        assert _server_serial(port, tls_files) == second


def test_crl_settings_are_checked(tls_files: TlsFiles, tmp_path: Path) -> None:
    crl = tls_files.write_crl(tmp_path / "ca.crl")
    server: dict[str, Any] = {"cert": str(tls_files.server_cert), "key": str(tls_files.server_key)}
    with pytest.raises(ConfigError, match="crl needs ca"):
        Listener("mqtts", crl=str(crl), **server)
    with pytest.raises(ConfigError, match="apply to mqtts and wss listeners, not mqtt"):
        Listener("mqtt", crl=str(crl))
    missing = Listener("mqtts", port=0, ca=str(tls_files.ca_cert), crl="/nonexistent.crl", **server)
    with pytest.raises(ConfigError, match="cannot load crl /nonexistent.crl"):
        BrokerThread(listeners=[missing], allow_anonymous=True).start()
    # The file's key, relative to the file, and the flag for every TLS listener.
    cfg = config_from_dict(
        {"listeners": [{"kind": "mqtts", "port": 0, "cert": "s.crt", "key": "s.key",
                        "ca": "ca.crt", "crl": "ca.crl"}]},
        "broker.toml", tmp_path,
    )  # fmt: skip
    assert cfg.listeners[0].crl == str(tmp_path / "ca.crl")
    base = BrokerConfig(listeners=[Listener("mqtts", ca=str(tls_files.ca_cert), **server)])
    assert apply_flags(base, crl=str(crl)).listeners[0].crl == str(crl)
    with pytest.raises(ConfigError, match="--crl applies to TLS listeners"):
        apply_flags(BrokerConfig(), crl=str(crl))
