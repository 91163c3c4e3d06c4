"""`wmpo run`: the whole lifelong-learning loop on one machine, robot and learner side by side.

    learner service (child process, loopback, token auth)
    robot graph (sim arm or real arm, policy node, recorder, sync node) over real ROS 2
      1. seed demonstrations with teleop (the scripted expert in simulation)
      2. the sync node streams them to the learner          -> learner store
      3. SFT of the VLA on the demos                          -> policy v1, published and deployed
      4. the robot loads v1 and records P rollouts            -> streamed to the learner
      5. pretrain the world model on the demos (on CPU it runs in a child process beside 3 and 4)
      then, per round:
      6. `wmpo iterate`: align the world model on those rollouts, retrain the reward model,
         GRPO in imagination                                   -> policy v(k+1), published and deployed
      7. if the round promoted v(k+1) (it beat its parent in imagination, and imagination agreed with
         reality on held-out rollouts), the robot hot-swaps to it at an episode boundary and records
         P rollouts with it: its success rate is the round's evaluation, and the rollouts feed the
         next round. When those rollouts are significantly below the parent's (one-sided
         two-proportion z-test, p < 0.05), the job rolls back to the parent. A round that promoted
         nothing says why in the report, and the robot records P more rollouts of its policy.
    report: success per version with Wilson intervals, a plot, real-vs-imagined videos

While the learner trains, the robot's graph pauses (`RobotSession.paused`): on one machine the
idle graph would otherwise take a quarter of a core from training.

Everything lands under --out: the robot's and the learner's stores, the registry, each stage's
checkpoints, logs (logs/: the stages in child processes) and the report. Re-running with the same
--out resumes: finished stages are skipped (each stage is the function behind a `wmpo` command,
given its config object; it writes its output last).

Nothing outlives the job or leaks into another: the learner service child dies with it, however
it dies (kill -9 included), and a resume ends a service an earlier job left behind
(`wmpo_learner.service.local`); a simulated robot graph runs in a DDS domain of its own with
localhost-only discovery (`--ros-domain`, `wmpo_ros.isolation`), so two jobs on one host never
see each other's topics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from wmpo_core.cli_args import DEVICE_HELP, torch_device
from wmpo_core.config_cli import add_config_arguments, config_from_args, option
from wmpo_core.devices import choose_device
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.robot_config import GymSimDriver, load_robot_config
from wmpo_core.vla.checkpoint import read_manifest
from wmpo_learner.iterate import IterateConfig, run_round, stage_sizes
from wmpo_learner.report import VersionResult, real_vs_imagined_video, write_report
from wmpo_learner.service.local import LocalService
from wmpo_learner.sft import SFTConfig, train_sft
from wmpo_learner.stats import one_sided_worse_p_value
from wmpo_learner.world_model.train import WorldModelTrainConfig, train_world_model
from wmpo_ros.bringup import ROS_DOMAIN_HELP, domain_argument
from wmpo_ros.learner_client import LearnerClient
from wmpo_ros.session import RobotSession

from wmpo_loop.child_stage import ChildStage

# Sizes for one machine. "cpu": tiny models a 2-core machine runs in minutes (a demonstration of
# the loop, not of the paper's numbers); "gpu": the realistic VLA and world-model sizes.
SIZES: dict[str, dict[str, Any]] = {
    "cpu": {
        "demos": 120,
        "rollouts": 16,
        "vla_recipe": "tiny",
        "sft_steps": 2000,
        "wm_preset": "tiny",
        "wm_steps": 1500,
        "wm_vae_steps": 300,
        "iterate_preset": "cpu",
    },
    "gpu": {
        "demos": 100,
        "rollouts": 128,
        "vla_recipe": "realistic",
        "sft_steps": 0,
        "wm_preset": "xl",
        "wm_steps": 0,
        "wm_vae_steps": 0,
        "iterate_preset": "paper",
    },
}
"""0 steps = the recipe's or preset's own number. The cpu demos/SFT steps are those of the measured
base policy in docs/vla.md (22% success on so101_sim_near); with 40 demos and 1500 steps the base
rarely succeeds, and GRPO has no informative groups to learn from."""
ITERATE_SETS: dict[str, list[str]] = {"cpu": ["horizon=48", "grpo_iterations=3"], "gpu": []}
ROLLBACK_P = 0.05
"""A promoted version whose real rollouts are below its parent's with one-sided p < this is rolled back."""
"""`wmpo iterate` overrides per size: on CPU, imagine 48 steps (the expert needs ~37) and run 3
GRPO iterations, which keeps a round near 6 minutes on 2 cores (docs/wmpo.md). `--set` items come
after these."""


@dataclass
class MainJobConfig:
    """`wmpo run`: the whole loop on one machine; sizes by `--size`, each overridable."""

    out: Path | None = option(
        None, "run folder for stores, checkpoints, logs and report.md (default: runs/<date-time>)"
    )
    robot: str = option(
        "so101_sim_near", "robot config name or YAML (so101_sim_near: the CPU-scale SO-101 sim)"
    )
    rounds: int = option(2, "lifelong rounds after the SFT policy")
    size: Literal["cpu", "gpu"] = option("cpu", "model and data sizes")
    demos: int | None = option(None, "teleop demonstrations to seed with (default: by --size)")
    rollouts: int | None = option(None, "P: robot episodes per policy version (default: by --size)")
    teleop_device: str = option(
        "auto",
        "teleop device for the demos: auto (the scripted expert in sim), keyboard, gamepad, so101_leader",
    )
    learner: str | None = option(
        None,
        "use this running learner service instead of starting one (token: WMPO_LEARNER_TOKEN)",
        metavar="URL",
    )
    ros_domain: int | str | None = option(None, ROS_DOMAIN_HELP, type=domain_argument, metavar="auto|env|ID")
    device: str = option("auto", DEVICE_HELP, type=torch_device)
    seed: int = option(0, "seed of the scene sequence and of every stage")
    overrides: list[str] = option(
        [],
        "override one size, e.g. --set sft_steps=500; keys: "
        f"{', '.join(SIZES['cpu'])}, and every `wmpo iterate` stage size (passed on to each round)",
        flag="--set",
        repeat=True,
        metavar="KEY=VALUE",
    )


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.epilog = "Example: wmpo run --out runs/first --rounds 2"
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_config_arguments(parser, MainJobConfig)


@dataclass(frozen=True)
class RunPaths:
    """Where everything of one run lives; also the resume contract (a stage is done when its output
    exists)."""

    root: Path

    @property
    def robot_store(self) -> Path:
        return self.root / "robot" / "episodes.zarr"

    @property
    def learner(self) -> Path:
        return self.root / "learner"

    @property
    def sft(self) -> Path:
        return self.root / "policies" / "sft"

    @property
    def world_model(self) -> Path:
        return self.root / "world_model" / "pretrained"

    def round(self, k: int) -> Path:
        return self.root / "rounds" / f"round_{k}"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def report(self) -> Path:
        return self.root / "report"


def sizes_for(config: MainJobConfig) -> tuple[dict[str, Any], list[str]]:
    """This job's sizes, and the `--set` items meant for `wmpo iterate` (checked there too)."""
    sizes = dict(SIZES[config.size])
    if config.demos is not None:
        sizes["demos"] = config.demos
    if config.rollouts is not None:
        sizes["rollouts"] = config.rollouts
    iterate_items = list(ITERATE_SETS[config.size])
    for item in config.overrides:
        key, sep, value = item.partition("=")
        if sep and key in sizes:
            try:
                sizes[key] = type(sizes[key])(value)
            except ValueError:
                raise ValueError(
                    f"--set {key}: expected a {type(sizes[key]).__name__}, got {value!r}"
                ) from None
        else:
            iterate_items.append(item)
    stage_sizes(
        sizes["iterate_preset"], iterate_items
    )  # fails now, naming the key, rather than after an hour
    for key in ("demos", "rollouts"):
        if sizes[key] < 1:
            raise ValueError(f"{key} must be at least 1, got {sizes[key]}")
    return sizes, iterate_items


class Progress:
    """One line per stage with its number and wall time; the stages' own tqdm bars show within."""

    def __init__(self, total: int):
        self.total, self.done, self.t0 = total, 0, time.monotonic()
        self.timings: dict[str, float] = {}

    def stage(self, name: str):
        progress = self

        class _Stage:
            def __enter__(self):
                progress.done += 1
                self.start = time.monotonic()
                print(
                    f"\n=== [{progress.done}/{progress.total}] {name} (run time {progress.elapsed()}) ===",
                    flush=True,
                )

            def __exit__(self, exc_type, exc, tb):
                seconds = time.monotonic() - self.start
                progress.timings[name] = round(seconds, 1)
                if exc_type is None:
                    print(f"=== {name}: done in {seconds / 60:.1f} min ===", flush=True)

        return _Stage()

    def elapsed(self) -> str:
        s = int(time.monotonic() - self.t0)
        return f"{s // 60}:{s % 60:02d}"


def stage(name: str, code: int) -> None:
    """A stage function's exit status; non-zero ends the run with the stage named."""
    if code != 0:
        raise RuntimeError(f"`wmpo {name}` failed (exit {code}); its output is above")


def publish_and_deploy(client, checkpoint: Path, reason: str) -> str:
    """Publish a checkpoint under its own version (idempotent on resume) and mark it deployed."""
    version = read_manifest(checkpoint)["version"]
    if version not in {v.version for v in client.list_versions()}:
        client.publish_version(checkpoint, version)
    if client.deployment().version != version:
        client.deploy(version, reason=reason)
    return version


def wait_for_learner_episodes(store_path: Path, count: int, timeout_s: float, **select: Any) -> list[str]:
    """Until the learner's store holds `count` episodes matching `select` (they arrive through the
    robot's outbox); returns their ids."""
    deadline = time.monotonic() + timeout_s
    while True:
        ids = (
            [m.episode_id for m in EpisodeStore.open(store_path).select(**select)]
            if (store_path / "zarr.json").exists()
            else []
        )
        if len(ids) >= count or time.monotonic() > deadline:
            if len(ids) < count:
                raise RuntimeError(
                    f"only {len(ids)} of {count} episodes ({select}) reached the learner in {timeout_s:.0f} s"
                )
            return ids
        time.sleep(1.0)


def run_loop(config: MainJobConfig) -> Path:
    sizes, iterate_sets = sizes_for(config)
    robot = load_robot_config(config.robot)
    sim = isinstance(robot.driver, GymSimDriver)
    paths = RunPaths(config.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    paths.root.mkdir(parents=True, exist_ok=True)
    (paths.root / "run.json").write_text(
        json.dumps({"robot": robot.name, "rounds": config.rounds, "sizes": sizes, "argv": sys.argv}, indent=2)
        + "\n"
    )
    print(
        f"wmpo run: {robot.name}, {config.rounds} round(s), sizes '{config.size}' {sizes}\n"
        f"  everything goes to {paths.root}"
    )
    progress = Progress(total=6 + 2 * config.rounds)
    results: list[VersionResult] = []
    notes: list[str] = []

    service = None if config.learner else LocalService(paths.learner, robot=config.robot).start()
    url = config.learner or service.url
    token_file = None if config.learner else service.token_file
    learner_store = paths.learner / "learner.zarr" if service else None
    try:
        with (
            LearnerClient.from_env(url, token_file=token_file) as client,
            RobotSession(
                robot=config.robot,
                store=paths.robot_store,
                learner_url=url,
                token_file=token_file,
                seed=config.seed,
                ros_domain=config.ros_domain,
            ) as robot_side,
        ):
            with progress.stage(f"seed {sizes['demos']} demonstrations by teleop ({config.teleop_device})"):
                have = robot_side.count_episodes(source={"teleop", "scripted"})
                if have < sizes["demos"]:
                    robot_side.teleop(sizes["demos"] - have, device=config.teleop_device)
            with progress.stage("stream the demonstrations to the learner"):
                robot_side.wait_uploaded(timeout_s=600)
                if learner_store is not None:
                    wait_for_learner_episodes(
                        learner_store, sizes["demos"], 600, source=["teleop", "scripted"]
                    )
            if learner_store is None:
                raise RuntimeError(
                    "--learner: training against a remote learner's store is not supported by `wmpo run`; "
                    "run the learner jobs there"
                )
            sft_config = SFTConfig(
                store=learner_store,
                robot=config.robot,
                config=sizes["vla_recipe"],
                out=paths.sft,
                steps=sizes["sft_steps"] or None,
                seed=config.seed,
                device=config.device,
            )
            wm_config = WorldModelTrainConfig(
                store=learner_store,
                robot=config.robot,
                config=sizes["wm_preset"],
                out=paths.world_model,
                source="any",
                steps=sizes["wm_steps"] or None,
                vae_steps=sizes["wm_vae_steps"] or None,
                seed=config.seed,
                device=config.device,
            )
            sft_done = (paths.sft / "manifest.json").exists()
            world_model_done = (paths.world_model / "world_model.json").exists()
            # On CPU the two pretrainings share the cores in two processes (`wmpo_loop.child_stage`).
            side_by_side = (
                not sft_done and not world_model_done and choose_device(config.device).type == "cpu"
            )
            pretraining = None
            with progress.stage("SFT of the VLA on the demonstrations"):
                # The robot idles until the SFT policy exists: its graph pauses so training gets the cores.
                with robot_side.paused():
                    if side_by_side:
                        pretraining = ChildStage(
                            "world-model pretraining",
                            train_world_model,
                            wm_config,
                            paths.logs / "wm-train.log",
                            1,
                        )
                        stage(
                            "sft",
                            ChildStage("SFT", train_sft, sft_config, paths.logs / "sft.log", 1).result(),
                        )
                    elif not sft_done:
                        stage("sft", train_sft(sft_config))
                current = paths.sft
                version = publish_and_deploy(client, current, "SFT on the seed demonstrations")
            with progress.stage(f"the robot loads {version} and records {sizes['rollouts']} rollouts"):
                results.append(rollouts(robot_side, learner_store, version, sizes["rollouts"], "SFT"))
            # The robot idles again until the world model is done (the side-by-side child included).
            with progress.stage("pretrain the world model on the demonstrations"), robot_side.paused():
                if pretraining is not None:
                    stage("wm-train", pretraining.result())
                elif not world_model_done:
                    stage("wm-train", train_world_model(wm_config))
                world_model = paths.world_model
            reward = None
            for k in range(1, config.rounds + 1):
                out = paths.round(k)
                with (
                    progress.stage(f"round {k}: align, reward model, GRPO in imagination (wmpo iterate)"),
                    robot_side.paused(),
                ):
                    run_round(
                        IterateConfig(
                            store=learner_store,
                            robot=config.robot,
                            policy=current,
                            wm=world_model,
                            out=out,
                            preset=sizes["iterate_preset"],
                            overrides=["eval_episodes=0", *iterate_sets],
                            seed=config.seed + k,
                            device=config.device,
                            reward=reward,
                        )
                    )
                    world_model, reward = out / "world_model", out / "reward_model"
                    summary = json.loads((out / "round.json").read_text())
                    parent, parent_version = current, version
                    if summary["promoted"]:
                        current = out / "policy"
                        version = publish_and_deploy(client, current, f"WMPO round {k}")
                    notes.append(
                        f"round {k}: {'promoted' if summary['promoted'] else 'not promoted'}: "
                        f"{summary['reason']}"
                    )
                if summary["promoted"]:
                    with progress.stage(
                        f"round {k}: the robot hot-swaps to {version} and records {sizes['rollouts']} "
                        "rollouts"
                    ):
                        results.append(
                            rollouts(robot_side, learner_store, version, sizes["rollouts"], f"round {k}")
                        )
                    measured = merged(results, parent_version)
                    p_worse = one_sided_worse_p_value(
                        results[-1].successes, results[-1].trials, measured.successes, measured.trials
                    )
                    if p_worse < ROLLBACK_P:
                        current, version = (
                            parent,
                            publish_and_deploy(
                                client,
                                parent,
                                f"rollback: {version} is below {parent_version} (one-sided p = "
                                f"{p_worse:.3f})",
                            ),
                        )
                        notes.append(
                            f"round {k}: rolled back to {parent_version}: "
                            f"{results[-1].successes}/{results[-1].trials} vs "
                            f"{measured.successes}/{measured.trials}, one-sided two-proportion z-test p = "
                            f"{p_worse:.3f} < {ROLLBACK_P}"
                        )
                else:
                    # No new version: the robot keeps its policy and records more of its rollouts for the
                    # next round.
                    with progress.stage(
                        f"round {k}: {version} kept; the robot records {sizes['rollouts']} more rollouts"
                    ):
                        results.append(
                            rollouts(
                                robot_side,
                                learner_store,
                                version,
                                sizes["rollouts"],
                                f"round {k} ({version} kept)",
                                already=sum(r.trials for r in results if r.version == version),
                            )
                        )

        with progress.stage("report"):
            videos = []
            for m in _episodes(learner_store, results[-1].version)[:2]:
                videos.append(
                    real_vs_imagined_video(
                        world_model,
                        learner_store,
                        m.episode_id,
                        paths.report / "videos" / f"{m.episode_id}.mp4",
                    )
                )
            report = write_report(
                paths.report,
                f"wmpo run on {robot.name} ({config.size} sizes, P={sizes['rollouts']} per version)",
                results,
                {
                    "robot": robot.name,
                    "sim": sim,
                    "sizes": sizes,
                    "stage_seconds": progress.timings,
                    "run_folder": str(paths.root),
                },
                videos,
                notes=notes,
            )
    finally:
        if service is not None:
            service.stop()
    print(f"\nwmpo run: finished in {progress.elapsed()}; report: {report}")
    return report


def _episodes(store_path: Path, version: str):
    return EpisodeStore.open(store_path).select(source="policy", policy_version=version)


def rollouts(robot_side, learner_store: Path, version: str, count: int, label: str, already: int = 0):
    """Have the robot run `count` new episodes with `version` (recorded and streamed) after the
    `already` that earlier stages measured, then score just those `count`."""
    robot_side.wait_for_version(version, timeout_s=600)
    want = already + count
    have = len(_episodes(learner_store, version))
    if have < want:
        robot_side.run_episodes(want - have)
        robot_side.wait_uploaded(timeout_s=600)
    wait_for_learner_episodes(learner_store, want, 600, source="policy", policy_version=version)
    metas = _episodes(learner_store, version)[already:want]
    return VersionResult(label, version, sum(bool(m.success) for m in metas), len(metas))


def merged(results, version: str):
    """Every measured episode of `version` so far, as one result."""
    mine = [r for r in results if r.version == version]
    return VersionResult(version, version, sum(r.successes for r in mine), sum(r.trials for r in mine))


def run(args: argparse.Namespace) -> int:
    try:
        run_loop(config_from_args(MainJobConfig, args))
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"wmpo run: {exc}", file=sys.stderr)
        return 1
    return 0
