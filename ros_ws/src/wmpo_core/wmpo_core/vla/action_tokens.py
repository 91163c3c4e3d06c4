"""Actions <-> discrete action tokens: q01/q99 normalization, then 256 uniform bins over [-1, 1].

Bin b covers [-1 + 2b/N, -1 + 2(b+1)/N); a token decodes to its bin centre, so a round trip is
exact to within half a bin (1/N in normalized units) for actions inside [q01, q99]. Works on
numpy arrays (robot side) and torch tensors (learner side, any device); the result has the type
of the input.
"""

from __future__ import annotations

import numpy as np
import torch

from wmpo_core.normalization import ActionNormalizer


class ActionTokenizer:
    def __init__(self, normalizer: ActionNormalizer, num_bins: int = 256):
        if num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        self.normalizer = normalizer
        self.num_bins = num_bins

    @property
    def action_dim(self) -> int:
        return self.normalizer.dim

    def _check_dim(self, shape: tuple[int, ...], what: str) -> None:
        if len(shape) == 0 or shape[-1] != self.action_dim:
            raise ValueError(
                f"{what} must end with the action dimension {self.action_dim}, got shape {tuple(shape)}"
            )

    def actions_to_tokens(self, actions: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """(..., A) robot-unit actions -> (..., A) int64 bins in [0, num_bins)."""
        self._check_dim(tuple(actions.shape), "actions")
        if isinstance(actions, torch.Tensor):
            q01, q99 = self._bounds_like(actions)
            span = q99 - q01
            scaled = torch.where(
                span > 1e-6, 2.0 * (actions.double() - q01) / span.clamp_min(1e-6) - 1.0, 0.0
            )
            return self._bin_torch(scaled.clamp(-1.0, 1.0))
        normalized = self.normalizer.normalize(actions)
        return np.clip(np.floor((normalized + 1.0) * 0.5 * self.num_bins), 0, self.num_bins - 1).astype(
            np.int64
        )

    def tokens_to_actions(self, tokens: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """(..., A) bins -> (..., A) float64 robot-unit actions (bin centres)."""
        self._check_dim(tuple(tokens.shape), "tokens")
        if isinstance(tokens, torch.Tensor):
            if tokens.dtype.is_floating_point or (
                tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.num_bins)
            ):
                raise ValueError(f"tokens must be integers in [0, {self.num_bins})")
            q01, q99 = self._bounds_like(tokens)
            centres = -1.0 + (2.0 * tokens.double() + 1.0) / self.num_bins
            return q01 + (centres + 1.0) * 0.5 * (q99 - q01)
        tokens = np.asarray(tokens)
        if not np.issubdtype(tokens.dtype, np.integer) or (
            tokens.size and (tokens.min() < 0 or tokens.max() >= self.num_bins)
        ):
            raise ValueError(f"tokens must be integers in [0, {self.num_bins})")
        return self.normalizer.unnormalize(-1.0 + (2.0 * tokens + 1.0) / self.num_bins)

    def _bin_torch(self, normalized: torch.Tensor) -> torch.Tensor:
        return torch.floor((normalized + 1.0) * 0.5 * self.num_bins).clamp(0, self.num_bins - 1).long()

    def _bounds_like(self, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q01 = torch.as_tensor(self.normalizer.q01, dtype=torch.float64, device=ref.device)
        q99 = torch.as_tensor(self.normalizer.q99, dtype=torch.float64, device=ref.device)
        return q01, q99
