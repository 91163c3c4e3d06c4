"""Names that arrive from outside (the network, an uploaded archive) and become path components.

Policy versions, episode ids and run ids are all checked against the one pattern below, on the
robot and on the learner, wherever they are parsed. A name that matches is a single, non-hidden
path component on every filesystem (no '/', no '..', no leading '.' or '-', at most 128
characters), and `child_path` checks once more, on the resolved path, that what is built from it
stays inside its root before anything is written or deleted there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$"
"""Policy versions, episode ids and run ids (also the OpenAPI `pattern` of each)."""
_ID = re.compile(ID_PATTERN)


class UnsafeNameError(ValueError):
    """A name from outside that does not match ID_PATTERN or would leave its root directory."""


def is_valid_id(value: object) -> bool:
    """True when `value` is a str matching ID_PATTERN in full (no trailing newline either)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def check_id(value: object, what: str) -> str:
    """Return `value` if it is a valid id, else raise UnsafeNameError saying which `what` it was."""
    if not is_valid_id(value):
        raise UnsafeNameError(f"invalid {what} {value!r}: must match {ID_PATTERN}")
    return value  # type: ignore[return-value]


def child_path(root: str | os.PathLike[str], name: str, what: str) -> Path:
    """`root / name`, refused unless it resolves to a direct child of `root`.

    Call it with a name built from a checked id (e.g. `check_id(v) + ".json"`) before writing or
    deleting there; resolving also catches a symlink already planted at `root / name`.
    """
    base = Path(root).resolve()
    target = (base / name).resolve()
    if not name or "/" in name or "\0" in name or target.parent != base:
        raise UnsafeNameError(
            f"{what} {name!r} would resolve to {target}, outside {base}; refusing to touch it"
        )
    return Path(root) / name
