"""Fieldline: self-hostable device-to-cloud messaging over MQTT 3.1.1 and 5.0."""

__version__ = "0.1.0"
