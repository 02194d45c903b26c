"""Run the ``test_*`` functions of MicroPython-compatible test modules.

    micropython tests/mpy/runner.py [--root DIR] [--broker HOST:PORT] [module ...]
    node tools/mpy_wasm.mjs --pkg fieldline tests/mpy/runner.py [module ...]
    python tests/mpy/runner.py [...]

Without module names it runs every ``test_*.py`` file in this folder. Each test
is reported as ``PASS``, ``FAIL`` (with traceback) or ``SKIP`` (it raised
``mpytest.SkipTest``); the exit status is 1 if any test failed or a module
failed to import, else 0.
"""

import os
import sys

import mpytest


def _dirname(path):
    i = path.rfind("/")
    if i < 0:
        return "."
    return path[:i] or "/"


def _abspath(path):
    if path.startswith("/"):
        return path
    return os.getcwd().rstrip("/") + "/" + path


def _print_exception(e):
    if hasattr(sys, "print_exception"):  # MicroPython
        sys.print_exception(e)
    else:
        import traceback

        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stdout)


def _parse_args(argv):
    here = _dirname(_abspath(__file__))
    root = _dirname(_dirname(here))  # tests/mpy -> tests -> repo root
    broker = None
    modules = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--root", "--broker"):
            if i + 1 >= len(argv):
                raise SystemExit("runner: %s needs a value" % a)
            i += 1
            if a == "--root":
                root = argv[i]
            else:
                host, _, port = argv[i].rpartition(":")
                if not host or not port.isdigit():
                    raise SystemExit("runner: --broker wants HOST:PORT, got %r" % argv[i])
                broker = (host, int(port))
        elif a.startswith("--"):
            raise SystemExit("runner: unknown option %s" % a)
        else:
            # Accept "test_x", "test_x.py" and "tests/mpy/test_x.py".
            name = a[a.rfind("/") + 1 :]
            if name.endswith(".py"):
                name = name[:-3]
            modules.append(name)
        i += 1
    if not modules:
        names = os.listdir(here)
        modules = sorted(f[:-3] for f in names if f.startswith("test_") and f.endswith(".py"))
    return here, root, broker, modules


def run(argv):
    """Run the tests named by ``argv``; return the number of failures."""
    here, root, broker, modules = _parse_args(argv)
    for p in (root, here):
        if p not in sys.path:
            sys.path.insert(0, p)
    mpytest.BROKER = broker
    passed = failed = skipped = 0
    for modname in modules:
        try:
            mod = __import__(modname)
        except Exception as e:
            print("FAIL %s (import)" % modname)
            _print_exception(e)
            failed += 1
            continue
        names = sorted(n for n in dir(mod) if n.startswith("test_"))
        for name in names:
            fn = getattr(mod, name)
            if not callable(fn):
                continue
            label = "%s.%s" % (modname, name)
            try:
                fn()
            except mpytest.SkipTest as e:
                print("SKIP %s: %s" % (label, e))
                skipped += 1
            except Exception as e:
                print("FAIL %s" % label)
                _print_exception(e)
                failed += 1
            else:
                print("PASS %s" % label)
                passed += 1
    print(
        "%d passed, %d failed, %d skipped (%s %s)"
        % (passed, failed, skipped, sys.implementation.name, sys.platform)
    )
    return failed


if __name__ == "__main__":
    if run(sys.argv[1:]):
        sys.exit(1)
