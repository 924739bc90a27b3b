"""API keys for the agents, JWTs for the people and tools that query.

Keys are compared in constant time against every configured key (so a rotation can keep the
old key valid while agents move to the new one) and are never logged.
"""

import hmac
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

ROLES = ("viewer", "admin")
ALGORITHM = "HS256"


class ApiKeys:
    """The set of API keys the ingest API accepts."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode() for key in keys]

    def accepts(self, candidate: str | None) -> bool:
        if not candidate:
            return False

        given = candidate.encode()
        matched = False
        for key in self._keys:
            # No early exit: the time taken does not reveal which key, if any, matched.
            matched |= hmac.compare_digest(given, key)
        return matched


class TokenRejected(ValueError):
    """A bearer token that is missing, malformed, expired or signed with another secret."""


def issue_token(secret: str, *, subject: str, role: str, ttl_seconds: int = 3600) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")

    now = datetime.now(UTC)
    claims = {"sub": subject, "role": role, "iat": now, "exp": now + timedelta(seconds=ttl_seconds)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]}
        )
    except jwt.PyJWTError as error:
        raise TokenRejected(str(error)) from error
    if claims.get("role") not in ROLES:
        raise TokenRejected(f"role must be one of {', '.join(ROLES)}")
    return claims
