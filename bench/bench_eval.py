"""Evaluation episodes per minute: `wmpo eval` in one process vs in parallel worker processes.

Both runs evaluate the same policy on the same evaluation seeds, one after the other in this
invocation, so the ratio is measured on one machine under one load. They must agree episode by
episode (the parallel runner returns the sequential results); the script checks that too.

    python bench/bench_eval.py --policy data/exp/base --robot so101_sim_near --episodes 24 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from machine import describe
from wmpo_core.cli import main as wmpo


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policy", required=True, help="policy checkpoint (or 'expert')")
    parser.add_argument("--robot", default="so101_sim_near")
    parser.add_argument("--episodes", type=int, default=24)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    print(f"machine: {describe()}, MUJOCO_GL={os.environ.get('MUJOCO_GL')}")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, args.workers):
            out = Path(tmp) / f"eval_{workers}.json"
            code = wmpo(
                [
                    "eval",
                    "--policy",
                    args.policy,
                    "--robot",
                    args.robot,
                    "--episodes",
                    str(args.episodes),
                    "--refill-threshold",
                    "0",
                    "--workers",
                    str(workers),
                    "--json",
                    str(out),
                ]
            )
            if code != 0:
                raise SystemExit(f"wmpo eval exited {code}")
            runs[workers] = json.loads(out.read_text())
    same = runs[1]["episodes"] == runs[args.workers]["episodes"]
    print(f"{'workers':>7} {'episodes/min':>13} {'success':>8}")
    for workers, r in runs.items():
        print(
            f"{workers:>7} {r['episodes_per_minute']:13.1f} "
            f"{r['success']['successes']:>4}/{r['success']['trials']}"
        )
    ratio = runs[args.workers]["episodes_per_minute"] / runs[1]["episodes_per_minute"]
    print(
        f"speed-up {ratio:.2f}x with {args.workers} workers; per-episode results identical: {same}; "
        f"load average after: {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
