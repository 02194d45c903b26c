"""The password file: one ``username:hash`` line per user, what ``fieldline passwd``
writes and the broker checks CONNECT credentials against.

The hash is scrypt from the standard library, salted and slow on purpose, stored with
its parameters so they can be raised later without breaking older lines::

    $scrypt$n=16384,r=8,p=1$<16-byte salt, base64>$<32-byte hash, base64>

One check costs about 16 MiB and a few tens of milliseconds of CPU: the broker runs it
in a worker thread (``Passwords.check``), at most a few at a time, so a burst of
connects neither blocks the event loop nor takes the memory of one hash per thread;
a check whose client has gone by its turn is skipped.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import secrets
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from .config import ConfigError, warn_if_exposed

SCHEME = "scrypt"
N, R, P = 16384, 8, 1  # 128 * N * R bytes = 16 MiB per hash (the default maxmem is 32 MiB)
SALT_BYTES = 16
HASH_BYTES = 32
_MAX_N, _MAX_R, _MAX_P = 1 << 17, 16, 16  # at most 256 MiB a hash: refuse what would stall us
_CONCURRENT_CHECKS = 4

# What check() answers (the CONNACK reason codes; 3.1.1 return codes 4 and 5).
OK = 0
BAD_USER_NAME_OR_PASSWORD = 0x86
NOT_AUTHORIZED = 0x87


def hash_password(password: bytes, n: int = N, r: int = R, p: int = P) -> str:
    """The password file's hash of ``password``, with a new random salt."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, n, r, p, HASH_BYTES)
    return f"${SCHEME}$n={n},r={r},p={p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: bytes, hashed: str) -> bool:
    """Whether ``password`` matches ``hashed`` (a hash_password() result), compared in
    constant time. Raises ValueError if ``hashed`` is malformed."""
    n, r, p, salt, digest = parse_hash(hashed)
    return hmac.compare_digest(_scrypt(password, salt, n, r, p, len(digest)), digest)


def parse_hash(hashed: str) -> tuple[int, int, int, bytes, bytes]:
    """``(n, r, p, salt, digest)`` from a hash; raises ValueError saying what is wrong."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != SCHEME:
        raise ValueError(f"the hash must look like ${SCHEME}$n=..,r=..,p=..$<salt>$<hash>")
    try:
        params = dict(kv.split("=", 1) for kv in parts[2].split(","))
        n, r, p = int(params.pop("n")), int(params.pop("r")), int(params.pop("p"))
    except (ValueError, KeyError):
        raise ValueError("the scrypt parameters must be n=..,r=..,p=.. (integers)") from None
    if params:
        raise ValueError(f"unknown scrypt parameter {next(iter(params))!r}")
    if not (1 < n <= _MAX_N and n & (n - 1) == 0 and 0 < r <= _MAX_R and 0 < p <= _MAX_P):
        raise ValueError(
            f"scrypt parameters out of range (n a power of 2 up to {_MAX_N}, "
            f"r up to {_MAX_R}, p up to {_MAX_P})"
        )
    try:
        salt = base64.b64decode(parts[3], validate=True)
        digest = base64.b64decode(parts[4], validate=True)
    except binascii.Error:
        raise ValueError("the salt and the hash must be base64") from None
    if not salt or len(digest) < 16:
        raise ValueError("the salt is empty or the hash too short")
    return n, r, p, salt, digest


def check_username(username: str) -> None:
    """Raises ValueError if ``username`` cannot be a password file entry."""
    if not username or ":" in username or any(c in username for c in "\r\n"):
        raise ValueError("a user name must be non-empty, without ':' or line breaks")


class Passwords:
    """The users of one password file, ``{username: hash}``, in file order."""

    def __init__(self, users: dict[str, str] | None = None, path: str | None = None) -> None:
        self.users: dict[str, str] = dict(users or {})
        self.path = path
        self._limit: asyncio.Semaphore | None = None
        self._dummy: str | None = None

    @classmethod
    def load(cls, path: str | Path, missing_ok: bool = False) -> Passwords:
        """Read the file at ``path`` (blank lines and lines starting with ``#`` are
        skipped). Raises ConfigError naming the file and the line if it cannot be read
        or a line is malformed; a missing file is empty if ``missing_ok``. Logs a
        warning if other users may write it or everyone may read it."""
        users: dict[str, str] = {}
        warn_if_exposed(path, "password file", secret=True)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            if not missing_ok:
                raise ConfigError(f"{path}: the password file does not exist") from None
            text = ""
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
            raise ConfigError(f"{path}: cannot read the password file: {why}") from None
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{path}:{number}"
            username, colon, hashed = line.partition(":")
            if not colon or not username:
                raise ConfigError(f"{where}: expected 'username:hash'")
            if username in users:
                raise ConfigError(f"{where}: user {username!r} appears twice")
            try:
                parse_hash(hashed)
            except ValueError as e:
                raise ConfigError(f"{where}: user {username!r}: {e}") from None
            users[username] = hashed
        return cls(users, str(path))

    def save(self, path: str | Path | None = None) -> None:
        """Write the file atomically (a temporary file in the same directory, renamed
        over it) with mode 0600. Raises OSError."""
        target = Path(path or self.path or "")
        text = "".join(f"{u}:{h}\n" for u, h in self.users.items())
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
        try:
            os.fchmod(fd, 0o600)  # mkstemp makes it 0600 already; be explicit
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def share_limit(self, old: Passwords) -> None:
        """Take ``old``'s limit on concurrent checks (a reload replaces the users, not
        the cap on memory and threads the checks may take)."""
        self._limit = old._limit  # not its dummy hash: the new file's may differ

    def set(self, username: str, password: bytes) -> None:
        """Add ``username`` or change its password. Raises ValueError for a bad name."""
        check_username(username)
        self.users[username] = hash_password(password)

    def verify(self, username: str, password: bytes) -> bool:
        """Whether ``password`` is ``username``'s (blocking: tens of milliseconds)."""
        hashed = self.users.get(username)
        if hashed is None and self._dummy is None:
            self._dummy = self._make_dummy()
        # An unknown user is checked against a dummy hash: it takes as long as a known one.
        ok = verify_password(password, hashed or self._dummy or "")
        return ok and hashed is not None

    def _make_dummy(self) -> str:
        # With the parameters most of the file's hashes have (the defaults for an
        # empty file): a dummy cheaper or dearer than the real hashes would tell, by
        # the time a check takes, which user names exist.
        params = Counter(parse_hash(h)[:3] for h in self.users.values())
        n, r, p = params.most_common(1)[0][0] if params else (N, R, P)
        return hash_password(secrets.token_bytes(16), n, r, p)

    async def check(
        self,
        username: str | None,
        password: bytes | None,
        wanted: Callable[[], bool] | None = None,
    ) -> int:
        """The CONNACK reason code for these CONNECT credentials: OK, or
        BAD_USER_NAME_OR_PASSWORD (unknown user, wrong or missing password).
        ``username`` None is NOT_AUTHORIZED: anonymity is the caller's decision. The
        hash runs in a worker thread, a few at a time. ``wanted``: asked when this
        check's turn comes; False (the client has gone) skips the hash and answers
        BAD_USER_NAME_OR_PASSWORD, so checks no one waits for take no turn."""
        if username is None:
            return NOT_AUTHORIZED
        if self._limit is None:
            self._limit = asyncio.Semaphore(_CONCURRENT_CHECKS)
        async with self._limit:
            if wanted is not None and not wanted():
                return BAD_USER_NAME_OR_PASSWORD
            ok = await asyncio.to_thread(self.verify, username, password or b"")
        return OK if ok and password is not None else BAD_USER_NAME_OR_PASSWORD


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    maxmem = 128 * n * r * p + (1 << 20)
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=maxmem)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
