"""Bearer-token authentication of requests (the token itself: `wmpo_core.protocol.token`).

The service compares the `Authorization: Bearer <token>` header with its token in constant time,
before FastAPI reads or parses the request body (`AuthFirstRoute`): a caller without the token
gets 401 whatever it sends, and the service spends nothing on parsing its body.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import HTTPException, Request, Response, Security, status
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

_bearer = HTTPBearer(
    auto_error=False, description="`Authorization: Bearer <token>`; see docs/learner_service.md"
)


class BearerAuth:
    """Refuses a request unless it carries the service's token.

    Used twice with one check: as the route class's first step (`route_class()`, before the body
    is read) and as a FastAPI dependency (so the OpenAPI schema marks the route as secured).
    With `token=None` (only allowed with --insecure-no-auth on loopback) every request passes.
    """

    def __init__(self, token: str | None):
        self._token = token.encode() if token is not None else None

    def check(self, authorization: str | None) -> None:
        """Raise 401 unless `authorization` is 'Bearer <the token>'."""
        if self._token is None:
            return
        scheme, credentials = get_authorization_scheme_param(authorization)
        # hmac.compare_digest: the time taken does not reveal how much of the token was right.
        if (
            scheme.lower() != "bearer"
            or not credentials
            or not hmac.compare_digest(credentials.encode(), self._token)
        ):
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail="missing or wrong bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def __call__(
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
    ) -> None:
        self.check(f"{credentials.scheme} {credentials.credentials}" if credentials is not None else None)

    def route_class(self) -> type[APIRoute]:
        """An APIRoute that checks the token before FastAPI reads the body and solves dependencies."""
        auth = self

        class AuthFirstRoute(APIRoute):
            def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
                handler = super().get_route_handler()

                async def checked(request: Request) -> Response:
                    auth.check(request.headers.get("authorization"))
                    return await handler(request)

                return checked

        return AuthFirstRoute
