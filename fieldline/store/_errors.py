"""Errors of ``fieldline.store``: one base class, so a caller can catch them all."""


class StoreError(Exception):
    """Base of every error raised by ``fieldline.store``."""


class QueryError(StoreError, ValueError):
    """A query is not valid: an unknown operator or an operand of the wrong type.
    Raised before any record is read, so an empty store refuses it too."""


class StoreFullError(StoreError, OSError):
    """A write did not reach the file (disk full, file too large, I/O error).
    ``args[0]`` says what was not written; ``cause`` is the ``OSError``. The
    record was not stored, and everything confirmed before it still is."""

    def __init__(self, what, cause):
        super().__init__(what, cause)
        self.cause = cause


class CorruptError(StoreError):
    """A segment has a damaged record in its middle (a CRC or length that does
    not check out, followed by more data). The store opened anyway with every
    record it could read; ``segments`` lists the damaged files."""
