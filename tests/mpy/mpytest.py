"""Helpers for tests that run on MicroPython (Unix and WebAssembly ports) and CPython.

Test modules are plain ``test_*_mpy.py`` files in this folder holding
``test_*`` functions; ``runner.py`` imports and runs them. Keep them free of
CPython-only features: no pytest, no f-string ``=``/format specs beyond what
MicroPython supports, no dataclasses or typing at run time.
"""

# Broker address as (host, port), set by ``runner.py --broker HOST:PORT``.
# None when no broker is available (e.g. the WebAssembly port has no sockets);
# tests that need one call ``need_broker()`` first.
BROKER = None


class SkipTest(Exception):
    """Raise from a test to report it as SKIP rather than PASS or FAIL."""


def need_broker():
    """Return ``(host, port)`` of the test broker; raise SkipTest when there is none."""
    if BROKER is None:
        raise SkipTest("no broker (run with --broker HOST:PORT)")
    return BROKER


def raises(exc_class, fn, *args, **kwargs):
    """Call ``fn(*args, **kwargs)``; return the ``exc_class`` it raised.

    Raises AssertionError when ``fn`` returns normally. Other exceptions
    propagate, so a wrong exception type fails the test with its traceback.
    """
    try:
        fn(*args, **kwargs)
    except exc_class as e:
        return e
    raise AssertionError("%s not raised by %r" % (exc_class.__name__, fn))
