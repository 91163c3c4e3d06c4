"""`wmpo robot | teleop | deploy`: the launch files' node graph, in one process.

`launch_ros` is not installable from PyPI, so a pip-installed stack brings the same graph up here:
the nodes of `wmpo_ros.graph.bringup_graph` (same config, same parameters as launch/*.launch.py)
on one `GraphExecutor`, talking over real ROS 2 topics. teleop and deploy then run an
episode loop through the nodes' own services (`wmpo_ros.session.RobotSession`, the same API a
Python program uses): reset the scene (sim) or wait for the operator (real arm) -> start recording
-> enable the teleop device / policy -> the recorder ends the episode on success or at the time
limit and commits it -> next.

`wmpo deploy --learner URL` adds the sync node: every committed episode is uploaded to the learner
service, and the learner's deployed policy version is downloaded, verified and swapped in at the
next episode (without --policy the robot starts with the deployed version).

A simulated arm's graph runs in a DDS domain of its own with localhost-only discovery, so graphs
on one host never cross (`--ros-domain`; `wmpo_ros.isolation`); the domain is printed at start.

`wmpo deploy --dry-run` checks a policy on the arm without moving it: the actions go to
`<ns>/policy/dry_run_action` only, each episode runs for the time limit, and nothing is recorded
or uploaded (why: `wmpo_ros.session`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from wmpo_core.policy import PolicyLoadError, resolve_policy_spec

from wmpo_ros.isolation import DomainRequest, isolate_graph, parse_domain
from wmpo_ros.params import POLICY, RECORDER, SIM_ARM, SYNC, TELEOP

DEFAULT_STORES = {"teleop": "data/demos", "deploy": "data/rollouts"}
UPLOAD_DRAIN_S = 120.0
"""At the end of `wmpo deploy --learner`, wait this long for the run's episodes to reach the learner."""


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument(
        "--robot",
        default="so101_sim",
        help="robot config name (robot_configs/<name>.yaml) or YAML path (default: so101_sim)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=SIM_ARM["seed"].default,
        help="simulation only: seed of the first episode; episode k uses seed+k (default: %(default)s)",
    )
    parser.add_argument(
        "--real-time-factor",
        type=float,
        default=SIM_ARM["real_time_factor"].default,
        help="simulation only: cap on simulated time per wall second; 0 = as fast as the CPU allows "
        "(default: %(default)s)",
    )
    add_ros_domain_argument(parser)
    if command == "robot":
        return
    parser.add_argument(
        "--episodes", type=int, default=10, help="number of episodes to record (default: %(default)s)"
    )
    parser.add_argument(
        "--store",
        default=DEFAULT_STORES[command],
        help="episode store directory, created if missing (default: %(default)s)",
    )
    parser.add_argument(
        "--task",
        default=None,
        help="task instruction stamped into episodes and given to the policy (default: the config's first "
        "task)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=RECORDER["max_steps"].default,
        help="steps per episode; 0 = the config's time limit (default: %(default)s)",
    )
    if command == "teleop":
        parser.add_argument(
            "--teleop-device",
            default=TELEOP["device"].default,
            choices=["auto", "scripted", "keyboard", "gamepad", "so101_leader"],
            help="teleop device; auto = the scripted expert in a simulation that has one, else keyboard "
            "(default: %(default)s)",
        )
        parser.add_argument(
            "--teleop-port",
            "--device-port",  # deprecated spelling, same meaning
            dest="teleop_port",
            default="",
            help="serial port of a leader arm (so101_leader)",
        )
        parser.add_argument(
            "--teleop-id",
            "--device-id",  # deprecated spelling, same meaning
            dest="teleop_id",
            default="",
            help="LeRobot id of a leader arm (its calibration file)",
        )
    else:
        parser.add_argument(
            "--policy",
            default="",
            help="checkpoint directory or spec (replay:<store>[:<episode>], hold:..., "
            "scripted:<module>:<Class>); "
            "optional with --learner, which then provides the deployed version",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="check the policy without moving the arm: actions are computed, logged and published on "
            "<ns>/policy/dry_run_action, "
            "never sent to the arm; each episode runs for the time limit and nothing is recorded or uploaded",
        )
        parser.add_argument(
            "--refill-threshold",
            type=int,
            default=POLICY["refill_threshold"].default,
            help="request a new chunk when this many actions remain (default: %(default)s)",
        )
        parser.add_argument(
            "--learner",
            default="",
            metavar="URL",
            help="learner service URL: upload every recorded episode to it and follow its deployed policy "
            "version "
            "(token from --learner-token-file or WMPO_LEARNER_TOKEN)",
        )
        parser.add_argument(
            "--learner-token-file",
            default="",
            help="file holding the learner's bearer token (default: WMPO_LEARNER_TOKEN)",
        )
        parser.add_argument(
            "--learner-ca",
            default="",
            help="CA certificate bundle of an https learner with a private CA (default: system CAs)",
        )
        parser.add_argument(
            "--swap-at",
            default=POLICY["swap_at"].default,
            choices=["episode", "chunk"],
            help="when a new policy version takes over: at the next episode start, or at the next action "
            "chunk, mid-episode "
            "(default: %(default)s)",
        )


def add_ros_domain_argument(parser: argparse.ArgumentParser) -> None:
    """`--ros-domain`, shared with `wmpo run` (wmpo_ros.isolation)."""
    parser.add_argument(
        "--ros-domain",
        type=_domain_arg,
        default=None,
        metavar="auto|env|ID",
        help="DDS domain of the graph. Default: a simulated arm gets a free domain of its own with "
        "localhost-only discovery "
        "(unless ROS_DOMAIN_ID is set), so graphs on one host never cross; a real arm keeps the environment. "
        "auto: pick a free one; env: keep the environment; ID: that domain",
    )


def _domain_arg(text: str):
    try:
        return parse_domain(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parameter_values(args: argparse.Namespace) -> dict[str, Any]:
    """`wmpo robot` flags -> node parameter values (names from wmpo_ros.params)."""
    return {"robot": args.robot, "seed": args.seed, "real_time_factor": args.real_time_factor}


def session_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """`wmpo teleop | deploy` flags -> `RobotSession` arguments."""
    kwargs: dict[str, Any] = {
        "robot": args.robot, "store": args.store, "bringup": args.command, "seed": args.seed,
        "real_time_factor": args.real_time_factor, "max_steps": args.max_steps, "task": args.task,
        "ros_domain": args.ros_domain,
    }  # fmt: skip
    if args.command == "teleop":
        kwargs["device"] = args.teleop_device
    else:
        kwargs.update(
            policy=args.policy, dry_run=args.dry_run, refill_threshold=args.refill_threshold,
            swap_at=args.swap_at, learner_url=args.learner, token_file=args.learner_token_file or None,
            ca_file=args.learner_ca or None,
        )  # fmt: skip
    return kwargs


def _robot(config, values: dict[str, Any], ros_domain: DomainRequest) -> int:
    """`wmpo robot`: the arm alone, until Ctrl-C."""
    import rclpy

    from wmpo_ros.graph import uses_sim_time
    from wmpo_ros.session import RunningGraph

    isolation = isolate_graph(ros_domain, sim=uses_sim_time(config))
    print(isolation.describe(), file=sys.stderr)
    context = rclpy.Context()
    graph = None
    try:
        rclpy.init(args=[], context=context, domain_id=isolation.domain_id)
        graph = RunningGraph("robot", config, values, context)
        print("arm is up; Ctrl-C to stop", file=sys.stderr)
        while True:
            time.sleep(1.0)
    finally:
        if graph is not None:
            graph.shutdown()
        context.try_shutdown()
        isolation.release()


def run(args: argparse.Namespace) -> int:
    from wmpo_core.robot_config import RobotConfigError, load_robot_config

    try:
        config = load_robot_config(args.robot)
    except RobotConfigError as exc:
        print(f"wmpo {args.command}: {exc}", file=sys.stderr)
        return 2
    if args.command != "robot" and args.episodes < 1:
        print(f"wmpo {args.command}: --episodes must be at least 1", file=sys.stderr)
        return 2
    if args.command == "deploy" and not (args.policy or args.learner):
        print(
            "wmpo deploy: give --policy, or --learner to run the learner's deployed version", file=sys.stderr
        )
        return 2
    if args.command == "deploy" and args.policy:
        try:
            resolve_policy_spec(args.policy)  # a typo fails here, before the arm comes up or a store is made
        except PolicyLoadError as exc:
            print(f"wmpo deploy: {exc}", file=sys.stderr)
            return 2
    from wmpo_ros.dds import use_large_frames_profile
    from wmpo_ros.session import RobotSession

    use_large_frames_profile()
    print(f"bringing up {config.name} ({config.driver.kind}) ...", file=sys.stderr)
    try:
        if args.command == "robot":
            return _robot(config, parameter_values(args), args.ros_domain)
        with RobotSession(**session_arguments(args)) as robot:
            if args.command == "teleop":
                metas = robot.teleop(
                    args.episodes,
                    device=args.teleop_device,
                    device_port=args.teleop_port,
                    device_id=args.teleop_id,
                )
            else:
                if not args.policy:
                    print(
                        f"waiting for the learner's deployed policy (status on {robot.names.sync_status}) "
                        "...",
                        file=sys.stderr,
                    )
                    print(
                        f"running {robot.wait_for_version(timeout_s=SYNC['stage_timeout_s'].default)}",
                        file=sys.stderr,
                    )
                metas = robot.run_episodes(args.episodes)
            if robot.dry_run:
                print(
                    f"dry run: {len(metas)} episodes, {sum(m['num_steps'] for m in metas)} actions proposed "
                    "on "
                    f"{robot.names.policy_dry_run_action}, none sent to the arm; nothing recorded",
                    file=sys.stderr,
                )
                return 0
            successes = sum(bool(m.get("success")) for m in metas)
            print(
                f"recorded {len(metas)} episodes into {os.path.abspath(args.store)}: {successes} successful",
                file=sys.stderr,
            )
            if args.command == "deploy" and args.learner:
                try:
                    robot.wait_uploaded(timeout_s=UPLOAD_DRAIN_S)
                    print(
                        f"uploaded {len(metas)}/{len(metas)} episodes to the learner at {args.learner}",
                        file=sys.stderr,
                    )
                except RuntimeError as exc:
                    print(f"wmpo deploy: not every episode reached the learner yet: {exc}", file=sys.stderr)
                    return 1
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (
        RuntimeError,
        ValueError,
        OSError,
    ) as exc:  # bad config, policy, device, store: say what, not a traceback
        print(f"wmpo {args.command}: {exc}", file=sys.stderr)
        return 1
