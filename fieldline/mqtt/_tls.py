"""The SSLContext for a client's TLS options, on CPython and MicroPython.

Its own module so that a device without TLS never loads it.
"""


def tls_context(client):
    """An SSLContext for ``client``'s TLS options (or the one it was given)."""
    import ssl

    if not isinstance(client.tls, bool):
        return client.tls
    if hasattr(ssl, "create_default_context"):  # CPython
        ctx = ssl.create_default_context(cafile=client.ca_file)
        if client.cert_file:
            ctx.load_cert_chain(client.cert_file, client.key_file)
        return ctx
    # MicroPython: no system CA store, so a CA file is needed; and its mbedTLS
    # may be built without PEM parsing, so PEM files are handed over as DER.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if client.ca_file is None:
        raise ValueError("MicroPython needs ca_file for TLS")
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=_der(client.ca_file))
    if client.cert_file:
        if client.key_file is None:
            raise ValueError("MicroPython needs key_file with cert_file")
        ctx.load_cert_chain(_der(client.cert_file), _der(client.key_file))
    return ctx


def _der(path):
    # The first PEM block of the file as DER bytes; a DER file as it is.
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(b"-----"):
        return data
    from binascii import a2b_base64

    lines = data.split(b"\n")
    body = []
    for line in lines[1:]:
        if line.startswith(b"-----"):
            break
        body.append(line.strip())
    return a2b_base64(b"".join(body))


def bounded_writer(sock, raw, bound):
    """A write function for MicroPython's TLS socket ``sock`` over the TCP
    socket ``raw`` that gives up (OSError ETIMEDOUT) after ``bound`` seconds.
    The TLS socket has no settimeout(), and the TCP socket's timeout bounds
    each record it sends: a write of n records to a network that stopped
    taking bytes waited n times over (a 50 KB message, 4 x timeout). Written
    a record at a time (4 KiB, one record on every mbedTLS build) against
    one deadline."""
    from ._client_inbox import clock

    def write(data):
        end = clock() + bound
        mv = memoryview(data)
        for i in range(0, len(mv), 4096):
            left = end - clock()
            if left <= 0:
                raise OSError(110)  # ETIMEDOUT
            raw.settimeout(round(left, 3))
            sock.write(mv[i : i + 4096])

    return write
