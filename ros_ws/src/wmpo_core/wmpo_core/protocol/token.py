"""Where the learner token comes from, with the same rules on the service and its clients.

One shared secret per deployment, read from a file (`--token-file`) or the `WMPO_LEARNER_TOKEN`
environment variable, never from a command-line argument, where any user on the machine could
read it in the process list. Standard library only: robot-side clients import this.
"""

from __future__ import annotations

import os
from pathlib import Path

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
        raise TokenError(
            f"the token must be at least {MIN_TOKEN_CHARS} characters without spaces ({TOKEN_HINT})"
        )
    return token
