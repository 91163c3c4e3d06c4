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
from dataclasses import dataclass
from typing import Any, Literal

from wmpo_core.config_cli import add_config_arguments, config_from_args, option
from wmpo_core.policy import PolicyLoadError, resolve_policy_spec

from wmpo_ros.isolation import DomainRequest, isolate_graph, parse_domain
from wmpo_ros.params import POLICY, RECORDER, SIM_ARM, SYNC, TELEOP

UPLOAD_DRAIN_S = 120.0
"""At the end of `wmpo deploy --learner`, wait this long for the run's episodes to reach the learner."""


ROS_DOMAIN_HELP = (
    "DDS domain of the graph. Default: a simulated arm gets a free domain of its own with localhost-only "
    "discovery (unless ROS_DOMAIN_ID is set), so graphs on one host never cross; a real arm keeps the "
    "environment. auto: pick a free one; env: keep the environment; ID: that domain"
)


def domain_argument(text: str) -> int | str:
    """argparse type of `--ros-domain` (shared with `wmpo run`): wmpo_ros.isolation.parse_domain."""
    try:
        return parse_domain(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass
class BringupConfig:
    """`wmpo robot`: an arm (simulated or real) behind the standard topics, until Ctrl-C."""

    robot: str = option("so101_sim", "robot config name (robot_configs/<name>.yaml) or YAML path")
    seed: int = option(
        SIM_ARM["seed"].default, "simulation only: seed of the first episode; episode k uses seed+k"
    )
    real_time_factor: float = option(
        SIM_ARM["real_time_factor"].default,
        "simulation only: cap on simulated time per wall second; 0 = as fast as the CPU allows",
    )
    ros_domain: int | str | None = option(None, ROS_DOMAIN_HELP, type=domain_argument, metavar="auto|env|ID")


@dataclass
class RecordingConfig(BringupConfig):
    """The arm plus the recorder: episodes into a store."""

    episodes: int = option(10, "number of episodes to record")
    store: str = option("data/demos", "episode store directory, created if missing")
    task: str | None = option(
        None,
        "task instruction stamped into episodes and given to the policy (default: the config's first task)",
    )
    max_steps: int = option(RECORDER["max_steps"].default, "steps per episode; 0 = the config's time limit")


@dataclass
class TeleopConfig(RecordingConfig):
    """`wmpo teleop`: record demonstrations with a teleop device (the scripted expert in sim)."""

    teleop_device: Literal["auto", "scripted", "keyboard", "gamepad", "so101_leader"] = option(
        TELEOP["device"].default,
        "teleop device; auto = the scripted expert in a simulation that has one, else keyboard",
    )
    teleop_port: str | None = option(
        None, "serial port of a leader arm (so101_leader)", aliases=("--device-port",)
    )
    teleop_id: str | None = option(
        None, "LeRobot id of a leader arm (its calibration file)", aliases=("--device-id",)
    )


@dataclass
class DeployConfig(RecordingConfig):
    """`wmpo deploy`: run a policy on the arm, recording (and with --learner uploading) episodes."""

    store: str = option("data/rollouts", "episode store directory, created if missing")
    policy: str | None = option(
        None,
        "checkpoint directory or spec (replay:<store>[:<episode>], hold:..., scripted:<module>:<Class>); "
        "optional with --learner, which then provides the deployed version",
    )
    dry_run: bool = option(
        False,
        "check the policy without moving the arm: actions are computed, logged and published on "
        "<ns>/policy/dry_run_action, never sent to the arm; each episode runs for the time limit and "
        "nothing is recorded or uploaded",
    )
    refill_threshold: int = option(
        POLICY["refill_threshold"].default, "request a new chunk when this many actions remain"
    )
    learner: str | None = option(
        None,
        "learner service URL: upload every recorded episode to it and follow its deployed policy version "
        "(token from --learner-token-file or WMPO_LEARNER_TOKEN)",
        metavar="URL",
    )
    learner_token_file: str | None = option(
        None, "file holding the learner's bearer token (default: WMPO_LEARNER_TOKEN)"
    )
    learner_ca: str | None = option(
        None, "CA certificate bundle of an https learner with a private CA (default: system CAs)"
    )
    swap_at: Literal["episode", "chunk"] = option(
        POLICY["swap_at"].default,
        "when a new policy version takes over: at the next episode start, or at the next action chunk, "
        "mid-episode",
    )


COMMAND_CONFIGS: dict[str, type[BringupConfig]] = {
    "robot": BringupConfig,
    "teleop": TeleopConfig,
    "deploy": DeployConfig,
}


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    add_config_arguments(parser, COMMAND_CONFIGS[command])


def parameter_values(config: BringupConfig) -> dict[str, Any]:
    """`wmpo robot` flags -> node parameter values (names from wmpo_ros.params)."""
    return {"robot": config.robot, "seed": config.seed, "real_time_factor": config.real_time_factor}


def session_arguments(command: str, config: RecordingConfig) -> dict[str, Any]:
    """`wmpo teleop | deploy` flags -> `RobotSession` arguments."""
    kwargs: dict[str, Any] = {
        "robot": config.robot, "store": config.store, "bringup": command, "seed": config.seed,
        "real_time_factor": config.real_time_factor, "max_steps": config.max_steps, "task": config.task,
        "ros_domain": config.ros_domain,
    }  # fmt: skip
    if isinstance(config, TeleopConfig):
        kwargs["device"] = config.teleop_device
    elif isinstance(config, DeployConfig):
        kwargs.update(
            policy=config.policy or "", dry_run=config.dry_run, refill_threshold=config.refill_threshold,
            swap_at=config.swap_at, learner_url=config.learner or "", token_file=config.learner_token_file,
            ca_file=config.learner_ca,
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
    return bring_up(args.command, config_from_args(COMMAND_CONFIGS[args.command], args))


def bring_up(command: str, args: BringupConfig) -> int:
    """`wmpo <command>` with its config: bring the graph up, run its episodes, bring it down."""
    from wmpo_core.robot_config import RobotConfigError, load_robot_config

    try:
        config = load_robot_config(args.robot)
    except RobotConfigError as exc:
        print(f"wmpo {command}: {exc}", file=sys.stderr)
        return 2
    if isinstance(args, RecordingConfig) and args.episodes < 1:
        print(f"wmpo {command}: --episodes must be at least 1", file=sys.stderr)
        return 2
    if isinstance(args, DeployConfig) and not (args.policy or args.learner):
        print(
            "wmpo deploy: give --policy, or --learner to run the learner's deployed version", file=sys.stderr
        )
        return 2
    if isinstance(args, DeployConfig) and args.policy:
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
        if not isinstance(args, RecordingConfig):
            return _robot(config, parameter_values(args), args.ros_domain)
        with RobotSession(**session_arguments(command, args)) as robot:
            if isinstance(args, TeleopConfig):
                metas = robot.teleop(
                    args.episodes,
                    device=args.teleop_device,
                    device_port=args.teleop_port or "",
                    device_id=args.teleop_id or "",
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
            if isinstance(args, DeployConfig) and args.learner:
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
        print(f"wmpo {command}: {exc}", file=sys.stderr)
        return 1
