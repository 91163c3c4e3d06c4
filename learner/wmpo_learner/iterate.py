"""`wmpo iterate`: one lifelong-learning round on the learner, from new real rollouts to a new policy.

    align the world model on the current policy's rollouts (failures included)
      -> retrain and re-threshold the reward model on every labelled episode
      -> imagination check: do imagined outcomes of real rollouts agree with the real ones?
      -> (`few_step=1`) certify a few-step sampler for the aligned world model on the same
         rollouts (`wmpo wm-few-step`); GRPO imagines with it if one matches the preset's sampler
      -> GRPO of the policy in imagination, from the rollouts' real first frames, with the
         collapse guard keeping the iterate whose greedy imagined success is best
      -> evaluate the new policy in the simulator (simulated arms only)
      -> the new version, whose manifest names its parent, the data, the world model and the reward model

Promotion: the round's policy is promoted (`round.json`: "promoted", "next_policy") only when the
guard's best iterate beats the parent's greedy imagined success *and* the imagination check's
balanced accuracy reaches `min_agreement`; otherwise the parent stays the policy to deploy and
the reason is written down. A round whose GRPO made no update says so. `--set calibrate_reward=1`
re-chooses the reward threshold on world-model replays of the aligned-on rollouts before the check
(GRPO then scores imagination with that threshold). `--set promote=always`
deploys every round's policy regardless (the robot-side rollback in `wmpo run` still applies).

Each stage is the function behind its own command (`wmpo align`, `wmpo reward`, `wmpo grpo`,
`wmpo eval`), called here with its config object, so a round can also be run, inspected or
repeated stage by stage. Stage outputs go
to sub-directories of `--out`; a stage whose output already exists is skipped (re-running a round
resumes it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from wmpo_core.cli_args import DEVICE_HELP, torch_device
from wmpo_core.config_cli import add_config_arguments, config_from_args, option

from wmpo_learner.grpo.algorithm import GRPOConfig
from wmpo_learner.grpo.run import GRPORunConfig, grpo
from wmpo_learner.imagination_check import ImaginationCheckConfig, imagination_check
from wmpo_learner.reward.cli import RewardConfig, train_reward
from wmpo_learner.sim_eval import EvalConfig, evaluate
from wmpo_learner.world_model.few_step import FewStepConfig, certified_sampler, certify_checkpoint
from wmpo_learner.world_model.train import AlignConfig, train_world_model

_PAPER_GRPO = GRPOConfig()


@dataclass(frozen=True)
class StageSizes:
    """Sizes of a round's stages (the `cpu` preset's values are the defaults). horizon 0 = the robot's
    episode limit; promote: 'evidence' (module docstring) or 'always'; calibrate_reward 1 = on;
    few_step 1 = certify a few-step sampler each round (off on `cpu`: with the tiny model's 4 Euler
    steps, certifying cost 144 s to save at most 30 s of GRPO, docs/world_model.md)."""

    align_steps: int = 300
    align_batch: int = 8
    align_vae_steps: int = 50
    reward_steps: int = 300
    grpo_iterations: int = 6
    group_size: int = 8
    groups_per_batch: int = 4
    minibatch: int = 16
    lr: float = 5e-5
    sampling_steps: int = 4
    max_resample_rounds: int = 2
    horizon: int = 0
    eval_episodes: int = 20
    guard_frames: int = 16
    min_agreement: float = 0.7
    promote: str = "evidence"
    calibrate_reward: int = 0
    few_step: int = 0


PRESETS: dict[str, StageSizes] = {
    # What a 2-core machine finishes in minutes with the tiny models.
    "cpu": StageSizes(),
    # The WMPO paper's settings (GRPO's are `GRPOConfig`'s defaults); needs GPUs.
    "paper": StageSizes(
        align_steps=5000,
        align_batch=128,
        align_vae_steps=0,
        reward_steps=3000,
        grpo_iterations=_PAPER_GRPO.iterations,
        group_size=_PAPER_GRPO.group_size,
        groups_per_batch=_PAPER_GRPO.groups_per_batch,
        minibatch=_PAPER_GRPO.minibatch_trajectories,
        lr=_PAPER_GRPO.lr,
        sampling_steps=30,
        max_resample_rounds=_PAPER_GRPO.max_resample_rounds,
        eval_episodes=128,
        guard_frames=64,
        min_agreement=0.8,
        few_step=1,
    ),
}


@dataclass
class IterateConfig:
    """`wmpo iterate`: one lifelong round; the stage sizes are a preset with `--set` overrides."""

    store: Path = option(help="the learner's episode store (demos + every round's rollouts)")
    policy: Path = option(help="the current policy checkpoint (the one that recorded the rollouts)")
    wm: Path = option(help="the current world-model checkpoint (pretrained or last round's)")
    out: Path = option(help="round directory: world_model/, reward_model/, policy/, eval.json, round.json")
    robot: str = option("so101_sim", "robot config name or YAML")
    reward: Path | None = option(None, "last round's reward model to continue from (None: train a new one)")
    policy_version: str | None = option(
        None, "align on the rollouts of this version (None: the policy's version)"
    )
    version: str | None = option(None, "version string of the new policy (None: derived from its weights)")
    preset: Literal["cpu", "paper"] = option("cpu", "stage sizes")
    overrides: list[str] = option(
        [],
        "override one stage size of the preset, e.g. --set grpo_iterations=10 --set eval_episodes=0 "
        f"(keys: {', '.join(f.name for f in dataclasses.fields(StageSizes))})",
        flag="--set",
        metavar="KEY=VALUE",
        repeat=True,
    )
    check_store: Path | None = option(
        None,
        "held-out real rollouts of the policy for the imagination check (None: --store, where the check "
        "falls back to episodes the models were trained on, and says so)",
    )
    seed: int = option(0, "seed of every stage")
    device: str = option("auto", DEVICE_HELP, type=torch_device)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.description = __doc__.split("\n\n")[0]
    add_config_arguments(parser, IterateConfig)


@dataclass
class Round:
    """The stages of one round and where each writes (so reports can find every artefact)."""

    out: Path
    stages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def world_model(self) -> Path:
        return self.out / "world_model"

    @property
    def reward_model(self) -> Path:
        return self.out / "reward_model"

    @property
    def policy(self) -> Path:
        return self.out / "policy"

    @property
    def eval_json(self) -> Path:
        return self.out / "eval.json"

    @property
    def check_json(self) -> Path:
        return self.out / "imagination_check.json"

    @property
    def few_step_json(self) -> Path:
        return self.out / "few_step.json"

    @property
    def calibrated_reward(self) -> Path:
        return self.out / "reward_model_imagined"


def stage_sizes(preset: str, overrides: list[str]) -> dict[str, Any]:
    """The preset's sizes with `KEY=VALUE` overrides, each checked against the preset's type."""
    sizes = dataclasses.asdict(PRESETS[preset])
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in sizes:
            raise ValueError(f"--set expects KEY=VALUE with KEY one of {sorted(sizes)}, got {item!r}")
        try:
            sizes[key] = type(sizes[key])(value)
        except ValueError:
            raise ValueError(f"--set {key}: expected a {type(sizes[key]).__name__}, got {value!r}") from None
    return sizes


def _stage(round_: Round, name: str, done: Path, stage: Callable[[Any], Any], config: Any) -> None:
    """Run one stage function on its config unless its output exists; raise on failure."""
    if done.exists():
        round_.stages.append({"stage": name, "skipped": True, "output": str(done)})
        print(f"[iterate] {name}: {done} exists, skipping")
        return
    print(f"[iterate] {name}: {config}", flush=True)
    t0 = time.time()
    result = stage(config)
    if isinstance(result, int) and result != 0:
        raise RuntimeError(f"stage '{name}' failed (exit status {result})")
    round_.stages.append({"stage": name, "seconds": round(time.time() - t0, 1), "output": str(done)})


def _few_step_stage(config: FewStepConfig) -> int:
    """Certification is an optimisation: when it cannot measure (e.g. the rollouts are all failures),
    the round goes on with the preset's sampler and `config.json` says why."""
    try:
        certify_checkpoint(config)
    except ValueError as exc:
        print(f"[iterate] few_step: nothing certified ({exc}); GRPO imagines with {config.reference}")
        config.json.write_text(json.dumps({"chosen": None, "why_not": str(exc)}, indent=2) + "\n")
    return 0


def _grpo_stage(config: GRPORunConfig) -> int:
    print(json.dumps(grpo(config), indent=2))
    return 0


def run_round(config: IterateConfig) -> dict[str, Any]:
    """The `iterate` stage: align, reward, check, GRPO, evaluate; writes and returns round.json."""
    from wmpo_core.robot_config import GymSimDriver, load_robot_config
    from wmpo_core.vla.checkpoint import read_manifest, update_provenance

    sizes = StageSizes(**stage_sizes(config.preset, config.overrides))
    robot = load_robot_config(config.robot)
    parent = read_manifest(config.policy)
    policy_version = config.policy_version or parent["version"]
    r = Round(config.out)
    config.out.mkdir(parents=True, exist_ok=True)

    interrupted = r.world_model.is_dir() and any(r.world_model.iterdir())  # an align stopped midway continues
    align = AlignConfig(
        store=config.store,
        init_from=config.wm,
        out=r.world_model,
        robot=config.robot,
        policy_version=policy_version,
        steps=sizes.align_steps,
        batch_size=sizes.align_batch,
        vae_steps=sizes.align_vae_steps,
        seed=config.seed,
        device=config.device,
        resume=interrupted,
    )
    _stage(r, "align", r.world_model / "world_model.json", train_world_model, align)
    reward = RewardConfig(
        store=config.store,
        robot=config.robot,
        out=r.reward_model,
        steps=sizes.reward_steps,
        seed=config.seed,
        init=str(config.reward) if config.reward is not None else None,
    )
    _stage(r, "reward", r.reward_model / "reward_model.json", train_reward, reward)
    check = ImaginationCheckConfig(
        store=config.check_store or config.store,
        wm=r.world_model,
        reward=r.reward_model,
        robot=config.robot,
        policy_version=policy_version,
        json=r.check_json,
        sampling_steps=sizes.sampling_steps,
        seed=config.seed,
        device="cuda" if config.device == "cuda" else "cpu",
        include_trained=config.check_store is None,
        calibrate_on=config.store if sizes.calibrate_reward else None,
        calibrated_reward=r.calibrated_reward if sizes.calibrate_reward else None,
    )
    _stage(r, "check", r.check_json, imagination_check, check)
    scorer = r.calibrated_reward if sizes.calibrate_reward else r.reward_model
    sampling_steps: int | None = sizes.sampling_steps
    if sizes.few_step:
        certification = FewStepConfig(
            wm=r.world_model,
            reward=scorer,
            store=check.store,
            policy_version=policy_version,
            include_trained=check.include_trained,
            reference=f"euler:{sizes.sampling_steps}",
            seeds=[config.seed],
            device=check.device,
            json=r.few_step_json,
        )
        _stage(r, "few_step", r.few_step_json, _few_step_stage, certification)
        if certified_sampler(r.world_model) is not None:
            sampling_steps = None  # GRPO and its guard imagine with the certified sampler
    grpo_config = GRPORunConfig(
        policy=config.policy,
        robot=config.robot,
        out=r.policy,
        env="imagination",
        wm=r.world_model,
        reward=scorer,
        store=config.store,
        horizon=sizes.horizon if sizes.horizon > 0 else None,
        sampling_steps=sampling_steps,
        guard_frames=sizes.guard_frames,
        seed=config.seed,
        device=config.device,
        version=config.version,
        algorithm=GRPOConfig(
            iterations=sizes.grpo_iterations,
            group_size=sizes.group_size,
            groups_per_batch=sizes.groups_per_batch,
            minibatch_trajectories=sizes.minibatch,
            lr=sizes.lr,
            max_resample_rounds=sizes.max_resample_rounds,
        ),
    )
    _stage(r, "grpo", r.policy / "manifest.json", _grpo_stage, grpo_config)
    update_provenance(
        r.policy,
        aligned_on={"store": str(config.store), "policy_version": policy_version},
        round=str(config.out),
    )

    if isinstance(robot.driver, GymSimDriver) and sizes.eval_episodes > 0:
        evaluation = EvalConfig(
            policy=str(r.policy), robot=config.robot, episodes=sizes.eval_episodes, json=r.eval_json
        )
        _stage(r, "eval", r.eval_json, evaluate, evaluation)
    manifest = read_manifest(r.policy)
    agreement = json.loads(r.check_json.read_text())["outcome_agreement"]
    grpo_summary = json.loads((r.policy / "training" / "grpo_summary.json").read_text())
    if sizes.promote not in ("evidence", "always"):
        raise ValueError(f"--set promote: expected 'evidence' or 'always', got {sizes.promote!r}")
    promoted, reason = promotion(grpo_summary, agreement, sizes.min_agreement)
    if sizes.promote == "always" and not promoted:
        promoted, reason = True, f"promote=always (the evidence alone would not have: {reason})"
    print(f"[iterate] {'promoted' if promoted else 'not promoted'}: {reason}", flush=True)
    summary = {
        "round": str(config.out),
        "parent_version": parent["version"],
        "version": manifest["version"],
        "promoted": promoted,
        "reason": reason,
        "next_policy": str(r.policy if promoted else config.policy),
        "grpo_updates": grpo_summary["updates"],
        "imagination_sampler": manifest["provenance"]["world_model_sampler"],
        "guard": grpo_summary["guard"],
        "check": {k: v for k, v in agreement.items() if k != "episode_ids"},
        "policy": str(r.policy),
        "world_model": str(r.world_model),
        "reward_model": str(r.reward_model),
        "aligned_on": policy_version,
        "preset": config.preset,
        "stages": r.stages,
        "eval": json.loads(r.eval_json.read_text())["success"] if r.eval_json.exists() else None,
    }
    (config.out / "round.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def promotion(grpo: dict[str, Any], check: dict[str, Any], min_agreement: float) -> tuple[bool, str]:
    """Whether the round's policy may replace its parent, and why (see the module docstring)."""
    if grpo["updates"] == 0:
        return (
            False,
            "GRPO made no update (every imagined group was all-success or all-failure): the weights are the "
            "parent's",
        )
    guard = grpo["guard"]
    if guard is None:
        return False, "no collapse guard ran, so nothing shows the greedy policy improved"
    if guard["best_iteration"] < 0 or guard["best_score"] <= guard["parent_score"]:
        return False, (
            f"no iterate beat the parent's greedy imagined success ({guard['parent_score']:.2f}); "
            "the guard kept the parent's weights"
        )
    agreement = check["balanced_accuracy"]
    if agreement is None or agreement < min_agreement:
        shown = "undefined (one outcome class missing)" if agreement is None else f"{agreement:.2f}"
        return False, f"imagination not trusted: outcome agreement {shown} < {min_agreement}"
    return True, (
        f"greedy imagined success {guard['parent_score']:.2f} -> {guard['best_score']:.2f} (iteration "
        f"{guard['best_iteration']}), outcome agreement {agreement:.2f} >= {min_agreement}"
    )


def run(args: argparse.Namespace) -> int:
    try:
        summary = run_round(config_from_args(IterateConfig, args))
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"wmpo iterate: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                k: summary[k]
                for k in ("parent_version", "version", "promoted", "reason", "next_policy", "eval")
            },
            indent=2,
        )
    )
    return 0
