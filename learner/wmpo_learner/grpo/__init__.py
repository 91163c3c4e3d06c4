"""GRPO of the VLA in imagination (the world model) or in the simulator (the real-env baseline)."""
