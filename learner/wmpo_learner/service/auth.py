"""Bearer-token authentication of requests (the token itself: `wmpo_learner.service.token`).

The service compares the `Authorization: Bearer <token>` header with its token in constant time.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import HTTPException, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

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
