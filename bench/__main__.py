"""``python -m bench [table ...] [--markdown FILE] [--quick]``

Runs the selected tables (default: all, in ``TABLES`` order), prints each as
Markdown, and with ``--markdown`` writes them into FILE between the
``<!-- bench:NAME -->`` markers, keeping the rest of the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import TABLES, run_table
from ._report import Section, write_markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Run Fieldline's benchmark tables."
    )
    parser.add_argument(
        "tables",
        nargs="*",
        metavar="table",
        help=f"tables to run: {', '.join(TABLES)} (default: all)",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        metavar="FILE",
        help="write the tables into FILE (e.g. docs/benchmarks.md) between their markers",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny iteration counts: checks the runner works, numbers mean nothing",
    )
    args = parser.parse_args(argv)
    unknown = [t for t in args.tables if t not in TABLES]
    if unknown:
        parser.error(f"unknown table {', '.join(unknown)}; choose from {', '.join(TABLES)}")
    names = [t for t in TABLES if t in args.tables] if args.tables else list(TABLES)
    if args.quick and args.markdown:
        parser.error("--quick numbers mean nothing; do not write them with --markdown")
    sections: list[Section] = []
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        section = run_table(name, quick=args.quick)
        print(section.markdown() + "\n", flush=True)
        sections.append(section)
    if args.markdown:
        write_markdown(args.markdown, sections)
        print(f"wrote {', '.join(names)} into {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
