"""Pairing commands with the observations they answered, by publication order (no ROS needed)."""

from __future__ import annotations

import numpy as np
import pytest
from wmpo_ros.step_sync import StepSynchronizer

MS = 1_000_000  # ns


def obs(sync: StepSynchronizer, sent_ms: int, stamp: float, value: int, cams=("front",)) -> None:
    for cam in cams:
        sync.add_frame(cam, sent_ms * MS, stamp, np.full((2, 2, 3), value, np.uint8))
    sync.add_state(sent_ms * MS + 1, stamp, np.full(3, value, float))


def test_command_pairs_with_the_newest_observation_published_before_it_whatever_the_arrival_order():
    sync = StepSynchronizer(["front"], settle_s=10.0)
    obs(sync, 0, 0.0, 0)
    sync.add_command(15 * MS, np.array([1.0]), wall=0.0)  # arrives before observation 1 (published at 10 ms)
    assert sync.pop_ready(wall_now=0.0) == []  # not final: a message published before it may still arrive
    obs(sync, 10, 0.1, 1)
    assert sync.pop_ready(wall_now=0.0) == []
    obs(sync, 20, 0.2, 2)  # published after the command: now the pairing is final
    (step,) = sync.pop_ready(wall_now=0.0)
    assert step.images["front"][0, 0, 0] == 1 and step.state[0] == 1
    assert step.time == pytest.approx(0.1) and step.image_times == {"front": 0.1} and step.settled


def test_settle_timeout_emits_with_the_newest_inputs():
    sync = StepSynchronizer(["front", "wrist"], settle_s=0.5)
    obs(sync, 0, 0.0, 0, cams=("front", "wrist"))
    sync.add_command(5 * MS, np.array([1.0]), wall=100.0)
    assert sync.pop_ready(wall_now=100.4) == []
    (step,) = sync.pop_ready(wall_now=100.5)
    assert not step.settled and step.images["wrist"][0, 0, 0] == 0


def test_explicit_command_time_is_kept():
    sync = StepSynchronizer(["front"], settle_s=0.0)
    obs(sync, 0, 5.0, 0)
    sync.add_command(5 * MS, np.array([1.0]), wall=0.0, time=5.02)
    (step,) = sync.pop_ready(wall_now=1.0)
    assert step.time == 5.02 and step.state_time == 5.0


def test_commands_before_any_observation_are_counted_not_recorded():
    sync = StepSynchronizer(["front"], settle_s=0.0)
    sync.add_command(5 * MS, np.array([1.0]), wall=0.0)
    obs(sync, 10, 0.1, 1)
    assert sync.pop_ready(wall_now=1.0) == [] and sync.unpaired_commands == 1


def test_success_published_before_the_command_flags_it_and_episodes_forget_it():
    sync = StepSynchronizer(["front"], settle_s=10.0)
    obs(sync, 0, 0.0, 0)
    sync.add_success(2 * MS, False)
    sync.add_command(5 * MS, np.array([1.0]), wall=0.0)
    obs(sync, 10, 0.1, 1)
    sync.add_success(11 * MS, True)
    sync.add_command(15 * MS, np.array([2.0]), wall=0.0)
    obs(sync, 20, 0.2, 2)
    assert (
        sync.pop_ready(wall_now=0.0)[0].success_seen is False
    )  # command 2 not final: success stream not past it
    sync.add_success(21 * MS, False)
    (second,) = sync.pop_ready(wall_now=0.0)
    assert second.success_seen is True
    sync.new_episode()
    sync.add_command(25 * MS, np.array([3.0]), wall=0.0)
    obs(sync, 30, 0.3, 3)
    sync.add_success(31 * MS, False)
    assert sync.pop_ready(wall_now=0.0)[0].success_seen is False


def test_history_is_bounded_and_final_flushes_everything():
    sync = StepSynchronizer(["front"], settle_s=10.0, history=4)
    for i in range(10):
        obs(sync, 10 * i, 0.1 * i, i)
    assert len(sync._frames["front"].sent) == 4
    sync.add_command(1000 * MS, np.array([0.0]), wall=0.0)
    (step,) = sync.pop_ready(wall_now=0.0, final=True)
    assert step.images["front"][0, 0, 0] == 9
