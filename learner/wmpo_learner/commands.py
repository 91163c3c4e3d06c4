"""The `wmpo` commands of the learner, registered under the `wmpo.commands` entry point.

name -> (module, one-line help); the module defines `add_arguments(parser, command)` and
`run(args)`. Kept free of imports so that `wmpo --help` lists every command without loading any.
"""

COMMANDS: dict[str, tuple[str, str]] = {
    "sft": ("wmpo_learner.sft", "behaviour cloning of the VLA on demonstrations"),
    "eval": ("wmpo_learner.sim_eval", "evaluate a policy checkpoint in the simulator"),
    "wm-train": ("wmpo_learner.world_model.train", "pretrain the video world model on stored episodes"),
    "align": (
        "wmpo_learner.world_model.train",
        "Policy Behavior Alignment: fine-tune the world model on rollouts",
    ),
    "wm-eval": ("wmpo_learner.world_model.evaluate", "world-model quality on held-out episodes"),
    "wm-few-step": (
        "wmpo_learner.world_model.few_step",
        "measure few-step samplers against the default on held-out rollouts; certify the cheapest match",
    ),
    "reward": ("wmpo_learner.reward.cli", "train and threshold the success reward model"),
    "grpo": ("wmpo_learner.grpo.cli", "GRPO of the policy in imagination (or in the simulator)"),
    "imagination-check": (
        "wmpo_learner.imagination_check",
        "can GRPO trust imagination? outcome agreement and policy ranking on real rollouts",
    ),
    "iterate": ("wmpo_learner.iterate", "one lifelong round: align, reward, GRPO, evaluate, new version"),
    "serve": ("wmpo_learner.service.app", "the learner service: episode ingestion and policy registry"),
}
