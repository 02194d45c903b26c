"""The broker's log: ``log_format = "text"`` (one readable line per record) or
``"json"`` (one JSON object per line, for a log shipper).

Log calls stay ordinary ``logging`` calls on the ``fieldline.broker`` logger; those that
know who and what they are about pass it with ``extra=``: ``client_id``, ``peer``
(``"address:port"``), ``username``, ``reason_code`` (an int, MQTT 5.0 numbering),
``topic``, ``protocol`` (4: 3.1.1, 5: 5.0). ``JsonFormatter`` writes every such field
beside ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger`` and
``message``; the text format leaves them out, the message already names them.

``configure()`` installs the handler on the ``fieldline`` logger; ``fieldline broker``
calls it. A program embedding ``Broker`` keeps its own logging set-up and may use
``JsonFormatter`` on any handler.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .connection import Connection

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What every LogRecord has: anything else came with extra= and is a field of its own.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON: time, level, logger, message, the fields
    passed with ``extra=`` (values JSON cannot hold are written as strings), and
    ``exception`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        time = datetime.fromtimestamp(record.created, UTC)
        out: dict[str, Any] = {
            "time": time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


def configure(
    log_format: str = "text", level: str = "warning", stream: TextIO | None = None
) -> logging.Handler:
    """Send the ``fieldline`` loggers' records at ``level`` ("debug", "info",
    "warning", "error") and above to ``stream`` (default: standard error), as text or
    JSON lines (``log_format``). Replaces a handler an earlier call installed. Returns
    the handler."""
    logger = logging.getLogger("fieldline")
    for old in [h for h in logger.handlers if getattr(h, "_fieldline", False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler._fieldline = True  # type: ignore[attr-defined]
    json_lines = log_format == "json"
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False  # one line per record, not a second from the root logger
    return handler


def fields(conn: Connection, **more: Any) -> dict[str, Any]:
    """The ``extra=`` fields of a log call about ``conn``: its peer, client id (once
    known) and user name (once accepted), and ``more``."""
    out: dict[str, Any] = {"peer": conn.peer}
    client_id = conn.session.client_id
    if conn.client is not None:
        client_id = conn.client.client_id
    if client_id is not None:
        out["client_id"] = client_id
    if conn.username is not None:
        out["username"] = conn.username
    out.update(more)
    return out
