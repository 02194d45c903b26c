#!/usr/bin/env node
// Run a MicroPython script under the 32-bit WebAssembly port, from Node.
//
//   node tools/mpy_wasm.mjs [--heap BYTES] [--pystack WORDS] [--split]
//                           [--pkg DIR ...] script.py [args ...]
//
// The VM has an in-memory file system (MEMFS) and cannot see the host's files,
// so this runner copies what the script needs into it:
//   * every .py/.mpy file under each --pkg DIR, at the same absolute path as on
//     the host (so tracebacks name real files); DIR's parent goes on sys.path,
//     so `--pkg fieldline` makes `import fieldline.mqtt` work;
//   * the .py/.mpy files directly inside the script's own folder (not
//     subfolders); that folder is sys.path[0], as under CPython.
// Where a folder holds both m.py and m.mpy, MicroPython imports m.py: to test
// compiled modules pass a --pkg tree that holds only .mpy files.
//
// The script runs with __name__ == "__main__" and sys.argv == [script, args...].
// Its stdout/stderr are forwarded byte for byte. Exit status: the code given to
// sys.exit() (0 for sys.exit() / sys.exit(None), 1 plus the message for
// sys.exit("text")); 1 with the traceback on stderr for any other exception;
// 0 when the script ends normally. Scripts report numbers by printing them.
//
// Heap: --heap sets the size of the initial GC heap (default 256 KiB, about
// what an ESP32 without PSRAM leaves to Python). This "pyscript" build enables
// MicroPython's split heap, so when the heap is full *after a collection* the
// VM adds another heap area instead of raising MemoryError: --heap is a budget,
// not a cap, and a script never sees MemoryError for want of heap. Areas that
// empty out are given back, so the growth cannot be read off after the run
// either. gc.mem_free() reports ~128 MiB of headroom ("max new split"); measure
// with gc.mem_alloc() deltas after a collection, and compare to the budget.
//
// Collections: on this build gc.collect() only marks a collection pending (the
// VM cannot scan the wasm stack); it runs when control returns to JavaScript.
// Inside one script nothing is freed, so a heap figure taken there counts the
// garbage made since the baseline too. --split fixes that: the script is cut
// at every line starting "#@" and each chunk runs in its own runPython() call,
// with a collection run in between, so a chunk that starts with
// gc.mem_alloc() sees only live objects. The chunks share one set of globals
// and keep their line numbers; a SystemExit or exception ends the run.

import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const USAGE =
  "usage: node tools/mpy_wasm.mjs [--heap BYTES] [--pystack WORDS] [--split] " +
  "[--pkg DIR ...] script.py [args ...]";
const DEFAULT_HEAP = 256 * 1024;
const DEFAULT_PYSTACK = 2048; // the module's own default, in machine words
const SKIP_DIRS = new Set(["__pycache__", "node_modules", ".git"]);

function die(message) {
  process.stderr.write(`mpy_wasm: ${message}\n${USAGE}\n`);
  process.exit(2);
}

function parseSize(text, flag) {
  // Accept 262144, 256k, 256K, 1m.
  const m = /^(\d+)([kKmM]?)$/.exec(text ?? "");
  if (!m) die(`${flag} needs a size in bytes (e.g. 262144 or 256k), got ${text}`);
  const scale = { "": 1, k: 1024, m: 1024 * 1024 }[m[2].toLowerCase()];
  return Number(m[1]) * scale;
}

function parseArgs(argv) {
  const opts = { heap: DEFAULT_HEAP, pystack: DEFAULT_PYSTACK, pkgs: [], split: false };
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--heap") opts.heap = parseSize(argv[++i], a);
    else if (a.startsWith("--heap=")) opts.heap = parseSize(a.slice(7), "--heap");
    else if (a === "--pystack") opts.pystack = parseSize(argv[++i], a);
    else if (a === "--split") opts.split = true;
    else if (a === "--pkg") {
      if (i + 1 >= argv.length) die("--pkg needs a directory");
      opts.pkgs.push(argv[++i]);
    } else if (a.startsWith("--pkg=")) opts.pkgs.push(a.slice(6));
    else if (a === "-h" || a === "--help") {
      process.stdout.write(USAGE + "\n");
      process.exit(0);
    } else if (a === "--") {
      i++;
      break;
    } else if (a.startsWith("--")) die(`unknown option ${a}`);
    else break;
  }
  if (i >= argv.length) die("no script given");
  opts.script = path.resolve(argv[i]);
  opts.args = argv.slice(i + 1);
  return opts;
}

// The VM's stdout/stderr hooks are called once per byte (linebuffer: false);
// with linebuffer: true the module drops the newline and never flushes a last
// line that lacks one. Buffer here and flush on newline, size, and exit.
function byteSink(stream) {
  let chunks = [];
  let size = 0;
  const flush = () => {
    if (size) stream.write(Buffer.concat(chunks, size));
    chunks = [];
    size = 0;
  };
  const write = (bytes) => {
    chunks.push(Buffer.from(bytes));
    size += bytes.length;
    if (bytes[bytes.length - 1] === 10 || size >= 4096) flush();
  };
  return { write, flush };
}

function* pyFiles(dir, recursive) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) {
      if (recursive && !SKIP_DIRS.has(entry.name)) yield* pyFiles(full, true);
    } else if (entry.name.endsWith(".py") || entry.name.endsWith(".mpy")) {
      yield full;
    }
  }
}

function copyIn(FS, file) {
  FS.mkdirTree(path.dirname(file));
  FS.writeFile(file, fs.readFileSync(file));
}

function loadModule() {
  // Resolve from the repo (tools/..), not from the caller's cwd.
  const require = createRequire(import.meta.url);
  let entry;
  try {
    entry = require.resolve("@micropython/micropython-webassembly-pyscript/micropython.mjs");
  } catch {
    process.stderr.write(
      "mpy_wasm: @micropython/micropython-webassembly-pyscript is not installed; " +
        "run `npm install` in the repository root\n",
    );
    process.exit(2);
  }
  return import(entry);
}

// Runs inside the VM. _mpy_wasm_run() returns the process exit code, or None
// when the chunk ended normally and the next one may run.
const BOOTSTRAP = `
def _mpy_wasm_setup(path, argv, extra_path):
    import sys
    sys.argv[:] = argv
    sys.path[:0] = extra_path
    return {"__name__": "__main__", "__file__": path}


def _mpy_wasm_run(g, path, start, end):
    # Lines start..end-1 of the script, after start blank lines so that
    # tracebacks give the line numbers of the file.
    import sys
    try:
        with open(path) as f:
            source = f.read()
        if start or end is not None:
            source = "\\n" * start + "\\n".join(source.split("\\n")[start:end])
        exec(compile(source, path, "exec"), g)
    except SystemExit as e:
        code = e.args[0] if e.args else None
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except BaseException as e:
        sys.print_exception(e, sys.stderr)
        return 1
`;

// Line ranges [start, end) of the script's chunks: the whole script, or the
// pieces between "#@" lines (each "#@" line opens a chunk).
function chunks(source, split) {
  if (!split) return [[0, null]];
  const out = [];
  let start = 0;
  source.split("\n").forEach((line, i) => {
    if (line.startsWith("#@") && i > start) {
      out.push([start, i]);
      start = i;
    }
  });
  out.push([start, null]);
  return out;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (!fs.existsSync(opts.script)) die(`no such script: ${opts.script}`);
  for (const pkg of opts.pkgs) {
    if (!fs.statSync(pkg, { throwIfNoEntry: false })?.isDirectory()) {
      die(`--pkg ${pkg} is not a directory`);
    }
  }

  const { loadMicroPython } = await loadModule();
  const out = byteSink(process.stdout);
  const err = byteSink(process.stderr);
  const mp = await loadMicroPython({
    heapsize: opts.heap,
    pystack: opts.pystack,
    linebuffer: false,
    stdout: (bytes) => out.write(bytes),
    stderr: (bytes) => err.write(bytes),
  });

  const scriptDir = path.dirname(opts.script);
  const extraPath = [scriptDir];
  for (const file of pyFiles(scriptDir, false)) copyIn(mp.FS, file);
  copyIn(mp.FS, opts.script); // in case it is not named *.py
  for (const pkg of opts.pkgs) {
    const abs = path.resolve(pkg);
    for (const file of pyFiles(abs, true)) copyIn(mp.FS, file);
    const parent = path.dirname(abs);
    if (!extraPath.includes(parent)) extraPath.push(parent);
  }

  let rc;
  try {
    mp.runPython(BOOTSTRAP);
    // JSON string/array literals are valid Python literals.
    const script = JSON.stringify(opts.script);
    const argv = JSON.stringify([opts.script, ...opts.args]);
    mp.runPython(`_mpy_wasm_g = _mpy_wasm_setup(${script}, ${argv}, ${JSON.stringify(extraPath)})`);
    const source = fs.readFileSync(opts.script, "utf8");
    for (const [i, [start, end]] of chunks(source, opts.split).entries()) {
      // Runs the collection that gc.collect() left pending (see the top).
      if (i) mp.runPython("import gc; gc.collect()");
      const range = `${start}, ${end === null ? "None" : end}`;
      mp.runPython(`_mpy_wasm_rc = _mpy_wasm_run(_mpy_wasm_g, ${script}, ${range})`);
      rc = mp.globals.get("_mpy_wasm_rc");
      if (rc !== null && rc !== undefined) break;
    }
    rc ??= 0;
  } catch (e) {
    // Only reached if the bootstrap itself fails (e.g. MemoryError in it).
    out.flush();
    process.stderr.write(e.name === "PythonError" ? e.message : String(e?.stack ?? e) + "\n");
    rc = 1;
  }
  out.flush();

  err.flush();
  process.exitCode = typeof rc === "number" ? rc & 0xff : 1;
}

await main();
