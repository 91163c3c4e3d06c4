"""Start-up time of every `wmpo` command: `wmpo <command> --help` in a fresh process, wall seconds.

`--help` builds the command's parser, which imports the command's module and what it imports at
its top, and exits: the cost a user pays before any command does its work (issue 14, item 3).
`python -c pass`, `import torch` (what every training command needs) and `wmpo --help` (no command
module imported) are the baselines in the same run.
Each figure is the median of `--repeats` runs; the slowest imports are named with
`python -X importtime` for the slowest command.

    .venv/bin/python bench/bench_startup.py [--repeats 3] [--commands run sft ...]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from machine import describe
from wmpo_core.cli import installed_commands


def seconds(argv: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def slowest_imports(argv: list[str], top: int = 8) -> list[tuple[float, str]]:
    """(cumulative seconds, module) of the top-level imports that cost most under -X importtime."""
    err = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True).stderr
    rows = []
    for line in err.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        if cumulative.isdigit() and not name.startswith(" "):
            rows.append((int(cumulative) / 1e6, name))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--commands", nargs="*", default=None, help="default: every installed command")
    args = parser.parse_args()
    commands = args.commands or list(installed_commands())
    print(f"machine: {describe()}")
    cli = [sys.executable, "-m", "wmpo_core.cli"]
    rows = [("python -c pass", seconds([sys.executable, "-c", "pass"], args.repeats))]
    rows.append(("python -c 'import torch'", seconds([sys.executable, "-c", "import torch"], args.repeats)))
    rows.append(("wmpo --help", seconds([*cli, "--help"], args.repeats)))
    for name in commands:
        rows.append((f"wmpo {name} --help", seconds([*cli, name, "--help"], args.repeats)))
    print(f"\n{'command':32s} {'seconds':>8s}  (median of {args.repeats})")
    for label, value in rows:
        print(f"{label:32s} {value:8.2f}")
    slowest = max(rows[3:], key=lambda row: row[1])[0].split()[1]
    print(f"\nslowest imports of `wmpo {slowest} --help` (cumulative s, -X importtime):")
    for value, module in slowest_imports(["-m", "wmpo_core.cli", slowest, "--help"]):
        print(f"  {value:6.2f}  {module}")


if __name__ == "__main__":
    main()
