"""Bearer-token authentication, and where the token comes from on both sides.

One shared secret per deployment: the service compares it in constant time; robots and learner
jobs send it as `Authorization: Bearer <token>`. The token is read from a file (`--token-file`)
or the `WMPO_LEARNER_TOKEN` environment variable, never from a command-line argument, where any
user on the machine could read it in the process list.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path
from typing import Annotated

from fastapi import HTTPException, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

TOKEN_ENV = "WMPO_LEARNER_TOKEN"
MIN_TOKEN_CHARS = 16
TOKEN_HINT = "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class TokenError(ValueError):
    """No usable token; the message says where it was looked for."""


def load_token(token_file: str | os.PathLike[str] | None = None, env: str = TOKEN_ENV) -> str | None:
    """The token from `token_file` if given, else from the environment; None when neither has one."""
    if token_file is not None:
        path = Path(token_file)
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise TokenError(f"cannot read token file {path}: {exc.strerror or exc}") from None
        if not token:
            raise TokenError(f"token file {path} is empty ({TOKEN_HINT})")
    else:
        token = os.environ.get(env, "").strip()
        if not token:
            return None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise TokenError(f"the token must be at least {MIN_TOKEN_CHARS} characters without spaces ({TOKEN_HINT})")
    return token


_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>`; see docs/learner_service.md")


class BearerAuth:
    """FastAPI dependency: refuses the request unless it carries the service's token.

    With `token=None` (only allowed with --insecure-no-auth on loopback) every request passes.
    """

    def __init__(self, token: str | None):
        self._token = token.encode() if token is not None else None

    async def __call__(self, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]) -> None:
        if self._token is None:
            return
        # hmac.compare_digest: the time taken does not reveal how much of the token was right.
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), self._token):
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail="missing or wrong bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )
