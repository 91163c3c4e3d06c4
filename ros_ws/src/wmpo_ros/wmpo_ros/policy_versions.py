"""The sync node's rules for a deployed policy version, free of ROS so they read (and test) alone.

A version the learner deploys is checked against its manifest (it names itself that version and
was trained for exactly this robot config), is not staged again when it already runs or waits
staged, and after a successful stage the policy cache keeps only its newest versions.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

from wmpo_core.robot_config import RobotConfig

MANIFEST = "manifest.json"


class VersionRejected(Exception):
    """A deployed version that must not run on this robot; the message says why."""


def check_manifest(path: Path, version: str, config: RobotConfig) -> None:
    """Raise VersionRejected unless the checkpoint's manifest names `version` and this robot config.

    Directories without a manifest.json (e.g. LeRobot checkpoints) have nothing to check here;
    their loader checks them against the robot config. A VLA checkpoint's loader checks the
    robot config's name but only warns on a changed content hash; a pushed update is stricter:
    it runs only on exactly the config it was trained for.
    """
    file = path / MANIFEST
    if not file.is_file():
        return
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise VersionRejected(f"{MANIFEST} is unreadable ({exc})") from None
    if not isinstance(manifest, dict):
        raise VersionRejected(f"{MANIFEST} is not a JSON object")
    if "version" in manifest and manifest["version"] != version:
        raise VersionRejected(
            f"the checkpoint calls itself '{manifest['version']}' but was deployed as '{version}'; "
            "episodes are stamped with the checkpoint's version, so publish it under that name"
        )
    robot = manifest.get("robot")
    if isinstance(robot, dict):
        if robot.get("name") != config.name:
            raise VersionRejected(
                f"trained for robot config '{robot.get('name')}', this robot is '{config.name}'"
            )
        if robot.get("content_hash") != config.content_hash:
            raise VersionRejected(
                f"trained for a different version of robot config '{config.name}' "
                f"({robot.get('content_hash')}, this robot has {config.content_hash})"
            )


def settled_state(version: str, active: str | None, staged: str | None) -> str | None:
    """The state when `version` needs no staging ("running" or "staged"), else None.

    `staged` is the last version the policy node staged: pending when it differs from the active
    one. A deployment back to the running version while another is pending stages it again.
    """
    if version == staged or (version == active and staged in (None, active)):
        return "running" if version == active else "staged"
    return None


def versions_to_prune(cache: Path, protected: Collection[str | None], keep_versions: int) -> list[Path]:
    """The cached version directories beyond the newest `keep_versions` (by mtime), except the
    protected ones (the version just staged, the running one); hidden entries are downloads."""
    versions = sorted(
        (d for d in cache.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=lambda d: d.stat().st_mtime,
    )
    return [old for old in versions[: max(0, len(versions) - keep_versions)] if old.name not in protected]
