"""Errors of ``fieldline.store``: one base class, so a caller can catch them all."""


class StoreError(Exception):
    """Base of every error raised by ``fieldline.store``."""


def _and(builtin):
    # A base that is StoreError and ``builtin`` too, so ``except ValueError``
    # works for QueryError. MicroPython allows one built-in base per class:
    # there it is StoreError alone.
    try:

        class Both(StoreError, builtin):  # type: ignore[valid-type,misc]
            pass

        return Both
    except TypeError:
        return StoreError


class QueryError(_and(ValueError)):  # type: ignore[misc]
    """A query is not valid: an unknown operator or an operand of the wrong type.
    Raised before any record is read, so an empty store refuses it too."""


class StoreFullError(_and(OSError)):  # type: ignore[misc]
    """A write did not reach the file (disk full, file too large, I/O error).
    ``args[0]`` says what was not written; ``cause`` is the ``OSError``. The
    record was not stored, and everything confirmed before it still is."""

    def __init__(self, what, cause):
        super().__init__(what)
        self.cause = cause
        self.errno = cause.errno if hasattr(cause, "errno") else cause.args[0]

    def __str__(self):
        return "%s: %s" % (self.args[0], self.cause)


class CorruptError(StoreError):
    """A segment has a damaged record in its middle (a CRC or length that does
    not check out, followed by more data). ``args[1]`` lists each damaged
    region as (segment file, offset, length) and ``segments`` the damaged
    files; ``Store(path)`` without ``strict=True`` opens with every record it
    can read and reports the same list in ``stats()["damaged"]``."""

    segments = []  # type: list


class EncodeError(_and(TypeError)):  # type: ignore[misc]
    """A value cannot be stored as JSON: bytes, a set, a dict with a key that is
    not a string, NaN or infinity, or another object JSON has no form for."""


class QueueFull(StoreError):
    """The queue holds ``max_entries`` (or ``max_bytes``) and its policy is to
    refuse new entries."""
