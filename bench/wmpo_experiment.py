"""The WMPO experiment: for the same budget of P real episodes, does GRPO in an aligned world model
beat GRPO on the real system? And does it keep improving over lifelong rounds?

    base    SFT of the VLA on scripted demonstrations (or --base)
    WMPO    P real rollouts of the base -> align the world model, train the reward model, GRPO in
            imagination (`wmpo iterate`)
    real    GRPO on the simulator itself, spending the same P real episodes (`wmpo grpo --env sim`)
    rounds  WMPO again from the previous round's policy, each round spending another P rollouts

Every policy is evaluated greedily on the same evaluation seeds (disjoint from every training seed),
in parallel processes, with Wilson 95% intervals. Each round also records `check_episodes` held-out
rollouts of the deployed policy into a separate store: they are never trained on and only measure
imagination (`wmpo imagination-check`); a round's GRPO result is deployed only when `wmpo iterate`
promotes it, and every candidate is evaluated either way. Stages write their outputs under --out and
are skipped when the output exists, so an interrupted run resumes. The JSON (the schema of the
efficacy issue plus per-round details) and the plot go to --out and to --results if given.

    # CPU scale (tiny models; what a 2-core machine finishes in a few hours):
    python bench/wmpo_experiment.py --out data/experiment --robot so101_sim_near --size cpu --results
    docs/results
    # GPU scale (the paper's budget P = 128, realistic model sizes):
    python bench/wmpo_experiment.py --out data/experiment_gpu --robot so101_sim --size gpu
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from machine import describe
from wmpo_core.cli import main as wmpo_main
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.policy import load_policy
from wmpo_core.robot_config import load_robot_config
from wmpo_core.sim_rollout import run_episodes, train_seeds
from wmpo_core.vla.checkpoint import read_manifest
from wmpo_learner.report import VersionResult, plot_success, results_table

SIZES: dict[str, dict[str, Any]] = {
    "cpu": {
        "demos": 120,
        "sft_steps": 2000,
        "vla_recipe": "tiny",
        "wm_preset": "tiny",
        "wm_steps": 1500,
        "wm_vae_steps": 300,
        "budget": 64,
        "check_episodes": 32,
        "eval_episodes": 200,
        "candidate_eval_episodes": 50,
        "rounds": 3,
        "iterate_preset": "cpu",
        "iterate_set": ["horizon=56", "grpo_iterations=4"],
        "real_grpo": {"group_size": 8, "groups_per_batch": 2, "minibatch": 16, "lr": 5e-5},
    },
    "gpu": {
        "demos": 200,
        "sft_steps": 0,
        "vla_recipe": "realistic",
        "wm_preset": "xl",
        "wm_steps": 0,
        "wm_vae_steps": 0,
        "budget": 128,
        "check_episodes": 64,
        "eval_episodes": 200,
        "candidate_eval_episodes": 200,
        "rounds": 3,
        "iterate_preset": "paper",
        "iterate_set": [],
        "real_grpo": {"group_size": 8, "groups_per_batch": 16, "minibatch": 128, "lr": 5e-6},
    },
}
ROLLOUT_SEED_OFFSET = 100_000
"""Training-range seeds of the real rollouts (round k uses offset + k * budget), apart from the demos'."""
REAL_GRPO_SEED_OFFSET = 500_000
CHECK_SEED_OFFSET = 700_000
"""Seeds of the held-out rollouts that only measure imagination (never trained on)."""


def wmpo(*argv: Any) -> None:
    code = wmpo_main([str(a) for a in argv])
    if code != 0:
        raise SystemExit(f"wmpo {argv[0]} failed with exit code {code}")


def evaluate(policy: Path, robot: str, episodes: int, out: Path, workers: int) -> dict[str, Any]:
    if not out.exists():
        wmpo(
            "eval",
            "--policy",
            policy,
            "--robot",
            robot,
            "--episodes",
            episodes,
            "--refill-threshold",
            0,
            "--json",
            out,
            "--workers",
            workers,
        )
    return json.loads(out.read_text())


def record_rollouts(store_path: Path, policy: Path, robot: str, count: int, offset: int) -> None:
    """`count` real episodes of `policy` into a store (once: skipped if they are there)."""
    config = load_robot_config(robot)
    version = read_manifest(policy)["version"]
    with EpisodeStore.open(store_path, mode="a") as store:
        have = len(store.select(source="policy", policy_version=version))
        if have >= count:
            return
        run_episodes(
            config,
            load_policy(str(policy), config),
            train_seeds(count - have, offset=offset + have),
            store=store,
            desc=f"real rollouts of {version}",
            refill_threshold=0,
        )


def entry(name: str, summary: dict[str, Any], **extra: Any) -> dict[str, Any]:
    success = summary["success"]
    return {
        "name": name,
        "version": summary["version"],
        "successes": success["successes"],
        "episodes": success["trials"],
        "wilson95": [success["ci_low"], success["ci_high"]],
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="experiment folder (resumable)")
    parser.add_argument(
        "--robot", default="so101_sim_near", help="simulated robot config (default: so101_sim_near)"
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument(
        "--base", type=Path, default=None, help="base policy checkpoint (default: SFT on fresh demos)"
    )
    parser.add_argument(
        "--wm", type=Path, default=None, help="pretrained world model (default: trained on the demos)"
    )
    parser.add_argument(
        "--budget", type=int, default=None, help="P, real episodes per round for both methods"
    )
    parser.add_argument(
        "--check-episodes",
        type=int,
        default=None,
        help="held-out rollouts per round that only measure imagination",
    )
    parser.add_argument("--eval-episodes", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None, help="lifelong WMPO rounds")
    parser.add_argument(
        "--wm-steps", type=int, default=None, help="world-model pretraining steps (default: by --size)"
    )
    parser.add_argument(
        "--sft-steps", type=int, default=None, help="SFT steps of the base (default: by --size)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="`wmpo iterate` stage-size override for every round",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="evaluation processes (default: one per core)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="also write wmpo_experiment_<size>.json and .png here (e.g. docs/results)",
    )
    parser.add_argument(
        "--no-ranking",
        action="store_true",
        help="skip the final policy-ranking check (it imagines every evaluated policy: minutes)",
    )
    parser.add_argument(
        "--tag", default=None, help="results are named wmpo_experiment_<tag>.json/.png (default: --size)"
    )
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    sizes = dict(SIZES[args.size])
    sizes["iterate_set"] = [*sizes["iterate_set"], *args.set]
    for key in ("budget", "check_episodes", "eval_episodes", "rounds", "wm_steps", "sft_steps"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    out, robot, P, device = args.out, args.robot, sizes["budget"], ["--device", args.device]
    out.mkdir(parents=True, exist_ok=True)
    store, check_store = out / "learner.zarr", out / "check.zarr"
    timings_file = out / "timings.json"  # stage times survive a resume, so `hours` is the whole experiment's
    timings: dict[str, float] = json.loads(timings_file.read_text()) if timings_file.exists() else {}

    def timed(label: str, fn, *a, **kw):
        t = time.time()
        result = fn(*a, **kw)
        timings[label] = timings.get(label, 0) + round(time.time() - t)
        timings_file.write_text(json.dumps(timings, indent=2) + "\n")
        return result

    def scored(name: str, policy: Path, episodes: int | None = None) -> dict[str, Any]:
        summary = timed(
            f"eval {name}",
            evaluate,
            policy,
            robot,
            episodes or sizes["eval_episodes"],
            out / f"eval_{name}.json",
            args.workers,
        )
        print(f"[experiment] {name} ({summary['version']}): {summary['success']}", flush=True)
        return summary

    # 1. Base policy: SFT on scripted demonstrations.
    base = args.base
    if base is None:
        base = out / "base"
        if not (base / "manifest.json").exists():
            config = load_robot_config(robot)
            with EpisodeStore.open(store, mode="a") as s:
                missing = sizes["demos"] - len(s.select(source="scripted"))
                if missing > 0:
                    run_episodes(
                        config,
                        None,
                        train_seeds(missing, offset=sizes["demos"] - missing),
                        store=s,
                        desc="demonstrations",
                    )
            wmpo(
                "sft",
                "--store",
                store,
                "--robot",
                robot,
                "--config",
                sizes["vla_recipe"],
                "--out",
                base,
                *(["--steps", sizes["sft_steps"]] if sizes["sft_steps"] else []),
                *device,
            )
    evals: dict[str, tuple[Path, dict[str, Any]]] = {"base": (base, scored("base", base))}
    policies = [entry("base", evals["base"][1])]

    # 2. The baseline at the same real budget: GRPO on the simulator from the base.
    real = out / "real_grpo"
    if not (real / "manifest.json").exists():
        g = sizes["real_grpo"]
        timed(
            "real-env GRPO",
            wmpo,
            "grpo",
            "--policy",
            base,
            "--robot",
            robot,
            "--out",
            real,
            "--env",
            "sim",
            "--budget",
            P,
            "--seed-offset",
            REAL_GRPO_SEED_OFFSET,
            "--group-size",
            g["group_size"],
            "--groups-per-batch",
            g["groups_per_batch"],
            "--minibatch",
            g["minibatch"],
            "--lr",
            g["lr"],
            "--iterations",
            10_000,
            *device,
        )
    evals["real_grpo"] = (real, scored("real_grpo", real))
    policies.append(entry("real_grpo", evals["real_grpo"][1]))
    write_results(args, out, P, robot, sizes, policies, {}, [], timings, argv, final=False)

    # 3. Pretrained world model (on the demonstrations).
    wm = args.wm
    if wm is None and sizes["rounds"] > 0:
        wm = out / "wm_pretrained"
        if not (wm / "world_model.json").exists():
            timed(
                "world-model pretraining",
                wmpo,
                "wm-train",
                "--store",
                store,
                "--robot",
                robot,
                "--config",
                sizes["wm_preset"],
                "--out",
                wm,
                "--source",
                "any",
                *(["--steps", sizes["wm_steps"]] if sizes["wm_steps"] else []),
                *(["--vae-steps", sizes["wm_vae_steps"]] if sizes["wm_vae_steps"] else []),
                *device,
            )

    # 4. WMPO lifelong rounds, each from P real rollouts of the deployed policy (+ held-out check rollouts).
    current, current_wm, reward = base, wm, None
    rounds: list[dict[str, Any]] = []
    deployed_rounds: dict[str, int] = {}  # a version kept by a round gets P more rollouts for the next one
    for k in range(1, sizes["rounds"] + 1):
        version = read_manifest(current)["version"]
        deployed_rounds[version] = deployed_rounds.get(version, 0) + 1
        timed(
            f"round {k} rollouts",
            record_rollouts,
            store,
            current,
            robot,
            P * deployed_rounds[version],
            ROLLOUT_SEED_OFFSET + (k - 1) * P,
        )
        timed(
            f"round {k} check rollouts",
            record_rollouts,
            check_store,
            current,
            robot,
            sizes["check_episodes"],
            CHECK_SEED_OFFSET + (k - 1) * sizes["check_episodes"],
        )
        round_dir = out / f"wmpo_round_{k}"
        argv_k = [
            "iterate",
            "--store",
            store,
            "--check-store",
            check_store,
            "--robot",
            robot,
            "--policy",
            current,
            "--wm",
            current_wm,
            "--out",
            round_dir,
            "--preset",
            sizes["iterate_preset"],
            "--set",
            "eval_episodes=0",
            "--seed",
            k,
            *device,
        ]
        for item in sizes["iterate_set"]:
            argv_k += ["--set", item]
        timed(f"round {k} learning", wmpo, *argv_k, *(["--reward", reward] if reward else []))
        summary = json.loads((round_dir / "round.json").read_text())
        # A promoted candidate is the deployed policy (full evaluation); one that was not promoted is
        # still measured, on fewer episodes, to show whether holding it back was right.
        candidate = scored(
            f"wmpo_r{k}_candidate",
            round_dir / "policy",
            None if summary["promoted"] else sizes["candidate_eval_episodes"],
        )
        evals[f"wmpo_r{k}_candidate"] = (round_dir / "policy", candidate)
        deployed = (
            candidate
            if summary["promoted"]
            else next(e for _, e in evals.values() if e["version"] == summary["parent_version"])
        )
        policies.append(
            entry(
                f"wmpo_r{k}",
                deployed,
                promoted=summary["promoted"],
                reason=summary["reason"],
                candidate=entry(f"wmpo_r{k}_candidate", candidate),
            )
        )
        rounds.append(
            {
                "round": k,
                "promoted": summary["promoted"],
                "reason": summary["reason"],
                "grpo_updates": summary["grpo_updates"],
                "guard": summary["guard"],
                "outcome_agreement": summary["check"],
            }
        )
        current = Path(summary["next_policy"])
        current_wm, reward = round_dir / "world_model", round_dir / "reward_model"
        write_results(args, out, P, robot, sizes, policies, {}, rounds, timings, argv, final=False)

    # 5. Does imagination rank the evaluated policies as reality does? (the last round's models)
    diagnostics: dict[str, Any] = {}
    if rounds:
        check_json = out / "final_check.json"
        if not check_json.exists() and not args.no_ranking:
            ranks = [
                a
                for name, (path, _) in evals.items()
                for a in ("--rank", f"{path}={out / f'eval_{name}.json'}")
            ]
            timed(
                "policy ranking",
                wmpo,
                "imagination-check",
                "--store",
                check_store,
                "--wm",
                current_wm,
                "--reward",
                reward,
                "--robot",
                robot,
                "--json",
                check_json,
                *ranks,
            )
        o = rounds[-1]["outcome_agreement"]
        distinct = len(
            {e["version"].split("-", 1)[-1] for _, e in evals.values()}
        )  # same weights, same tensor hash
        ranking: dict[str, Any] = {"versions": distinct, "spearman": None, "note": "not run (--no-ranking)"}
        if check_json.exists():
            final = json.loads(check_json.read_text())["policy_ranking"]
            ranking = {
                "versions": final["versions"],
                "spearman": final["spearman"],
                "detail": final["policies"],
            }
        diagnostics = {
            "outcome_agreement": {
                k: o[k] for k in ("balanced_accuracy", "auc", "episodes", "imagined_success", "real_success")
            },
            "policy_ranking": ranking,
            "outcome_agreement_per_round": [r["outcome_agreement"] for r in rounds],
        }

    write_results(args, out, P, robot, sizes, policies, diagnostics, rounds, timings, argv, final=True)
    return 0


def write_results(
    args,
    out: Path,
    P: int,
    robot: str,
    sizes: dict[str, Any],
    policies: list[dict[str, Any]],
    diagnostics: dict[str, Any],
    rounds: list[dict[str, Any]],
    timings: dict[str, float],
    argv: list[str] | None,
    final: bool,
) -> None:
    """The JSON and plot so far (written after every round, so an interrupted run still shows its numbers)."""
    hours = (
        sum(timings.values()) / 3600
    )  # every timed stage of every invocation (base SFT/demos when made elsewhere: not included)
    title = f"WMPO vs real-env GRPO at P={P} real episodes per round, {robot}, {args.size} sizes"
    command = " ".join(["python", "bench/wmpo_experiment.py", *(argv if argv is not None else sys.argv[1:])])
    result = {
        "complete": final,
        "machine": describe(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "command": command,
        "hours": round(hours, 2),
        "robot": robot,
        "budget_P": P,
        "eval_episodes": sizes["eval_episodes"],
        "policies": policies,
        "diagnostics": diagnostics,
        "rounds": rounds,
        "sizes": sizes,
        "timings_s": timings,
    }
    bars = [VersionResult(p["name"], p["version"], p["successes"], p["episodes"]) for p in policies]
    bars += [
        VersionResult(
            f"{p['name']} candidate",
            p["candidate"]["version"],
            p["candidate"]["successes"],
            p["candidate"]["episodes"],
        )
        for p in policies
        if "candidate" in p and not p["promoted"]
    ]
    for target in [out] + ([args.results] if args.results else []):
        target.mkdir(parents=True, exist_ok=True)
        plot_success(bars, target / f"wmpo_experiment_{args.tag or args.size}.png", title)
        (target / f"wmpo_experiment_{args.tag or args.size}.json").write_text(
            json.dumps(result, indent=2) + "\n"
        )
    print(
        f"\n{title}\n{results_table(bars)}\nmachine: {result['machine']}\nstages took {hours:.2f} h in all",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
