"""Who is on the other end of a chat or a call, by the same rules on every route.

With a widget secret, the signed token alone says who it is (the client's name fills in a
name the token lacks); without one, the client says who it is, or is a new anonymous user.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from assistant.chat.widget_tokens import Claims, TokenProblem, verify_token

ANONYMOUS_TENANT = "default"


@dataclass(frozen=True, slots=True)
class Identity:
    tenant: str
    external_id: str
    name: str | None
    locale: str | None


def identify(
    secret: str | None,
    token: str | None,
    external_id: str | None,
    name: str | None,
    locale: str | None,
) -> Identity | TokenProblem | None:
    """The caller's identity; a TokenProblem for a refused token, None for a missing one."""
    if secret is not None:
        if token is None:
            return None
        claims = verify_token(secret, token)
        if not isinstance(claims, Claims):
            return claims
        return Identity(claims.tenant, claims.external_id, claims.name or name, locale)
    if external_id:
        return Identity(ANONYMOUS_TENANT, external_id, name, locale)
    return Identity(ANONYMOUS_TENANT, f"anon-{uuid.uuid4().hex}", None, None)
