"""`wmpo iterate`: one lifelong-learning round on the learner, from new real rollouts to a new policy.

    align the world model on the current policy's rollouts (failures included)
      -> retrain and re-threshold the reward model on every labelled episode
      -> imagination check: do imagined outcomes of real rollouts agree with the real ones?
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

Each stage runs the same code as its own command (`wmpo align`, `wmpo reward`, `wmpo grpo`,
`wmpo eval`), so a round can also be run, inspected or repeated stage by stage. Stage outputs go
to sub-directories of `--out`; a stage whose output already exists is skipped (re-running a round
resumes it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wmpo_core.cli_args import add_device_argument

# Sizes of the stages. "cpu" is what a 2-core machine finishes in minutes with the tiny models;
# "paper" follows the WMPO paper's settings and needs GPUs. horizon 0 = the robot's episode limit.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "align_steps": 300,
        "align_batch": 8,
        "align_vae_steps": 50,
        "reward_steps": 300,
        "grpo_iterations": 6,
        "group_size": 8,
        "groups_per_batch": 4,
        "minibatch": 16,
        "lr": 5e-5,
        "sampling_steps": 4,
        "max_resample_rounds": 2,
        "horizon": 0,
        "eval_episodes": 20,
        "guard_frames": 16,
        "min_agreement": 0.7,
        "promote": "evidence",
        "calibrate_reward": 0,
    },
    "paper": {
        "align_steps": 5000,
        "align_batch": 128,
        "align_vae_steps": 0,
        "reward_steps": 3000,
        "grpo_iterations": 100,
        "group_size": 8,
        "groups_per_batch": 64,
        "minibatch": 128,
        "lr": 5e-6,
        "sampling_steps": 30,
        "max_resample_rounds": 8,
        "horizon": 0,
        "eval_episodes": 128,
        "guard_frames": 64,
        "min_agreement": 0.8,
        "promote": "evidence",
        "calibrate_reward": 0,
    },
}


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument(
        "--store",
        type=Path,
        required=True,
        help="the learner's episode store (demos + every round's rollouts)",
    )
    parser.add_argument("--robot", default="so101_sim", help="robot config name or YAML (default: so101_sim)")
    parser.add_argument(
        "--policy",
        type=Path,
        required=True,
        help="the current policy checkpoint (the one that recorded the rollouts)",
    )
    parser.add_argument(
        "--wm",
        type=Path,
        required=True,
        help="the current world-model checkpoint (pretrained or last round's)",
    )
    parser.add_argument(
        "--reward",
        type=Path,
        default=None,
        help="last round's reward model to continue from (default: train a new one)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="round directory: world_model/, reward_model/, policy/, eval.json, round.json",
    )
    parser.add_argument(
        "--policy-version",
        default=None,
        help="align on the rollouts of this version (default: the policy's version)",
    )
    parser.add_argument(
        "--version", default=None, help="version string of the new policy (default: derived from its weights)"
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="stage sizes (default: cpu)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one stage size of the preset, e.g. --set grpo_iterations=10 --set eval_episodes=0 "
        f"(keys: {', '.join(PRESETS['cpu'])})",
    )
    parser.add_argument(
        "--check-store",
        type=Path,
        default=None,
        help="held-out real rollouts of the policy for the imagination check (default: --store, "
        "where the check falls back to episodes the models were trained on, and says so)",
    )
    parser.add_argument("--seed", type=int, default=0)
    add_device_argument(parser)


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
    def calibrated_reward(self) -> Path:
        return self.out / "reward_model_imagined"


def stage_sizes(preset: str, overrides: list[str]) -> dict[str, Any]:
    sizes = dict(PRESETS[preset])
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in sizes:
            raise ValueError(f"--set expects KEY=VALUE with KEY one of {sorted(sizes)}, got {item!r}")
        try:
            sizes[key] = type(sizes[key])(value)
        except ValueError:
            raise ValueError(f"--set {key}: expected a {type(sizes[key]).__name__}, got {value!r}") from None
    return sizes


def _stage(round_: Round, name: str, done: Path, argv: list[str]) -> None:
    """Run one `wmpo` command in-process unless its output exists; raise on failure."""
    from wmpo_core.cli import main

    if done.exists():
        round_.stages.append({"stage": name, "skipped": True, "output": str(done)})
        print(f"[iterate] {name}: {done} exists, skipping")
        return
    print(f"[iterate] {name}: wmpo {' '.join(argv)}", flush=True)
    t0 = time.time()
    code = main(argv)
    if code != 0:
        raise RuntimeError(f"stage '{name}' failed (wmpo {argv[0]} exited with {code})")
    round_.stages.append({"stage": name, "seconds": round(time.time() - t0, 1), "output": str(done)})


def run_round(args: argparse.Namespace) -> dict[str, Any]:
    from wmpo_core.robot_config import GymSimDriver, load_robot_config
    from wmpo_core.vla.checkpoint import read_manifest, update_provenance

    sizes = stage_sizes(args.preset, args.set)
    robot = load_robot_config(args.robot)
    parent = read_manifest(args.policy)
    policy_version = args.policy_version or parent["version"]
    r = Round(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    device = ["--device", args.device]

    interrupted = r.world_model.is_dir() and any(r.world_model.iterdir())  # an align stopped midway continues
    _stage(
        r,
        "align",
        r.world_model / "world_model.json",
        [
            "align",
            "--store",
            str(args.store),
            "--from",
            str(args.wm),
            "--out",
            str(r.world_model),
            "--robot",
            args.robot,
            "--policy-version",
            policy_version,
            "--steps",
            str(sizes["align_steps"]),
            "--batch-size",
            str(sizes["align_batch"]),
            "--vae-steps",
            str(sizes["align_vae_steps"]),
            "--seed",
            str(args.seed),
            *device,
            *(["--resume"] if interrupted else []),
        ],
    )
    reward_argv = [
        "reward",
        "--store",
        str(args.store),
        "--robot",
        args.robot,
        "--out",
        str(r.reward_model),
        "--steps",
        str(sizes["reward_steps"]),
        "--seed",
        str(args.seed),
    ]
    if args.reward is not None:
        reward_argv += ["--from", str(args.reward)]
    _stage(r, "reward", r.reward_model / "reward_model.json", reward_argv)
    check_argv = [
        "imagination-check",
        "--store",
        str(args.check_store or args.store),
        "--wm",
        str(r.world_model),
        "--reward",
        str(r.reward_model),
        "--robot",
        args.robot,
        "--policy-version",
        policy_version,
        "--json",
        str(r.check_json),
        "--sampling-steps",
        str(sizes["sampling_steps"]),
        "--seed",
        str(args.seed),
        "--device",
        "cuda" if args.device == "cuda" else "cpu",
    ]
    if args.check_store is None:
        check_argv.append("--include-trained")
    if sizes["calibrate_reward"]:
        check_argv += ["--calibrate-on", str(args.store), "--calibrated-reward", str(r.calibrated_reward)]
    _stage(r, "check", r.check_json, check_argv)
    grpo_reward = r.calibrated_reward if sizes["calibrate_reward"] else r.reward_model
    grpo_argv = [
        "grpo",
        "--policy",
        str(args.policy),
        "--robot",
        args.robot,
        "--out",
        str(r.policy),
        "--env",
        "imagination",
        "--wm",
        str(r.world_model),
        "--reward",
        str(grpo_reward),
        "--store",
        str(args.store),
        "--iterations",
        str(sizes["grpo_iterations"]),
        "--group-size",
        str(sizes["group_size"]),
        "--groups-per-batch",
        str(sizes["groups_per_batch"]),
        "--minibatch",
        str(sizes["minibatch"]),
        "--lr",
        str(sizes["lr"]),
        "--sampling-steps",
        str(sizes["sampling_steps"]),
        "--max-resample-rounds",
        str(sizes["max_resample_rounds"]),
        "--guard-frames",
        str(sizes["guard_frames"]),
        "--seed",
        str(args.seed),
        *device,
    ]
    if sizes["horizon"] > 0:
        grpo_argv += ["--horizon", str(sizes["horizon"])]
    if args.version:
        grpo_argv += ["--version", args.version]
    _stage(r, "grpo", r.policy / "manifest.json", grpo_argv)
    update_provenance(
        r.policy, aligned_on={"store": str(args.store), "policy_version": policy_version}, round=str(args.out)
    )

    if isinstance(robot.driver, GymSimDriver) and sizes["eval_episodes"] > 0:
        _stage(
            r,
            "eval",
            r.eval_json,
            [
                "eval",
                "--policy",
                str(r.policy),
                "--robot",
                args.robot,
                "--episodes",
                str(sizes["eval_episodes"]),
                "--json",
                str(r.eval_json),
            ],
        )
    manifest = read_manifest(r.policy)
    check = json.loads(r.check_json.read_text())["outcome_agreement"]
    grpo = json.loads((r.policy / "training" / "grpo_summary.json").read_text())
    if sizes["promote"] not in ("evidence", "always"):
        raise ValueError(f"--set promote: expected 'evidence' or 'always', got {sizes['promote']!r}")
    promoted, reason = promotion(grpo, check, sizes["min_agreement"])
    if sizes["promote"] == "always" and not promoted:
        promoted, reason = True, f"promote=always (the evidence alone would not have: {reason})"
    print(f"[iterate] {'promoted' if promoted else 'not promoted'}: {reason}", flush=True)
    summary = {
        "round": str(args.out),
        "parent_version": parent["version"],
        "version": manifest["version"],
        "promoted": promoted,
        "reason": reason,
        "next_policy": str(r.policy if promoted else args.policy),
        "grpo_updates": grpo["updates"],
        "guard": grpo["guard"],
        "check": {k: v for k, v in check.items() if k != "episode_ids"},
        "policy": str(r.policy),
        "world_model": str(r.world_model),
        "reward_model": str(r.reward_model),
        "aligned_on": policy_version,
        "preset": args.preset,
        "stages": r.stages,
        "eval": json.loads(r.eval_json.read_text())["success"] if r.eval_json.exists() else None,
    }
    (args.out / "round.json").write_text(json.dumps(summary, indent=2) + "\n")
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
        summary = run_round(args)
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
