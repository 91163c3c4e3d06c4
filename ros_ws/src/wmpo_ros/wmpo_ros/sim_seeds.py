"""The sim arm's deterministic seed sequence, free of ROS.

Episode k of a run gets seed `base + k`, so a run of N episodes is reproduced by its first seed.
A scene no command has moved yet keeps its seed: the first reset after start-up (or after the
base is set again) really starts at `base`, however many resets came before it.
"""

from __future__ import annotations


class SeedSequence:
    def __init__(self, base: int):
        self.restart(base)

    def restart(self, base: int) -> None:
        """Start over at `base` (the `seed` parameter was set)."""
        self.base, self.episode, self.touched = base, 0, False

    def touch(self) -> None:
        """A command moved the scene: the next reset starts a new episode."""
        self.touched = True

    def next_seed(self) -> int:
        """The seed of the scene a reset makes now."""
        if self.touched:
            self.episode += 1
        self.touched = False
        return self.base + self.episode
