"""Operator API keys: generated once, shown once, stored only as a salted scrypt hash.

A key reads ``csa_<operator id>_<secret>``: the id finds the operator's row, the 256-bit
secret is checked against the stored hash with a constant-time comparison.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "csa"
_KEY = re.compile(r"^csa_(?P<id>[0-9a-f]{32})_(?P<secret>[A-Za-z0-9_-]{43})$")
# scrypt cost: about 16 MiB and tens of milliseconds per check; the secret is random, so
# this guards a leaked table against cheap offline guessing rather than weak passwords.
N, R, P = 2**14, 8, 1
_DKLEN = 32


@dataclass(frozen=True, slots=True)
class ParsedKey:
    operator_id: str
    secret: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        secret.encode("ascii"), salt=salt, n=n, r=r, p=p, dklen=_DKLEN, maxmem=64 * 1024 * 1024
    )


def new_key(operator_id: str) -> tuple[str, str]:
    """A fresh key for `operator_id` and the hash to store: (key, key_hash)."""
    secret = secrets.token_urlsafe(32)
    return f"{PREFIX}_{operator_id}_{secret}", hash_secret(secret)


def hash_secret(secret: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(secret, salt, N, R, P)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(digest)}"


def parse_key(key: str) -> ParsedKey | None:
    """The operator id and secret in a key, or None when it is not shaped like one."""
    match = _KEY.match(key) if key.isascii() else None
    if match is None:
        return None
    return ParsedKey(match["id"], match["secret"])


def verify_secret(secret: str, key_hash: str) -> bool:
    """Whether `secret` matches the stored hash. Blocking (scrypt): run it in a thread."""
    try:
        scheme, n, r, p, salt, digest = key_hash.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        actual = _scrypt(secret, _unb64(salt), int(n), int(r), int(p))
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(actual, expected)
