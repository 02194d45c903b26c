"""Tables as data, rendered to Markdown, and written into a docs page between
``<!-- bench:NAME -->`` / ``<!-- /bench:NAME -->`` markers.

Rows keep the raw numbers (so tests can check them); each column says how to
format its cells.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Cell = str | int | float
# text: as is; rate: messages per second; ratio: "0.42×"; bytes: "12,345"; kib: "12.1".
Kind = Literal["text", "rate", "ratio", "bytes", "kib"]


@dataclass
class Column:
    title: str
    kind: Kind = "text"


@dataclass
class Table:
    columns: list[Column]
    rows: list[list[Cell]] = field(default_factory=list)
    caption: str = ""

    def add(self, *cells: Cell) -> None:
        """Append a row; raises ValueError if it has the wrong number of cells."""
        if len(cells) != len(self.columns):
            raise ValueError(f"row has {len(cells)} cells, table has {len(self.columns)} columns")
        self.rows.append(list(cells))

    def markdown(self) -> str:
        """The table in GitHub Markdown, numbers right-aligned."""
        head = "| " + " | ".join(c.title for c in self.columns) + " |"
        rule = "|" + "|".join("---" if c.kind == "text" else "---:" for c in self.columns) + "|"
        lines = [head, rule]
        for row in self.rows:
            cells = (_format(v, c.kind) for v, c in zip(row, self.columns, strict=True))
            lines.append("| " + " | ".join(cells) + " |")
        text = "\n".join(lines)
        return f"{self.caption}\n\n{text}" if self.caption else text


@dataclass
class Section:
    """One table group: what ``python -m bench NAME`` prints and what goes
    between the ``bench:NAME`` markers."""

    name: str
    title: str
    tables: list[Table]
    notes: list[str] = field(default_factory=list)
    environment: str = ""

    def markdown(self) -> str:
        parts = [f"### {self.title}", _provenance(self.environment)]
        parts += [t.markdown() for t in self.tables]
        if self.notes:
            parts.append("\n".join(f"- {n}" for n in self.notes))
        return "\n\n".join(parts)


def _format(value: Cell, kind: Kind) -> str:
    if isinstance(value, str):
        return value
    if kind == "rate":
        return f"{value:,.0f}"
    if kind == "ratio":
        return f"{value:.2f}×"
    if kind == "bytes":
        return f"{value:,.0f}"
    if kind == "kib":
        return f"{value / 1024:.1f}"
    return str(value)


def command_line() -> str:
    """The command that is running, as a user would type it."""
    return "python -m bench" + "".join(" " + shlex.quote(a) for a in sys.argv[1:])


def machine() -> str:
    """Cores, OS and CPU architecture of this machine."""
    return f"{os.cpu_count()} cores, {platform.system()} {platform.machine()}"


def _provenance(environment: str) -> str:
    when = datetime.date.today().isoformat()
    env = f"; {environment}" if environment else ""
    return f"Produced by `{command_line()}` on {when} ({machine()}{env})."


def goal_result(value: float, goal: float, at_most: bool) -> str:
    """``"met (…)"`` / ``"not met (…)"`` with the margin as a factor of the goal."""
    met = value <= goal if at_most else value >= goal
    return f"{'met' if met else 'not met'} ({value / goal:.2f}× the goal)"


def begin_marker(name: str) -> str:
    return f"<!-- bench:{name} -->"


def end_marker(name: str) -> str:
    return f"<!-- /bench:{name} -->"


def splice(text: str, section: Section) -> str:
    """Return ``text`` with the section's block replaced between its markers,
    or appended at the end if the markers are missing."""
    begin, end = begin_marker(section.name), end_marker(section.name)
    block = f"{begin}\n{section.markdown()}\n{end}"
    i = text.find(begin)
    j = text.find(end, i + len(begin)) if i >= 0 else -1
    if i >= 0 and j >= 0:
        return text[:i] + block + text[j + len(end) :]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def write_markdown(path: Path, sections: list[Section]) -> None:
    """Write each section between its markers in ``path``, keeping the rest of
    the file (creating it if missing)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    for section in sections:
        text = splice(text, section)
    path.write_text(text)
