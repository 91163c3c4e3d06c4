"""The WMPO experiment: for the same budget of P real episodes, does GRPO in an aligned world model
beat GRPO on the real system? And does it keep improving over lifelong rounds?

    base    SFT of the VLA on scripted demonstrations (or --base)
    WMPO    P real rollouts of the base -> align the world model, train the reward model, GRPO in
            imagination (`wmpo iterate`)
    real    GRPO on the simulator itself, spending the same P real episodes (`wmpo grpo --env sim`)
    rounds  WMPO again from the previous round's policy, each round spending another P rollouts

Every policy is evaluated greedily on the same evaluation seeds (disjoint from every training seed),
with Wilson 95% intervals. Stages write their outputs under --out and are skipped when the output
exists, so an interrupted run resumes. The table and plot go to --out (and to --docs if given).

    # CPU scale (tiny models; what a 2-core machine finishes in a few hours):
    python bench/wmpo_experiment.py --out data/experiment --robot so101_sim_near --size cpu
    # GPU scale (the paper's budget P = 128, realistic model sizes):
    python bench/wmpo_experiment.py --out data/experiment_gpu --robot so101_sim --size gpu
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from wmpo_core.cli import main as wmpo_main
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.policy import load_policy
from wmpo_core.robot_config import load_robot_config
from wmpo_core.sim_rollout import run_episodes, train_seeds
from wmpo_core.vla.checkpoint import read_manifest
from wmpo_learner.report import VersionResult, plot_success, results_table

SIZES: dict[str, dict[str, Any]] = {
    "cpu": {"demos": 120, "sft_steps": 2000, "vla_recipe": "tiny", "wm_preset": "tiny", "wm_steps": 1500, "wm_vae_steps": 300,
            "budget": 32, "eval_episodes": 100, "rounds": 3, "iterate_preset": "cpu", "iterate_set": ["horizon=48", "grpo_iterations=3"],
            "real_grpo": {"group_size": 8, "groups_per_batch": 2, "minibatch": 16, "lr": 1e-5}},
    "gpu": {"demos": 200, "sft_steps": 0, "vla_recipe": "realistic", "wm_preset": "xl", "wm_steps": 0, "wm_vae_steps": 0,
            "budget": 128, "eval_episodes": 200, "rounds": 3, "iterate_preset": "paper", "iterate_set": [],
            "real_grpo": {"group_size": 8, "groups_per_batch": 16, "minibatch": 128, "lr": 5e-6}},
}
ROLLOUT_SEED_OFFSET = 100_000
"""Training-range seeds of the real rollouts (round k uses offset + k * budget), apart from the demos'."""
REAL_GRPO_SEED_OFFSET = 500_000


def wmpo(*argv: Any) -> None:
    code = wmpo_main([str(a) for a in argv])
    if code != 0:
        raise SystemExit(f"wmpo {argv[0]} failed with exit code {code}")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node()}: {cpu}, {os.cpu_count()} cores, {gpu}, Python {platform.python_version()}, torch {torch.__version__}"


def evaluate(policy: Path, robot: str, episodes: int, out: Path) -> dict[str, Any]:
    if not out.exists():
        wmpo("eval", "--policy", policy, "--robot", robot, "--episodes", episodes, "--refill-threshold", 0, "--json", out)
    return json.loads(out.read_text())


def record_rollouts(store_path: Path, policy: Path, robot: str, count: int, offset: int) -> None:
    """P real episodes of `policy` into the learner's store (once: skipped if they are there)."""
    config = load_robot_config(robot)
    version = read_manifest(policy)["version"]
    with EpisodeStore.open(store_path, mode="a") as store:
        have = len(store.select(source="policy", policy_version=version))
        if have >= count:
            return
        run_episodes(config, load_policy(str(policy), config), train_seeds(count - have, offset=offset + have), store=store,
                     desc=f"real rollouts of {version}", refill_threshold=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="experiment folder (resumable)")
    parser.add_argument("--robot", default="so101_sim_near", help="simulated robot config (default: so101_sim_near)")
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--base", type=Path, default=None, help="base policy checkpoint (default: SFT on fresh demos)")
    parser.add_argument("--wm", type=Path, default=None, help="pretrained world model (default: trained on the demos)")
    parser.add_argument("--budget", type=int, default=None, help="P, real episodes per round for both methods")
    parser.add_argument("--eval-episodes", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None, help="lifelong WMPO rounds")
    parser.add_argument("--wm-steps", type=int, default=None, help="world-model pretraining steps (default: by --size)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="`wmpo iterate` stage-size override for every round")
    parser.add_argument("--docs", type=Path, default=None, help="also write the table and plot here (e.g. docs/)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    sizes = dict(SIZES[args.size])
    sizes["iterate_set"] = [*sizes["iterate_set"], *args.set]
    for key in ("budget", "eval_episodes", "rounds", "wm_steps"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    out, robot, P, device = args.out, args.robot, sizes["budget"], ["--device", args.device]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    store = out / "learner.zarr"

    # 1. Base policy: SFT on scripted demonstrations.
    base = args.base
    if base is None:
        base = out / "base"
        if not (base / "manifest.json").exists():
            config = load_robot_config(robot)
            with EpisodeStore.open(store, mode="a") as s:
                missing = sizes["demos"] - len(s.select(source="scripted"))
                if missing > 0:
                    run_episodes(config, None, train_seeds(missing, offset=sizes["demos"] - missing), store=s, desc="demonstrations")
            wmpo("sft", "--store", store, "--robot", robot, "--config", sizes["vla_recipe"], "--out", base,
                 *(["--steps", sizes["sft_steps"]] if sizes["sft_steps"] else []), *device)
    results: list[VersionResult] = []
    timings: dict[str, float] = {}

    def scored(label: str, policy: Path, name: str) -> None:
        t = time.time()
        summary = evaluate(policy, robot, sizes["eval_episodes"], out / f"eval_{name}.json")
        timings[f"eval {label}"] = round(time.time() - t)
        results.append(VersionResult(label, summary["version"], summary["success"]["successes"], summary["success"]["trials"]))
        print(f"[experiment] {label}: {summary['success']}", flush=True)

    scored("base (SFT)", base, "base")

    # 2. The baseline at the same real budget: GRPO on the simulator from the base.
    real = out / "real_grpo"
    t = time.time()
    if not (real / "manifest.json").exists():
        g = sizes["real_grpo"]
        wmpo("grpo", "--policy", base, "--robot", robot, "--out", real, "--env", "sim", "--budget", P,
             "--seed-offset", REAL_GRPO_SEED_OFFSET, "--group-size", g["group_size"], "--groups-per-batch", g["groups_per_batch"],
             "--minibatch", g["minibatch"], "--lr", g["lr"], "--iterations", 10_000, *device)
    timings["real-env GRPO"] = round(time.time() - t)
    scored(f"real-env GRPO (P={P})", real, "real_grpo")

    # 3. Pretrained world model (on the demonstrations).
    wm = args.wm
    if wm is None and sizes["rounds"] > 0:
        wm = out / "wm_pretrained"
        if not (wm / "world_model.json").exists():
            wmpo("wm-train", "--store", store, "--robot", robot, "--config", sizes["wm_preset"], "--out", wm, "--source", "any",
                 *(["--steps", sizes["wm_steps"]] if sizes["wm_steps"] else []),
                 *(["--vae-steps", sizes["wm_vae_steps"]] if sizes["wm_vae_steps"] else []), *device)

    # 4. WMPO lifelong rounds, each from P real rollouts of the current policy.
    current, current_wm, reward = base, wm, None
    for k in range(1, sizes["rounds"] + 1):
        t = time.time()
        record_rollouts(store, current, robot, P, ROLLOUT_SEED_OFFSET + (k - 1) * P)
        round_dir = out / f"wmpo_round_{k}"
        argv_k = ["iterate", "--store", store, "--robot", robot, "--policy", current, "--wm", current_wm, "--out", round_dir,
                  "--preset", sizes["iterate_preset"], "--set", "eval_episodes=0", "--seed", k, *device]
        for item in sizes["iterate_set"]:
            argv_k += ["--set", item]
        wmpo(*argv_k, *(["--reward", reward] if reward else []))
        current, current_wm, reward = round_dir / "policy", round_dir / "world_model", round_dir / "reward_model"
        timings[f"WMPO round {k}"] = round(time.time() - t)
        scored(f"WMPO round {k}", current, f"wmpo_round_{k}")

    hours = (time.time() - t0) / 3600
    title = f"WMPO vs real-env GRPO at P={P} real episodes per round, {robot}, {args.size} sizes"
    table = results_table(results)
    summary = {"title": title, "machine": machine(), "hours": round(hours, 2), "sizes": sizes, "timings_s": timings,
               "command": " ".join(["python", "bench/wmpo_experiment.py", *(argv if argv is not None else sys.argv[1:])]),
               "results": [{"label": r.label, "version": r.version, "successes": r.successes, "trials": r.trials,
                            "ci95": list(r.success_rate.interval)} for r in results]}
    for target in [out] + ([args.docs] if args.docs else []):
        target.mkdir(parents=True, exist_ok=True)
        plot_success(results, target / f"wmpo_experiment_{args.size}.png", title)
        (target / f"wmpo_experiment_{args.size}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{title}\n{table}\nmachine: {summary['machine']}\ntook {hours:.2f} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
