"""Reports of lifelong-learning runs: success per policy version with intervals, a plot, and videos of
real episodes next to the world model's imagination of the same actions.

Used by `wmpo run` and the WMPO experiment, so every run is reported the same way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.image_ops import resize_frames
from wmpo_core.sim_rollout import write_video

from wmpo_learner.stats import SuccessRate


@dataclass(frozen=True)
class VersionResult:
    """Success of one policy version over a set of episodes (robot rollouts or evaluation)."""

    label: str
    version: str
    successes: int
    trials: int

    @property
    def success_rate(self) -> SuccessRate:
        return SuccessRate(self.successes, self.trials)


def results_table(results: Sequence[VersionResult]) -> str:
    """Markdown table: label, version, success rate with its Wilson 95% interval."""
    lines = ["| | policy version | success | Wilson 95% CI |", "|---|---|---|---|"]
    for r in results:
        lo, hi = r.success_rate.interval
        lines.append(
            f"| {r.label} | `{r.version}` | {r.successes}/{r.trials} ({100 * r.successes / r.trials:.0f}%) "
            f"| [{100 * lo:.0f}%, {100 * hi:.0f}%] |"
        )
    return "\n".join(lines)


def plot_success(results: Sequence[VersionResult], path: Path, title: str) -> Path:
    """Bar chart of success rates with Wilson 95% error bars (PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    rates = np.array([r.successes / r.trials for r in results])
    intervals = np.array([r.success_rate.interval for r in results])
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(results) + 1.5), 3.6), dpi=120)
    ax.bar(range(len(results)), 100 * rates, color="#4C72B0", width=0.6)
    ax.errorbar(
        range(len(results)),
        100 * rates,
        yerr=100 * np.abs(intervals.T - rates),
        fmt="none",
        ecolor="black",
        capsize=4,
    )
    ax.set_xticks(range(len(results)), [f"{r.label}\n(n={r.trials})" for r in results], fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("success rate (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def real_vs_imagined_video(
    world_model: Path, store_path: Path, episode_id: str, out: Path, max_steps: int = 40, seed: int = 0
) -> Path:
    """Side-by-side mp4: the recorded episode (left) and the world model replaying its first frame
    with the same recorded actions, open loop (right). How far they drift apart shows how much the
    policy can trust imagination for this kind of episode."""
    # Imported here: the model pulls in diffusers (5 s), which `wmpo run --help` should not wait for.
    from wmpo_learner.world_model.model import WorldModel

    wm = WorldModel.load(world_model)
    episode = EpisodeStore.open(store_path).episode(episode_id)
    steps = min(max_steps, len(episode) - 1)
    real = episode.frames(wm.camera, 0, steps + 1)
    actions = episode.action()[:steps]
    with torch.no_grad():
        imagined = wm.replay(real[:1], actions[None], torch.Generator().manual_seed(seed))[0]
    real = resize_frames(real[1 : steps + 1], imagined.shape[1])
    frames = [
        np.concatenate([r, np.full((r.shape[0], 4, 3), 255, np.uint8), i], axis=1)
        for r, i in zip(real, imagined, strict=False)
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_video(out, frames, fps=10.0)
    return out


def write_report(
    out_dir: Path,
    title: str,
    results: Sequence[VersionResult],
    details: dict,
    videos: Sequence[Path],
    notes: Sequence[str] = (),
) -> Path:
    """report.md + report.json + success.png in `out_dir`; `notes`: what each round decided and why."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_success(results, out_dir / "success.png", title)
    lines = [f"# {title}", "", results_table(results), "", f"![success per version]({plot.name})", ""]
    if notes:
        lines += ["What each round decided:", "", *[f"- {n}" for n in notes], ""]
    if videos:
        lines += [
            "Real episodes (left) next to the world model's open-loop replay of their actions (right):",
            "",
        ]
        lines += [f"- [{v.name}]({v.relative_to(out_dir)})" for v in videos]
        lines.append("")
    lines += ["```json", json.dumps(details, indent=2), "```", ""]
    (out_dir / "report.md").write_text("\n".join(lines))
    payload = {
        "title": title,
        "results": [
            {**asdict(r), "rate": r.successes / r.trials, "ci95": list(r.success_rate.interval)}
            for r in results
        ],
        "notes": list(notes),
        **details,
    }
    (out_dir / "report.json").write_text(json.dumps(payload, indent=2) + "\n")
    return out_dir / "report.md"
