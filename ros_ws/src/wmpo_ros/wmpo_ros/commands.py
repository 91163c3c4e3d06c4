"""The `wmpo` commands of the robot side, registered under the `wmpo.commands` entry point.

name -> (module, one-line help); the module defines `add_arguments(parser, command)` and
`run(args)`. Kept free of imports so that `wmpo --help` lists every command without loading any.
"""

COMMANDS: dict[str, tuple[str, str]] = {
    "robot": ("wmpo_ros.bringup", "bring up an arm (sim or real) behind the standard topics"),
    "teleop": ("wmpo_ros.bringup", "bring up the arm and teleoperate it to record demonstrations"),
    "deploy": ("wmpo_ros.bringup", "bring up the arm and run a policy on it, recording episodes"),
    "outbox": (
        "wmpo_ros.outbox_cli",
        "a store's upload queue: push it to the learner with no robot running, or show it",
    ),
    "policy": (
        "wmpo_ros.policy_cli",
        "the robot's running policy: show its versions, roll back to the previous one",
    ),
}
