"""Test-session environment: isolated ROS 2 domain on loopback, offscreen MuJoCo, few threads."""

import os

import pytest

# Each pytest session gets its own DDS domain so concurrent runs on one machine never cross-talk.
os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _no_realtime_scheduling_leaks():
    """Tests that write LeRobot videos run its AV1 encoder, which (as root) leaves the calling thread
    under SCHED_FIFO 99; every later test and every process it starts would inherit that and starve
    the machine. Give the test process its scheduling back after each test."""
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    yield
    if os.sched_getscheduler(0) != policy or os.sched_getparam(0) != param:
        os.sched_setscheduler(0, policy, param)
