"""Plain (no ROS) rollouts in the simulated arm: a `Policy` or the scripted expert, seed by seed.

Used by `wmpo eval`, by the real-env GRPO baseline and to record scripted demonstrations fast.
Each step does what the policy node does (with zero inference latency): build an `Observation`
from the arm's frames and state, ask the policy for a new chunk of K actions when
`refill_threshold` or fewer actions of the current one remain (the new chunk replaces them), pass
every action through the robot's `SafetyFilter`, execute it. Episodes end on the env's termination (success or
block out of bounds), at the robot config's time limit, or when the filter has nothing safe to
send (a non-finite first action: the real arm would hold, the simulator cannot, so the episode
ends as a failure).

Seeds: demonstrations and training rollouts use TRAIN seeds, evaluation uses EVAL seeds, and the
two ranges never overlap, so a policy is never evaluated on the initial states it was trained on.

    python -m wmpo_core.sim_rollout --robot so101_sim --store data/demos.zarr --episodes 100
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from wmpo_core.episode_store import EpisodeStore, EpisodeWriter
from wmpo_core.policy import Observation, Policy, load_policy
from wmpo_core.robot_config import RobotConfig, load_robot_config
from wmpo_core.safety import SafetyFilter
from wmpo_core.sim_env import SimArm

TRAIN_SEED_START = 0
EVAL_SEED_START = 1_000_000
"""Seeds [0, 1e6) are for demonstrations and training rollouts, [1e6, ...) for evaluation only."""
DEFAULT_REFILL_THRESHOLD = 1
"""The policy node's default `refill_threshold`: re-plan when one action of the chunk is left."""


def train_seeds(count: int, offset: int = 0) -> list[int]:
    """`count` consecutive training seeds starting at `offset` inside the training range."""
    if count < 0 or offset < 0 or TRAIN_SEED_START + offset + count > EVAL_SEED_START:
        raise ValueError(
            f"training seeds must stay in [{TRAIN_SEED_START}, {EVAL_SEED_START}); got offset {offset}, "
            f"count {count}"
        )
    return list(range(TRAIN_SEED_START + offset, TRAIN_SEED_START + offset + count))


def eval_seeds(count: int, offset: int = 0) -> list[int]:
    """`count` consecutive evaluation seeds (disjoint from every training seed)."""
    if count < 0 or offset < 0:
        raise ValueError(f"count and offset must be >= 0, got {count}, {offset}")
    return list(range(EVAL_SEED_START + offset, EVAL_SEED_START + offset + count))


@dataclass(frozen=True)
class EpisodeResult:
    seed: int
    success: bool
    num_steps: int
    safety_interventions: int = 0
    """Steps at which the safety filter changed (clamped, rate-limited or dropped) the action."""
    episode_id: str | None = None
    """Set when the episode was recorded into a store."""
    video: Path | None = None


def rollout(
    arm: SimArm,
    policy: Policy | None,
    seed: int,
    instruction: str | None = None,
    writer: EpisodeWriter | None = None,
    video_path: Path | None = None,
    max_steps: int | None = None,
    refill_threshold: int = DEFAULT_REFILL_THRESHOLD,
) -> EpisodeResult:
    """One episode from `seed`; `policy=None` runs the arm's scripted expert.

    `writer` (from `EpisodeStore.begin_episode`) receives every step and is committed with the
    env's success label; `video_path` gets an mp4 of the first camera.
    """
    config = arm.config
    instruction = instruction or config.tasks[0]
    max_steps = max_steps or config.max_episode_steps
    camera = config.cameras[0].name
    obs = arm.reset(seed=seed)
    if policy is not None:
        policy.reset()
    safety = SafetyFilter(config.action)
    safety.reset(obs.state if config.action.space == "joint_position" else None)
    interventions = 0
    frames = [obs.images[camera]] if video_path is not None else None
    chunk: list[np.ndarray] = []
    t0 = time.time()
    steps = 0
    while steps < max_steps:
        if policy is None:
            action = arm.expert_action()
        else:
            if len(chunk) <= refill_threshold:
                stamp = t0 + steps * config.control_period_s
                predicted = np.asarray(
                    policy.predict_chunk(Observation(obs.images, obs.state, instruction, stamp))
                )
                if predicted.ndim != 2 or predicted.shape[1] != config.action.dim or len(predicted) == 0:
                    raise ValueError(
                        f"policy returned actions of shape {predicted.shape}, expected (K, "
                        f"{config.action.dim})"
                    )
                chunk = list(predicted)
            action = chunk.pop(0)
        action, events = safety.filter(action)
        interventions += int(events.modified)
        if action is None:
            break
        stamp = t0 + steps * config.control_period_s
        if writer is not None:
            writer.append(obs.images, obs.state, action, time=stamp)
        obs = arm.step(action)
        steps += 1
        if frames is not None:
            frames.append(obs.images[camera])
        if obs.terminated or obs.truncated:
            break
    episode_id = None
    if writer is not None and steps == 0:
        writer.discard()
    elif writer is not None:
        episode_id = writer.commit(success=obs.success, success_labeled_by="env").episode_id
    if video_path is not None:
        write_video(video_path, frames, fps=config.control_rate_hz)
    return EpisodeResult(seed, obs.success, steps, interventions, episode_id, video_path)


def run_episodes(
    robot_config: RobotConfig,
    policy: Policy | None,
    seeds: Iterable[int],
    store: EpisodeStore | None = None,
    video_dir: Path | None = None,
    instruction: str | None = None,
    progress: bool = True,
    desc: str | None = None,
    refill_threshold: int = DEFAULT_REFILL_THRESHOLD,
) -> list[EpisodeResult]:
    """Episodes for every seed (policy=None: the scripted expert), optionally recorded and filmed."""
    seeds = list(seeds)
    instruction = instruction or robot_config.tasks[0]
    if video_dir is not None:
        video_dir.mkdir(parents=True, exist_ok=True)
    arm = SimArm(robot_config)
    results: list[EpisodeResult] = []
    try:
        bar = tqdm(
            seeds, desc=desc or ("expert" if policy is None else "policy"), unit="ep", disable=not progress
        )
        for seed in bar:
            writer = None
            if store is not None:
                writer = store.begin_episode(
                    robot_config,
                    source="scripted" if policy is None else "policy",
                    task=instruction,
                    policy_version=None if policy is None else policy.version,
                    env_seed=seed,
                )
            try:
                result = rollout(
                    arm,
                    policy,
                    seed,
                    instruction,
                    writer=writer,
                    video_path=video_dir / f"seed{seed}.mp4" if video_dir is not None else None,
                    refill_threshold=refill_threshold,
                )
            except BaseException:
                if writer is not None:
                    writer.discard()
                raise
            if result.video is not None:
                named = result.video.with_name(f"seed{seed}_{'success' if result.success else 'failure'}.mp4")
                result.video.replace(named)
                result = dataclasses.replace(result, video=named)
            results.append(result)
            bar.set_postfix(success=f"{sum(r.success for r in results)}/{len(results)}")
    finally:
        arm.close()
    return results


_worker: dict = {}
"""Per-process state of `run_episodes_parallel`'s workers: the arm, the policy, the options."""


def _start_worker(
    robot_config: RobotConfig, make_policy: Callable[[RobotConfig], Policy | None], options: dict
) -> None:
    os.environ.setdefault("LP_NUM_THREADS", "1")  # one core per worker for Mesa's rasteriser too
    import torch  # the policy's; one intra-op thread per worker, the workers are the parallelism

    torch.set_num_threads(1)
    _worker.update(arm=SimArm(robot_config), policy=make_policy(robot_config), **options)


def _worker_episode(seed: int) -> EpisodeResult:
    video_dir = _worker["video_dir"]
    result = rollout(
        _worker["arm"],
        _worker["policy"],
        seed,
        _worker["instruction"],
        video_path=video_dir / f"seed{seed}.mp4" if video_dir is not None else None,
        refill_threshold=_worker["refill_threshold"],
    )
    if result.video is not None:
        named = result.video.with_name(f"seed{seed}_{'success' if result.success else 'failure'}.mp4")
        result.video.replace(named)
        result = dataclasses.replace(result, video=named)
    return result


def run_episodes_parallel(
    robot_config: RobotConfig,
    make_policy: Callable[[RobotConfig], Policy | None],
    seeds: Iterable[int],
    workers: int,
    video_dir: Path | None = None,
    instruction: str | None = None,
    progress: bool = True,
    desc: str | None = None,
    refill_threshold: int = DEFAULT_REFILL_THRESHOLD,
) -> list[EpisodeResult]:
    """`run_episodes` (not recorded) over `workers` processes, each with its own arm and policy.

    Episodes are independent, and a CPU machine's time goes to rendering and small-batch
    inference that use one core each, so processes scale where threads would not.
    `make_policy(robot_config)` runs in every worker (it must be picklable: a module-level function
    or a `functools.partial` of one); it returns None for the scripted expert. Results come back
    in the order of `seeds`, identical to a sequential run with the same policy.
    """
    seeds = list(seeds)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if video_dir is not None:
        video_dir.mkdir(parents=True, exist_ok=True)
    options = {
        "video_dir": video_dir,
        "instruction": instruction or robot_config.tasks[0],
        "refill_threshold": refill_threshold,
    }
    context = multiprocessing.get_context("spawn")  # no forked copies of GL contexts or torch thread pools
    results: dict[int, EpisodeResult] = {}
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker, initargs=(robot_config, make_policy, options)
    ) as pool:
        futures = {pool.submit(_worker_episode, seed): seed for seed in seeds}
        bar = tqdm(
            as_completed(futures), total=len(seeds), desc=desc or "episodes", unit="ep", disable=not progress
        )
        for future in bar:
            results[futures[future]] = future.result()
            bar.set_postfix(success=f"{sum(r.success for r in results.values())}/{len(results)}")
    return [results[seed] for seed in seeds]


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float) -> None:
    """RGB frames -> mp4 (OpenCV's bundled FFmpeg, 'mp4v')."""
    if not frames:
        raise ValueError("no frames to write")
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cannot open a video writer for {path}")
    try:
        for frame in frames:
            frame = frame if frame.shape[-1] == 3 else np.repeat(frame, 3, axis=-1)
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(
        prog="python -m wmpo_core.sim_rollout",
        description="Record simulated episodes (scripted expert demonstrations by default) into an episode "
        "store, without ROS.",
    )
    parser.add_argument("--robot", default="so101_sim", help="robot config name or YAML path (a gym_sim arm)")
    parser.add_argument(
        "--store", type=Path, required=True, help="episode store to append to (created if missing)"
    )
    parser.add_argument("--episodes", type=int, default=50, help="number of episodes")
    parser.add_argument(
        "--policy",
        default="expert",
        help="'expert' (the scripted expert, source=scripted) or a policy checkpoint (source=policy)",
    )
    parser.add_argument(
        "--seed-offset", type=int, default=0, help="first seed = TRAIN_SEED_START + offset (training range)"
    )
    parser.add_argument(
        "--videos", type=Path, default=None, help="also save an mp4 per episode into this directory"
    )
    parser.add_argument(
        "--refill-threshold",
        type=int,
        default=DEFAULT_REFILL_THRESHOLD,
        help="policy only: request the next chunk when this many actions remain (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")
    config = load_robot_config(args.robot)
    policy = None if args.policy == "expert" else load_policy(args.policy, config)
    with EpisodeStore.open(args.store, mode="a") as store:
        results = run_episodes(
            config,
            policy,
            train_seeds(args.episodes, args.seed_offset),
            store=store,
            video_dir=args.videos,
            refill_threshold=args.refill_threshold,
        )
    successes = sum(r.success for r in results)
    print(
        f"recorded {len(results)} episodes into {args.store}: {successes} successful, "
        f"mean length {np.mean([r.num_steps for r in results]):.1f} steps"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
