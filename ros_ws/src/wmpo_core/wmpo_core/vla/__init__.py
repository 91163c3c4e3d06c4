"""Vision-language-action policy with discrete action tokens and exact log-probabilities.

- `model.VLA`: transformers VLM backbone + parallel action-token head (the learner's interface).
- `action_tokens.ActionTokenizer`: q01/q99 normalization and uniform bins.
- `checkpoint`: the verified safetensors + JSON checkpoint directory (registers with load_policy).
- `policy.VLAPolicy`: the robot-facing `wmpo_core.policy.Policy`.
- `config`: model configs and the shipped recipes ('tiny', 'realistic').
Details and the measured base policy: docs/vla.md.
"""
