"""The server-side SSLContext of an mqtts or wss listener."""

from __future__ import annotations

import ssl

from .config import ConfigError, Listener


def server_context(listener: Listener) -> ssl.SSLContext:
    """An SSLContext presenting ``listener.cert``/``key``. With ``ca``, client
    certificates are checked against it: required with ``require_certificate``,
    otherwise checked when a client sends one. Raises ConfigError naming the file
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
        try:
            ctx.load_verify_locations(cafile=listener.ca)
        except OSError as e:  # ssl.SSLError included
            raise ConfigError(
                f"{listener.url}: cannot load ca {listener.ca}: {_reason(e)}"
            ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED if listener.require_certificate else ssl.CERT_OPTIONAL
    return ctx


def _reason(e: OSError) -> str:
    return e.strerror or str(e)
