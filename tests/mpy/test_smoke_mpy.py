"""Smoke tests: the package imports, and the test broker speaks MQTT 3.1.1."""

import mpytest

# CONNECT, MQTT 3.1.1, clean session, keep-alive 60 s, empty client id.
CONNECT_311 = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"
# CONNACK, session present 0, return code 0 (accepted).
CONNACK_OK = b"\x20\x02\x00\x00"


def test_import_and_build_publish():
    import fieldline.mqtt as mqtt

    p = mqtt.Publish("sensors/t", b"21.5", qos=1, packet_id=7)
    assert p.topic == "sensors/t"
    assert p.payload == b"21.5"
    assert p.qos == 1 and p.packet_id == 7
    assert p == mqtt.Publish("sensors/t", b"21.5", qos=1, packet_id=7)
    assert "Publish" in repr(p)


def _recv_exactly(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def test_raw_connect_gets_connack():
    host, port = mpytest.need_broker()
    import socket

    addr = socket.getaddrinfo(host, port)[0][-1]
    sock = socket.socket()
    try:
        sock.settimeout(5)
        sock.connect(addr)
        sock.send(CONNECT_311)
        reply = _recv_exactly(sock, 4)
    finally:
        sock.close()
    assert reply == CONNACK_OK, reply
