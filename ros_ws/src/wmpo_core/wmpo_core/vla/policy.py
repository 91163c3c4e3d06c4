"""The robot-facing `Policy` backed by a VLA: one observation in, one chunk of K actions out."""

from __future__ import annotations

import numpy as np
import torch

from wmpo_core.policy import Observation
from wmpo_core.robot_config import RobotConfig
from wmpo_core.vla.model import VLA


class VLAPolicy:
    """Greedy by default (evaluation, deployment); set `greedy=False` to sample at `temperature`.

    All preprocessing (camera selection, resize, prompt, state normalization) happens inside the
    model's `encode_inputs`, so the policy node, `wmpo eval` and imagination see the same inputs.
    """

    def __init__(
        self,
        model: VLA,
        robot_config: RobotConfig,
        greedy: bool = True,
        temperature: float = 1.6,
        seed: int | None = None,
    ):
        self.model = model.eval()
        self.robot_config = robot_config
        self.greedy = greedy
        self.temperature = temperature
        self.version = model.version
        self.chunk_size = model.chunk_size
        self._generator = torch.Generator(device=model.device)
        if seed is not None:
            self._generator.manual_seed(seed)

    def reset(self) -> None:
        """Nothing carries over between episodes (the model sees only the current frame)."""

    def predict_chunk(self, obs: Observation) -> np.ndarray:
        """(K, action_dim) float64 actions in robot units; the caller clamps them for safety."""
        missing = [c for c in self.model.cameras if c not in obs.images]
        if missing:
            raise ValueError(f"observation lacks camera(s) {missing} that policy {self.version} needs")
        frames = {c: np.asarray(obs.images[c])[None] for c in self.model.cameras}
        instruction = obs.instruction.strip() or self.robot_config.tasks[0]
        state = np.asarray(obs.state, dtype=np.float64)[None] if self.model.state_dim is not None else None
        inputs = self.model.encode_inputs(frames, [instruction], state=state)
        tokens, _ = self.model.sample(inputs, self.temperature, greedy=self.greedy, generator=self._generator)
        return self.model.tokens_to_actions(tokens.cpu().numpy())[0]
