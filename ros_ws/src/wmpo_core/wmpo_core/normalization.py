"""Action normalization from dataset statistics (q01/q99 -> [-1, 1]), shared by policy and WM.

Quantiles rather than min/max so that a few outliers in the demonstrations do not squash the
useful range; values outside [q01, q99] are clipped. The statistics travel with every checkpoint
and are hashed into its metadata, so a policy is never run with statistics it was not trained on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np

from wmpo_core.durable import tagged_sha256

_EPS = 1e-6


class ActionNormalizer:
    def __init__(self, q01: Iterable[float], q99: Iterable[float]):
        self.q01 = np.asarray(list(q01), dtype=np.float64)
        self.q99 = np.asarray(list(q99), dtype=np.float64)
        if self.q01.shape != self.q99.shape or self.q01.ndim != 1:
            raise ValueError(
                f"q01 and q99 must be 1-D of equal length, got {self.q01.shape} and {self.q99.shape}"
            )
        if (
            not np.all(np.isfinite(self.q01))
            or not np.all(np.isfinite(self.q99))
            or np.any(self.q99 < self.q01)
        ):
            raise ValueError("normalization statistics must be finite with q99 >= q01")

    @classmethod
    def from_actions(cls, actions: np.ndarray) -> ActionNormalizer:
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[0] == 0:
            raise ValueError(f"need a non-empty (N, action_dim) array, got {actions.shape}")
        return cls(np.quantile(actions, 0.01, axis=0), np.quantile(actions, 0.99, axis=0))

    @property
    def dim(self) -> int:
        return int(self.q01.shape[0])

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        """Robot units -> [-1, 1] (clipped). Dims with q01 == q99 map to 0."""
        actions = np.asarray(actions, dtype=np.float64)
        span = self.q99 - self.q01
        scaled = 2.0 * (actions - self.q01) / np.maximum(span, _EPS) - 1.0
        return np.clip(np.where(span > _EPS, scaled, 0.0), -1.0, 1.0)

    def unnormalize(self, normalized: np.ndarray) -> np.ndarray:
        """[-1, 1] -> robot units."""
        normalized = np.clip(np.asarray(normalized, dtype=np.float64), -1.0, 1.0)
        return self.q01 + (normalized + 1.0) * 0.5 * (self.q99 - self.q01)

    def to_dict(self) -> dict[str, list[float]]:
        return {"q01": self.q01.tolist(), "q99": self.q99.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> ActionNormalizer:
        try:
            return cls(data["q01"], data["q99"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"normalization statistics need 'q01' and 'q99' lists ({exc})") from None

    @property
    def content_hash(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return tagged_sha256(text.encode())
