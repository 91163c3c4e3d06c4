"""Real 2-process DDP training of the world model on CPU (gloo), launched with torchrun.

The test starts `torchrun --nproc_per_node 2 tests/test_world_model_ddp.py ...`; each process runs
the same `WorldModelTrainer` that `wmpo wm-train` runs (VAE stage + transformer stage), then dumps
its own weights and losses. The replicas must end bit-identical, must have trained on different
data (their losses differ), and must have moved away from the initial weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def worker(store: Path, robot: Path, out: Path) -> None:
    from safetensors.torch import save_file
    from test_world_model import square_model_config
    from wmpo_core.episode_store import EpisodeStore
    from wmpo_core.robot_config import load_robot_config
    from wmpo_learner import distributed
    from wmpo_learner.world_model.config import TrainConfig
    from wmpo_learner.world_model.trainer import TrainingPlan, WorldModelTrainer

    ctx = distributed.setup("cpu")
    plan = TrainingPlan(
        command="wm-train",
        store=store,
        out=out / "model",
        robot=load_robot_config(robot),
        camera="front",
        episodes=EpisodeStore.open(store).select(),
        model_config=square_model_config(),
        train=TrainConfig(
            steps=3, batch_size=2, vae_steps=2, vae_batch_size=2, warmup_steps=1, checkpoint_every=2
        ),
    )
    trainer = WorldModelTrainer(plan, ctx)
    initial = {k: v.clone() for k, v in trainer.world_model.transformer.state_dict().items()}
    wm = trainer.fit()
    weights = {f"transformer.{k}": v.contiguous() for k, v in wm.transformer.state_dict().items()}
    weights.update({f"vae.{k}": v.contiguous() for k, v in wm.vae.state_dict().items()})
    weights.update({f"initial.{k}": v.contiguous() for k, v in initial.items()})
    save_file(weights, str(out / f"rank{ctx.rank}.safetensors"))
    (out / f"rank{ctx.rank}.json").write_text(
        json.dumps(
            {
                "losses": trainer.last_losses,
                "world_size": ctx.world_size,
                "shard": [m.episode_id for m in trainer.shard],
            }
        )
    )
    distributed.teardown(ctx)


@pytest.mark.slow
def test_two_process_gloo_training_keeps_replicas_identical(tmp_path):
    import torch
    from safetensors.torch import load_file
    from test_world_model import square_robot_config, write_square_store

    robot = square_robot_config(tmp_path)
    store = write_square_store(tmp_path / "store", robot, episodes=4, steps=10)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node",
        "2",
        __file__,
        str(store),
        str(robot),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    infos = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["world_size"] for i in infos] == [2, 2]
    assert set(infos[0]["shard"]).isdisjoint(infos[1]["shard"])  # each process trains on its own episodes
    assert infos[0]["losses"] != infos[1]["losses"]  # ... so their local losses differ
    for name, value in ranks[0].items():
        torch.testing.assert_close(
            value, ranks[1][name], rtol=0, atol=0, msg=name
        )  # yet weights stay identical
    moved = [
        n
        for n in ranks[0]
        if n.startswith("transformer.") and not torch.equal(ranks[0][n], ranks[0]["initial." + n[12:]])
    ]
    assert moved, "training did not change the transformer"
    assert (tmp_path / "model" / "world_model.json").is_file()  # process 0 wrote the model


if __name__ == "__main__":
    worker(*(Path(a) for a in sys.argv[1:4]))
