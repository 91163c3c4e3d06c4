"""Offboard learner: SFT, world model and Policy Behavior Alignment, reward model, GRPO, service."""
