"""The policy node's control loop without ROS (wmpo_ros.policy_control.ControlLoop): ticks and
messages go in as plain numbers, commands come out through `send`; the policy is a real object of
the Policy protocol whose chunks the test chooses, verified by the real PolicyHolder."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from wmpo_core.policy import PolicyLoadError
from wmpo_core.robot_config import load_robot_config
from wmpo_ros.policy_control import ControlLoop
from wmpo_ros.policy_holder import PolicyHolder

CONFIG = load_robot_config("so101_sim")
PERIOD = CONFIG.control_period_s
DIM = CONFIG.action.dim


class CountingPolicy:
    """Chunks of `chunk_size` actions whose first dim counts the actions handed out (0.1, 0.2, ...);
    `gate` (when set) makes predict_chunk wait, as a slow model would."""

    chunk_size = 4

    def __init__(self, version: str = "count-v1"):
        self.version = version
        self.calls = 0
        self.gate: threading.Event | None = None
        self.computing = threading.Event()

    def reset(self) -> None:
        self.calls = 0

    def predict_chunk(self, obs) -> np.ndarray:
        if self.gate is not None and not obs.extra.get("probe"):
            self.computing.set()
            self.gate.wait(5.0)
        chunk = np.zeros((self.chunk_size, DIM))
        chunk[:, 0] = 0.01 * (self.calls * self.chunk_size + np.arange(1, self.chunk_size + 1))
        self.calls += 1
        return chunk


def make_loop(policy: CountingPolicy, sim_time: bool = False, swap_at: str = "episode"):
    sent: list[tuple[np.ndarray, bool]] = []
    events: list[tuple[str, str]] = []
    holder = PolicyHolder(CONFIG, loader=lambda spec, config: policy)
    holder.swap(holder.load("counting"))
    loop = ControlLoop(
        CONFIG,
        holder,
        refill=1,
        watchdog_s=3 * PERIOD,
        sim_time=sim_time,
        swap_at=swap_at,
        send=lambda command, hold: sent.append((command.copy(), hold)),
        announce=lambda version: events.append(("version", version)),
        on_event=lambda kind, message: events.append((kind, message)),
    )
    return loop, sent, events


def observe(loop: ControlLoop, t: float) -> None:
    for camera in CONFIG.cameras:
        loop.on_frame(camera.name, t, np.zeros(camera.shape, np.uint8), time.perf_counter())
    loop.on_state(t, np.zeros(len(CONFIG.joints)))


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + 5.0
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def running(policy: CountingPolicy, sim_time: bool = False):
    """`make_loop` with an episode started at t = 0 and its first command sent."""
    loop, sent, events = make_loop(policy, sim_time=sim_time)
    observe(loop, 0.0)
    loop.start_episode()
    loop.tick(0.0)
    wait_for(lambda: len(sent) == 1, "the first command")
    return loop, sent, events


def test_no_policy_no_episode():
    holder = PolicyHolder(CONFIG)
    loop = ControlLoop(
        CONFIG, holder, refill=1, watchdog_s=0.3, sim_time=False, swap_at="episode",
        send=lambda c, h: None, announce=lambda v: None, on_event=lambda k, m: None,
    )  # fmt: skip
    with pytest.raises(PolicyLoadError, match="no policy loaded"):
        loop.start_episode()
    assert not loop.enabled
    loop.close()
    with pytest.raises(ValueError, match="swap_at"):
        ControlLoop(
            CONFIG, holder, refill=1, watchdog_s=0.3, sim_time=False, swap_at="never",
            send=lambda c, h: None, announce=lambda v: None, on_event=lambda k, m: None,
        )  # fmt: skip


def test_each_tick_gets_the_next_action_and_a_late_tick_is_served_when_its_chunk_arrives():
    policy = CountingPolicy()
    loop, sent, events = make_loop(policy)
    observe(loop, 0.0)
    policy.gate = threading.Event()  # the first chunk is slow: tick 0 has nothing to send yet
    loop.start_episode()
    loop.tick(0.0)
    assert sent == [] and loop.inflight
    policy.gate.set()
    wait_for(lambda: len(sent) == 1, "the late tick's command")
    assert loop.counters["late_ticks"] == 1 and sent[0][0][0] == pytest.approx(0.01)
    policy.gate = None
    for k in range(1, 6):
        observe(loop, k * PERIOD)
        loop.tick(k * PERIOD)
        wait_for(lambda k=k: len(sent) == k + 1 and not loop.inflight, f"tick {k}'s command and chunk")
    firsts = [command[0] for command, hold in sent]
    assert not any(hold for _, hold in sent)
    # ticks 0..2 from the first chunk; with 1 action left tick 2 asked for the next chunk, which
    # holds the actions of ticks 2..5 and replaces the queue: tick 3 gets its second action; tick 4
    # leaves 1 again and asks for the third chunk, whose second action is tick 5's
    assert firsts == pytest.approx([0.01, 0.02, 0.03, 0.06, 0.07, 0.10])
    assert loop.counters["ticks"] == 6 and loop.counters["commands"] == 6
    assert ("version", "count-v1") in events
    loop.tick(5 * PERIOD)  # the same tick again (the timer and an episode start): served once
    assert loop.counters["ticks"] == 6
    loop.close()


def test_stale_inputs_hold_the_last_command_and_drop_the_queue():
    loop, sent, events = running(CountingPolicy())
    loop.tick(PERIOD)  # inputs 1 period old: still fresh
    wait_for(lambda: len(sent) == 2, "the second command")
    loop.tick(4 * PERIOD)  # nothing new for 4 periods > watchdog (3)
    assert loop.watchdog_state == "stale" and loop.queue_depth == 0
    held, hold = sent[-1]
    assert hold and loop.counters["holds"] == 1
    for i, dim in enumerate(CONFIG.action.dims):  # deltas stop, absolute dims keep the last command
        assert held[i] == (0.0 if dim.kind == "delta" else sent[-2][0][i]), dim.name
    assert [k for k, _ in events if k == "stale"] == ["stale"]
    loop.tick(5 * PERIOD)  # still stale: holds again, reported once
    assert loop.counters["holds"] == 2 and [k for k, _ in events].count("stale") == 1
    observe(loop, 6 * PERIOD)
    loop.tick(6 * PERIOD)
    assert loop.watchdog_state == "ok"
    loop.close()


def test_in_sim_time_a_tick_waits_for_its_own_observation():
    loop, sent, _ = running(CountingPolicy(), sim_time=True)
    loop.tick(4 * PERIOD)  # its observation is still in flight: no hold, the tick waits
    assert loop.waiting_for_observation and len(sent) == 1 and loop.counters["holds"] == 0
    observe(loop, 4 * PERIOD)  # ... and is answered when it arrives
    wait_for(lambda: len(sent) == 2, "the waiting tick's command")
    assert not sent[1][1] and not loop.waiting_for_observation
    loop.close()


def test_a_non_finite_action_is_dropped_and_held():
    policy = CountingPolicy()
    loop, sent, events = running(policy)
    policy.predict_chunk = lambda obs: np.full((4, DIM), np.nan)
    for k in range(1, 5):
        observe(loop, k * PERIOD)
        loop.tick(k * PERIOD)
    wait_for(lambda: loop.counters["dropped_non_finite"] >= 1, "a dropped action")
    assert all(np.all(np.isfinite(c)) for c, _ in sent)
    assert any(hold for _, hold in sent) and ("non_finite" in [k for k, _ in events])
    loop.close()


def test_stopping_drops_a_chunk_in_flight():
    policy = CountingPolicy()
    loop, sent, _ = make_loop(policy)
    observe(loop, 0.0)
    policy.gate = threading.Event()
    loop.start_episode()
    loop.tick(0.0)
    assert policy.computing.wait(5.0)  # the model is computing the chunk when the episode stops
    loop.stop_episode()
    policy.gate.set()
    time.sleep(0.05)
    assert sent == [] and not loop.enabled and loop.queue_depth == 0
    loop.tick(PERIOD)
    assert loop.counters["ticks"] == 1  # no episode, no tick
    loop.close()
