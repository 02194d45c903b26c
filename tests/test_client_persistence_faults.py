"""A client whose ``persistence`` fails after the broker answered: the medium
took the message, then breaks before its acknowledgement or release can be
noted. The broker has the message, so nothing is lost (it only goes again
after a restart): ``publish()`` returns the broker's answer, the connection
stays up, and the failure is reported on stderr. Before, the error, an
``OSError`` on CPython, passed for the connection failing: the client
reconnected over and over and ``publish()`` timed out on a message the
broker had acknowledged. On CPython and on the MicroPython Unix port (where
``StoreFullError`` is no ``OSError``), against Mosquitto; the device runs
tests/storeproc/broken_medium_acks.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Mosquitto
from paho_peer import PahoPeer
from storeproc.child import Child

WAIT = 10.0
N = 3


@pytest.mark.parametrize("qos", [1, 2])
def test_a_persistence_failing_after_the_broker_answered_loses_no_connection(
    mosquitto: Mosquitto, interpreter: str, tmp_path: Path, qos: int
) -> None:
    peer = PahoPeer(mosquitto.host, mosquitto.port, 4)
    peer.subscribe("flash/#", 2)
    args = (mosquitto.host, str(mosquitto.port), "4", str(tmp_path / "outbox"), str(qos), str(N))
    with Child("broken_medium_acks.py", *args, exe=interpreter) as device:
        for i in range(N):
            assert device.line(timeout=WAIT) == f"acked {i}"
        assert device.line(timeout=WAIT) == "connected 1"
        assert device.wait() == 0, device.stderr.decode()
        stderr = device.stderr.decode()
    got = sorted((m.topic, bytes(m.payload)) for m in peer.expect(N))
    peer.close()
    assert got == [(f"flash/{i}", b"m%d" % i) for i in range(N)]
    call = "done" if qos == 1 else "released"
    assert stderr.count(f"persistence.{call}(") == N, stderr
    assert "may go again after a restart" in stderr
