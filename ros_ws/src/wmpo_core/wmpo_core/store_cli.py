"""`wmpo store`: look into an episode store, check it, and move data in and out of LeRobot."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    sub = parser.add_subparsers(dest="store_command", metavar="<action>", required=True)

    info = sub.add_parser(
        "info", help="summary of a store: episodes by source, success, robot, policy version"
    )
    info.add_argument("store", type=Path, help="path of the episode store (a .zarr directory)")
    info.add_argument("--list", action="store_true", help="also list every episode")

    verify = sub.add_parser(
        "verify", help="decode every array of every episode; exit 1 if anything is unreadable"
    )
    verify.add_argument("store", type=Path)

    label = sub.add_parser(
        "label", help="set or clear the success label of an episode (needs the writer lock)"
    )
    label.add_argument("store", type=Path)
    label.add_argument("episode_id")
    label.add_argument("success", choices=["true", "false", "unknown"])
    label.add_argument("--by", default="human", help="who decided (default: human)")

    delete = sub.add_parser(
        "delete",
        help="remove episodes from a store for good (needs the writer lock); every id is checked "
        "before any is removed",
    )
    delete.add_argument("store", type=Path)
    delete.add_argument("episode_ids", nargs="+", metavar="episode_id", help="episodes to remove")

    export = sub.add_parser(
        "export-lerobot",
        help="write episodes as a LeRobotDataset v3 directory",
        description="Write episodes as a LeRobotDataset v3 directory: the features a policy gets on the "
        "robot (cameras as MP4, observation.state, action, task); source, success, env seed, policy "
        "version, robot config hash and the exact capture times go into LeRobot's per-episode table "
        "(meta/episodes, columns wmpo/*), so import-lerobot restores them.",
    )
    export.add_argument("store", type=Path)
    export.add_argument("out", type=Path, help="new directory for the LeRobot dataset")
    export.add_argument(
        "--robot", required=True, help="robot config name or YAML the episodes were recorded with"
    )
    export.add_argument(
        "--repo-id", default=None, help="LeRobot repo id to write into the metadata (default: local/<robot>)"
    )
    export.add_argument(
        "--source", choices=["teleop", "policy", "scripted"], help="only episodes from this source"
    )

    imp = sub.add_parser(
        "import-lerobot",
        help="append the episodes of a local LeRobotDataset v3 to a store",
        description="Append the episodes of a local LeRobotDataset v3 to a store. State and action values "
        "are matched to the robot config's joints by LeRobot's feature names; a dataset whose names, "
        "shapes, cameras or fps differ from the robot config is refused and nothing is written. Episodes "
        "written by export-lerobot come back with their ids, labels, seeds and capture times.",
    )
    imp.add_argument("dataset", type=Path, help="LeRobot dataset root (with meta/info.json)")
    imp.add_argument(
        "store",
        type=Path,
        help="episode store to append to (created if missing; a store this import created is removed "
        "if it fails)",
    )
    imp.add_argument("--robot", required=True, help="robot config name or YAML describing the dataset's arm")
    imp.add_argument(
        "--repo-id", default=None, help="the dataset's repo id (default: local/<dataset dir name>)"
    )
    imp.add_argument(
        "--source",
        choices=["teleop", "policy", "scripted"],
        default=None,
        help="source of every imported episode (default: what export-lerobot recorded, else teleop)",
    )
    imp.add_argument(
        "--success",
        choices=["true", "false", "unknown"],
        default=None,
        help="success label for every imported episode, labelled by human (e.g. true for curated "
        "demonstrations; default: what export-lerobot recorded, else unknown)",
    )


def _label(value: str) -> bool | None:
    return {"true": True, "false": False, "unknown": None}[value]


def run(args: argparse.Namespace) -> int:
    from wmpo_core.episode_store import EpisodeStore, StoreError
    from wmpo_core.robot_config import RobotConfigError, load_robot_config

    try:
        if args.store_command == "info":
            return _info(EpisodeStore.open(args.store), args.list)
        if args.store_command == "verify":
            return _verify(EpisodeStore.open(args.store))
        if args.store_command == "label":
            EpisodeStore.open(args.store).close()  # an existing store only: labelling never creates one
            with EpisodeStore.open(args.store, mode="a") as store:
                meta = store.set_success(args.episode_id, _label(args.success), labeled_by=args.by)
            print(f"{meta.episode_id}: success={meta.success} (labelled by {meta.success_labeled_by})")
            return 0
        if args.store_command == "delete":
            return _delete(args.store, args.episode_ids)
        from wmpo_core.lerobot_dataset import (
            RECORDED,
            LeRobotDatasetError,
            export_lerobot,
            import_lerobot_to_path,
        )

        config = load_robot_config(args.robot)
        try:
            if args.store_command == "export-lerobot":
                store = EpisodeStore.open(args.store)
                ids = [m.episode_id for m in store.select(source=args.source, robot_config_name=config.name)]
                root = export_lerobot(
                    store, config, args.out, args.repo_id or f"local/{config.name}", episode_ids=ids
                )
                print(f"wrote {len(ids)} episodes to {root}")
                return 0
            metas = import_lerobot_to_path(
                args.dataset,
                args.repo_id or f"local/{args.dataset.name}",
                args.store,
                config,
                source=args.source or RECORDED,
                success=RECORDED if args.success is None else _label(args.success),
                success_labeled_by="human" if args.success not in (None, "unknown") else None,
            )
            print(f"imported {len(metas)} episodes into {args.store}")
            return 0
        except LeRobotDatasetError as exc:
            print(f"wmpo store: {exc}", file=sys.stderr)
            return 1
    except (StoreError, RobotConfigError, KeyError) as exc:
        print(f"wmpo store: {exc}", file=sys.stderr)
        return 1


def _delete(path: Path, episode_ids: list[str]) -> int:
    from wmpo_core.episode_store import EpisodeStore, StoreError

    EpisodeStore.open(path).close()  # an existing store only: deleting never creates one
    with EpisodeStore.open(path, mode="a") as store:
        unknown = [i for i in episode_ids if i not in store and i not in store.corrupt]
        if unknown:
            raise StoreError(f"{path}: no episode {', '.join(repr(i) for i in unknown)}; nothing deleted")
        for episode_id in dict.fromkeys(episode_ids):
            store.delete_episode(episode_id)
        print(f"deleted {len(set(episode_ids))} episode(s) from {path}; {len(store)} left")
    return 0


def _info(store, list_episodes: bool) -> int:
    metas = list(store)
    print(f"{store.root}: {len(metas)} episodes, {sum(m.num_steps for m in metas)} steps")
    for title, key in [
        ("source", lambda m: m.source),
        ("success", lambda m: {True: "success", False: "failure", None: "unlabelled"}[m.success]),
        ("robot config", lambda m: m.robot_config_name),
        ("policy version", lambda m: m.policy_version or "-"),
    ]:
        counts = Counter(key(m) for m in metas)
        print(f"  by {title}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    if store.corrupt:
        print(f"  UNREADABLE episodes: {len(store.corrupt)} (run `wmpo store verify`)")
    if list_episodes:
        for m in metas:
            print(
                f"  {m.episode_id}  {m.start_time_iso}  {m.source:8s} steps={m.num_steps:4d} "
                f"success={m.success} policy={m.policy_version or '-'}  {m.task}"
            )
    return 0


def _verify(store) -> int:
    from tqdm import tqdm

    from wmpo_core.episode_store import StoreError, validate_episode_dir

    problems = dict(store.corrupt)
    for meta in tqdm(list(store), desc="verify", unit="episode"):
        try:
            validate_episode_dir(store.episode_path(meta.episode_id), meta)
        except StoreError as exc:
            problems[meta.episode_id] = str(exc)
    for episode_id, reason in sorted(problems.items()):
        print(f"BAD {episode_id}: {reason}")
    print(f"{len(store) + len(store.corrupt) - len(problems)} episodes OK, {len(problems)} unreadable")
    return 1 if problems else 0
