"""The top layer: `wmpo run`, the whole lifelong loop on one machine.

It is the one package that uses both sides at once: it brings up the robot's ROS 2 graph
(`wmpo_ros`) and the learner's service and stages (`wmpo_learner`) side by side. Neither side
imports it (docs/architecture.md; checked by import-linter).
"""
