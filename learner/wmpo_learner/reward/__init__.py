"""The success reward model: a VideoMAE video classifier on 8-frame clips.

It labels imagined episodes (GRPO in imagination) and unlabelled real ones (relabelling) as
success or failure, and says at which step success happened. Modules, in reading order:

- `windows`: the clip geometry and the detection rule (shared by training data and scoring).
- `preprocessing`: the one frame preprocessing used by training and scoring.
- `model`: the classifier, its single loss/scoring rule, batched sliding-window detection.
- `dataset`: clips from the episode store, episode-level hold-out split, class-balanced batches.
- `threshold`: episode-level precision/recall/F1 and the best-F1 threshold.
- `checkpoint`: save/load (safetensors + JSON, hashes verified).
- `train`: the training loop; `cli`: `wmpo reward`.

This package's `__init__` imports nothing heavy so that `wmpo reward --help` stays fast.
"""
