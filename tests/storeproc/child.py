"""``Child``: a script of this folder in its own process, its stdout read line
by line on a thread so that the test waits for a line with a timeout instead
of hanging, and kills the process with SIGKILL whenever it likes."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
WAIT = 10.0


class ChildDied(AssertionError):
    pass


class Child:
    """``python tests/storeproc/<script> *args``, with the checkout on PYTHONPATH;
    ``exe`` names another interpreter (``micropython``: the checkout goes on its
    MICROPYPATH)."""

    def __init__(
        self, script: str, *args: str, stdin: bool = False, exe: str = sys.executable
    ) -> None:
        self.script = script
        self.proc = subprocess.Popen(
            [exe, str(HERE / script), *args],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), "MICROPYPATH": f"{REPO}:.frozen"},
        )
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._eof = False
        self.stderr = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._err_reader = threading.Thread(target=self._read_err, daemon=True)
        self._err_reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def line(self, timeout: float = WAIT) -> str:
        """The next complete line (without its newline). Raises ChildDied if
        the process ended first (with its stderr), TimeoutError if none came."""
        try:
            got = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no line from {self.script} in {timeout} s") from None
        if got is None or not got.endswith(b"\n"):
            self._eof = True
            self.proc.wait(WAIT)
            self._err_reader.join(WAIT)
            raise ChildDied(
                f"{self.script} exited with {self.proc.returncode}:\n"
                + self.stderr.decode(errors="replace")
            )
        return got[:-1].decode()

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def kill(self) -> list[str]:
        """SIGKILL it, wait for it, and return the complete lines it wrote
        that were not read yet (a line cut short by the kill is left out)."""
        self.proc.kill()
        self.proc.wait(WAIT)
        rest: list[str] = []
        while not self._eof:
            got = self._lines.get(timeout=WAIT)
            if got is None:
                break
            if got.endswith(b"\n"):
                rest.append(got[:-1].decode())
        self._eof = True
        self._reader.join(WAIT)
        self._err_reader.join(WAIT)
        self._close()
        return rest

    def wait(self, timeout: float = WAIT) -> int:
        """Wait for a clean exit; its return code."""
        code = self.proc.wait(timeout)
        self._reader.join(WAIT)
        self._err_reader.join(WAIT)
        self._close()
        return code

    def _close(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)


def run_script(exe: str, script: str, folder: Path) -> list[str]:
    """``exe tests/storeproc/SCRIPT REPO FOLDER``: its output lines before the
    closing "done", once it has exited with 0 after printing it."""
    out = subprocess.run(
        [exe, str(HERE / script), str(REPO), str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.endswith("done\n"), out
    return out.stdout.splitlines()[:-1]


def segment_names(folder: Path) -> list[str]:
    """The segment files of the store in ``folder``, oldest first."""
    return sorted(n for n in os.listdir(folder) if n.endswith(".seg"))
