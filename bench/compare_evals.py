"""Compare policies evaluated on the same seeds (`wmpo eval --json` files) against a baseline.

Each policy's success rate with its Wilson interval, the difference to the baseline with Newcombe's
interval (as if the samples were independent), and the paired comparison the shared seeds allow:
the seeds only the policy solved (gained), only the baseline solved (lost), and the exact one-sided
McNemar p-value of "better than the baseline" (`wmpo_learner.stats.PairedComparison`).

    python bench/compare_evals.py --baseline data/exp/diag_noguard/eval_base.json \
        --policy real_grpo=data/exp/diag_noguard/eval_real_grpo.json \
        --policy imagined_grpo=data/exp/diag_noguard/eval.json --json docs/results/compare.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from machine import describe
from wmpo_learner.stats import PairedComparison, SuccessRate, difference_interval


def outcomes(path: Path) -> dict[int, bool]:
    episodes = json.loads(path.read_text())["episodes"]
    return {int(e["seed"]): bool(e["success"]) for e in episodes}


def compare(baseline: Path, policies: dict[str, Path]) -> dict[str, Any]:
    base = outcomes(baseline)
    base_rate = SuccessRate.from_outcomes(base.values())
    rows: dict[str, Any] = {"baseline": {"eval": str(baseline), "success": base_rate.to_dict()}}
    for name, path in policies.items():
        new = outcomes(path)
        rate = SuccessRate.from_outcomes(new.values())
        low, high = difference_interval(rate.successes, rate.trials, base_rate.successes, base_rate.trials)
        rows[name] = {
            "eval": str(path),
            "success": rate.to_dict(),
            "difference": {"rate": rate.rate - base_rate.rate, "newcombe_95": [low, high]},
            "paired": PairedComparison.from_outcomes(base, new).to_dict(),
        }
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the baseline's `wmpo eval --json`")
    parser.add_argument(
        "--policy", action="append", default=[], metavar="NAME=EVAL_JSON", help="a policy to compare"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the comparison here")
    args = parser.parse_args()
    policies = {}
    for item in args.policy:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--policy takes NAME=EVAL_JSON, got {item!r}")
        policies[name] = Path(path)
    try:
        rows = compare(args.baseline, policies)
    except (OSError, KeyError, ValueError) as exc:
        print(f"compare_evals: {exc}", file=sys.stderr)
        return 1
    print(describe())
    width = max(len(name) for name in rows)
    header = ["policy".ljust(width), "success".rjust(9), "Wilson 95%".rjust(15), "diff".rjust(7)]
    print(" ".join([*header, "gained", " lost", "      p"]))
    for name, row in rows.items():
        s = row["success"]
        interval = f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]"
        line = f"{name:{width}s} {s['successes']:>4d}/{s['trials']:<4d} {interval}"
        if "paired" in row:
            paired = row["paired"]
            line += (
                f" {row['difference']['rate']:+7.3f} {paired['gained']:6d} {paired['lost']:5d} "
                f"{paired['one_sided_mcnemar_p']:7.4f}"
            )
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": describe(), "comparison": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
