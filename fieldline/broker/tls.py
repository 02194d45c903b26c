"""The server-side SSLContext of an mqtts or wss listener (``ListenerTls``: read again
on reload), and the client certificate a connection presented (``PeerCertificate``),
which the broker can take as the client's identity (``use_identity_as_username``) and
hands to plug-ins' ``authenticate``."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from typing import Any

from .config import ConfigError, Listener


def server_context(listener: Listener) -> ssl.SSLContext:
    """An SSLContext presenting ``listener.cert``/``key``. With ``ca``, client
    certificates are checked against it: required with ``require_certificate``,
    otherwise checked when a client sends one; with ``crl`` too, a certificate that
    a revocation list there names is refused. Raises ConfigError naming the file
    that cannot be read or used."""
    assert listener.cert and listener.key
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(listener.cert, listener.key)
    except OSError as e:  # ssl.SSLError included
        raise ConfigError(
            f"{listener.url}: cannot load cert {listener.cert} with key {listener.key}: "
            f"{_reason(e)}"
        ) from None
    if listener.ca:
        _verify_with(ctx, listener, "ca", listener.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if listener.require_certificate else ssl.CERT_OPTIONAL
    if listener.crl:
        _verify_with(ctx, listener, "crl", listener.crl)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def _verify_with(ctx: ssl.SSLContext, listener: Listener, key: str, path: str) -> None:
    # CA certificates and revocation lists load the same way (PEM, into the store).
    try:
        ctx.load_verify_locations(cafile=path)
    except OSError as e:  # ssl.SSLError included
        raise ConfigError(f"{listener.url}: cannot load {key} {path}: {_reason(e)}") from None


class ListenerTls:
    """The TLS side of one listener: ``context`` is the SSLContext its server was
    created with, ``reload()`` reads the listener's files again for the connections
    that come after.

    asyncio keeps the context a server was created with, so that one stays, and for
    each handshake its SNI callback (which OpenSSL calls on every ClientHello, with
    no name when the client sent none) hands the connection the current context:
    its certificate, CA and revocation lists. Connections already open keep theirs."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.context = self._current = server_context(listener)
        self.context.sni_callback = self._switch

    def _switch(self, conn: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        if self._current is not ctx:
            conn.context = self._current

    def reload(self) -> None:
        """Read cert, key, ca and crl again. Raises ConfigError (the files read
        before stay in force)."""
        self._current = server_context(self.listener)


class PeerCertificate:
    """The certificate a client presented and the listener verified against its ``ca``.

    ``info``: the decoded form ``ssl.SSLSocket.getpeercert()`` gives (``subject``,
    ``issuer``, ``serialNumber``, ``notBefore``, ``notAfter``, ``subjectAltName``);
    ``der``: the certificate itself, DER (for ``cryptography.x509`` or a pin)."""

    __slots__ = ("der", "info")

    def __init__(self, info: dict[str, Any], der: bytes = b"") -> None:
        self.info = info
        self.der = der

    @property
    def common_name(self) -> str | None:
        """The subject's first commonName (as Mosquitto takes it), or None."""
        for rdn in self.info.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return str(value)
        return None

    @property
    def fingerprint(self) -> str:
        """SHA-256 of ``der``, hex: what to pin a device's certificate by."""
        return hashlib.sha256(self.der).hexdigest()

    def __repr__(self) -> str:
        return f"PeerCertificate(common_name={self.common_name!r})"


def peer_certificate(transport: asyncio.BaseTransport | None) -> PeerCertificate | None:
    """The client certificate verified on ``transport`` (a TLS one, or the WebSocket
    frame transport over it), or None: no TLS, no certificate sent, or none checked
    (a listener without ``ca``)."""
    if transport is None:
        return None
    info = transport.get_extra_info("peercert")
    if not info:  # None, or {} when the certificate was not verified
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return PeerCertificate(info, der or b"")


def _reason(e: OSError) -> str:
    return e.strerror or str(e)
