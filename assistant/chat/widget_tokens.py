"""Widget identity tokens: HMAC-SHA256 over a JSON claim set, issued by the customer's backend.

Format: ``base64url(claims_json) "." base64url(hmac_sha256(secret, first_part))`` with claims
``sub`` (the user's external id), ``tenant``, ``exp`` (Unix seconds) and optional ``name``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from enum import StrEnum


class TokenProblem(StrEnum):
    MALFORMED = "malformed"
    FORGED = "forged"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Claims:
    external_id: str
    tenant: str
    expires_at: int
    name: str | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, payload: str) -> str:
    return _b64(hmac.new(secret.encode(), payload.encode("ascii"), hashlib.sha256).digest())


def issue_token(
    secret: str,
    external_id: str,
    *,
    tenant: str = "default",
    ttl_s: int = 3600,
    name: str | None = None,
    now: float | None = None,
) -> str:
    claims: dict[str, object] = {
        "sub": external_id,
        "tenant": tenant,
        "exp": int((now if now is not None else time.time()) + ttl_s),
    }
    if name is not None:
        claims["name"] = name
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{payload}.{_sign(secret, payload)}"


def verify_token(secret: str, token: str, *, now: float | None = None) -> Claims | TokenProblem:
    """The token's claims, or why it is refused. Never raises on hostile input."""
    payload, dot, signature = token.partition(".")
    if not (dot and payload and signature and payload.isascii() and signature.isascii()):
        return TokenProblem.MALFORMED
    if not hmac.compare_digest(_sign(secret, payload), signature):
        return TokenProblem.FORGED
    try:
        raw = json.loads(_unb64(payload))
    except ValueError:
        return TokenProblem.MALFORMED
    if not isinstance(raw, dict):
        return TokenProblem.MALFORMED
    sub, tenant, exp, name = raw.get("sub"), raw.get("tenant"), raw.get("exp"), raw.get("name")
    if (
        not isinstance(sub, str)
        or not 0 < len(sub) <= 128
        or not isinstance(tenant, str)
        or not 0 < len(tenant) <= 64
        or not isinstance(exp, int)
        or not (name is None or isinstance(name, str))
    ):
        return TokenProblem.MALFORMED
    if exp <= (now if now is not None else time.time()):
        return TokenProblem.EXPIRED
    return Claims(external_id=sub, tenant=tenant, expires_at=exp, name=name)
