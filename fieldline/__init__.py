"""Fieldline: self-hostable device-to-cloud messaging over MQTT 3.1.1 and 5.0."""

import sys

__version__ = "0.1.0"

_RELEASE = sys.implementation.name == "micropython"


def _use(name):
    """Import the module ``name`` for one use and return it. On MicroPython
    it is forgotten again (by ``sys.modules`` and by its package) once the
    caller lets go of it: code a device runs now and then, such as
    connecting or compacting a store, then holds no RAM in between. Loading
    an .mpy again costs milliseconds; CPython keeps the module."""
    module = __import__(name, None, None, ["_"])
    if _RELEASE:
        del sys.modules[name]
        dot = name.rfind(".")
        try:
            delattr(sys.modules[name[:dot]], name[dot + 1 :])
        except AttributeError:
            pass
    return module
