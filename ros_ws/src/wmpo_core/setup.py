"""ament_python package of the WMPO stack's shared core (no ROS dependency, no nodes).

Robot config schema, episode store, policy interface and backends, safety filter. Its Python
dependencies (zarr, pydantic, lerobot, torch, mujoco, ...) are not rosdep keys: install them
with pip from the repository's pyproject.toml (see docs/robot.md).
"""

from setuptools import find_packages, setup

PACKAGE = "wmpo_core"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
    ],
    package_data={PACKAGE: ["*.json", "*.yaml", "robot_configs/*.yaml"]},
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="WMPO stack developers",
    maintainer_email="wmpo-stack@users.noreply.github.com",
    description="Shared core of the WMPO stack: robot configs, episode store, policy I/O, safety filter.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": ["wmpo = wmpo_core.cli:main"],
        "wmpo.commands": ["wmpo_core = wmpo_core.commands:COMMANDS"],
    },
)
