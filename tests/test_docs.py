"""Every ```python block in docs/*.md runs as written (the docs must stay true)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for i, code in enumerate(BLOCK.findall(page.read_text())):
            found.append((f"{page.name}#{i + 1}", code))
    return found


@pytest.mark.parametrize(("where", "code"), _blocks(), ids=[w for w, _ in _blocks()])
def test_doc_example_runs(
    where: str,
    code: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # files an example writes (a store's folder) land here
    if '"localhost", 1883' in code:
        # Client examples talk to a broker on localhost:1883: give them a real one.
        broker = request.getfixturevalue("mosquitto")
        code = code.replace('"localhost", 1883', f'"{broker.host}", {broker.port}')
    if '"localhost", 8080' in code:  # ...and WebSocket ones to localhost:8080
        ws = request.getfixturevalue("mosquitto_ws")
        code = code.replace('"localhost", 8080', f'"{ws.host}", {ws.ports["ws"]}')
    exec(compile(code, where, "exec"), {"__name__": "__doc_example__"})
