"""Simulated steps per second and rendering ms per frame of a simulated arm: as shipped vs our settings.

Both variants run in this one process on the same machine, one after the other, so their ratio is
meaningful even on a loaded machine. "package" is the env exactly as its package renders it
(shadows, 8x multisampling, full CAD meshes); "config" applies the robot config's render options
(`mujoco_shadows`, `mujoco_multisample`, `mujoco_mesh_cell_m`; wmpo_core/mujoco_render.py).
A step is one control step of the scripted expert with its camera frame, as every recorder,
evaluation and rollout pays it. Mesa's llvmpipe is limited to one thread (`LP_NUM_THREADS=1`,
unless set) so the figure is per core.

    MUJOCO_GL=osmesa python bench/bench_sim.py --robot so101_sim_near --steps 200
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("LP_NUM_THREADS", "1")
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


from machine import describe
from wmpo_core.robot_config import load_robot_config
from wmpo_core.sim_env import SimArm


def measure(robot: str, steps: int, package_settings: bool) -> dict[str, float]:
    config = load_robot_config(robot)
    if package_settings:
        driver = config.driver.model_copy(
            update={"mujoco_shadows": True, "mujoco_multisample": True, "mujoco_mesh_cell_m": None}
        )
        config = config.model_copy(update={"driver": driver})
        # The package's own defaults are shadows on and 8x multisampling; SimArm leaves them as they are.
    arm = SimArm(config)
    base = arm.env.unwrapped
    seed, done = 0, 0
    arm.reset(seed=seed)
    t0 = time.perf_counter()
    while done < steps:
        obs = arm.step(arm.expert_action())
        done += 1
        if obs.terminated or obs.truncated or obs.success:
            seed += 1
            arm.reset(seed=seed)
    step_s = (time.perf_counter() - t0) / steps
    frames = min(steps, 100)
    t0 = time.perf_counter()
    for _ in range(frames):
        base.render()
    render_s = (time.perf_counter() - t0) / frames
    arm.close()
    return {
        "steps_per_s": 1.0 / step_s,
        "render_ms": 1000 * render_s,
        "physics_and_rest_ms": 1000 * max(step_s - render_s, 0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--robot", default="so101_sim_near")
    parser.add_argument(
        "--steps", type=int, default=200, help="control steps per variant (expert episodes, reset on success)"
    )
    args = parser.parse_args()
    print(f"machine: {describe()}")
    print(
        f"MUJOCO_GL={os.environ['MUJOCO_GL']} LP_NUM_THREADS={os.environ['LP_NUM_THREADS']} "
        f"robot={args.robot} steps={args.steps}"
    )
    results = {name: measure(args.robot, args.steps, name == "package") for name in ("package", "config")}
    print(f"{'settings':<10} {'steps/s':>8} {'render ms/frame':>16} {'rest ms/step':>13}")
    for name, r in results.items():
        print(f"{name:<10} {r['steps_per_s']:8.1f} {r['render_ms']:16.1f} {r['physics_and_rest_ms']:13.1f}")
    speedup = results["config"]["steps_per_s"] / results["package"]["steps_per_s"]
    print(
        f"speed-up (config / package steps per second): {speedup:.1f}x; load average after: "
        f"{os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
