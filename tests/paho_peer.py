"""paho-mqtt as the client on the other side of the broker, for the client tests.

Messages it receives land in a queue; ``expect(n)`` waits for them, so tests
await events instead of sleeping.
"""

from __future__ import annotations

import collections
import queue
import threading
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

WAIT = 10.0


class PahoPeer:
    def __init__(self, host: str, port: int, version: int, client_id: str = "paho-peer") -> None:
        self.version = version
        protocol = paho.MQTTv5 if version == 5 else paho.MQTTv311
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol
        )
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self._subscribed = threading.Event()
        self._connected = threading.Event()
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_connect = lambda *a: self._connected.set()
        # paho's own log, kept short, so a failure says how far it got.
        self.log: collections.deque[str] = collections.deque(maxlen=50)
        self.client.on_log = lambda c, u, level, text: self.log.append(text)
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(WAIT):
            self.client.loop_stop()
            raise TimeoutError(
                f"paho did not connect to {host}:{port}; its log:\n" + "\n".join(self.log)
            )

    def subscribe(self, topic: str, qos: int = 0) -> None:
        self._subscribed.clear()
        self.client.subscribe(topic, qos)
        if not self._subscribed.wait(WAIT):
            raise TimeoutError("paho did not get its SUBACK")

    def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, **props: Any
    ) -> None:
        properties = None
        if props:
            properties = Properties(PacketTypes.PUBLISH)
            for name, value in props.items():
                setattr(properties, name, value)
        info = self.client.publish(topic, payload, qos, retain, properties=properties)
        info.wait_for_publish(WAIT)

    def expect(self, n: int, timeout: float = WAIT) -> list[paho.MQTTMessage]:
        return [self.messages.get(timeout=timeout) for _ in range(n)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
