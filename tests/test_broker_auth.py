"""The password file (``passwords.py``): the hash, and the file's checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldline.broker import ConfigError
from fieldline.broker.passwords import Passwords, hash_password, parse_hash, verify_password

# Cheap hashes for the fixtures: the tests check the logic, not the cost.
FAST = {"n": 1024, "r": 8, "p": 1}


def password_file(path: Path, **users: str) -> Path:
    Passwords({u: hash_password(pw.encode(), **FAST) for u, pw in users.items()}).save(path)
    return path


# -- the hash and the file ---------------------------------------------------------------


def test_hash_is_salted_scrypt_with_its_parameters() -> None:
    h1, h2 = hash_password(b"pw"), hash_password(b"pw")
    assert h1 != h2  # a new salt each time
    assert h1.startswith("$scrypt$n=16384,r=8,p=1$")
    n, r, p, salt, digest = parse_hash(h1)
    assert (n, r, p, len(salt), len(digest)) == (16384, 8, 1, 16, 32)
    assert verify_password(b"pw", h1)
    assert not verify_password(b"pW", h1)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("alice", "expected 'username:hash'"),
        (":$scrypt$n=1024,r=8,p=1$AAAA$" + "A" * 24, "expected 'username:hash'"),
        ("alice:plaintext", "the hash must look like"),
        ("alice:$scrypt$n=1000,r=8,p=1$AAAA$" + "A" * 24, "out of range"),
        ("alice:$scrypt$n=1024,r=8$AAAA$" + "A" * 24, "n=..,r=..,p=.."),
        ("alice:$scrypt$n=1024,r=8,p=1$!!!!$" + "A" * 24, "base64"),
    ],
)
def test_malformed_line_is_a_config_error(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "passwd"
    path.write_text(f"# users\n\n{line}\n")
    with pytest.raises(ConfigError, match=message) as e:
        Passwords.load(path)
    assert f"{path}:3:" in str(e.value)  # the file and the line


def test_user_twice_is_a_config_error(tmp_path: Path) -> None:
    path = password_file(tmp_path / "passwd", alice="a")
    path.write_text(path.read_text() * 2)
    with pytest.raises(ConfigError, match=r"passwd:2: user 'alice' appears twice"):
        Passwords.load(path)
