"""GraphScheduler: lanes, light requests before the queued chunks of heavy ones."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tfnegseq.serving.limits import run_in_chunks
from tfnegseq.serving.scheduler import GraphScheduler

TIMEOUT = 10.0


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class Gate:
    """A run function that records its calls and blocks each until released."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self._release: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def run(self, name: str) -> str:
        with self._lock:
            self.started.append(name)
            event = self._release.setdefault(name, threading.Event())
        assert event.wait(TIMEOUT), f"{name} never released"
        return name

    def release(self, name: str) -> None:
        with self._lock:
            self._release.setdefault(name, threading.Event()).set()


def _start(scheduler: GraphScheduler, gate: Gate, name: str, light: bool) -> threading.Thread:
    thread = threading.Thread(target=scheduler.wrap(gate.run, light), args=(name,))
    thread.start()
    return thread


def test_one_lane_serves_light_before_queued_heavy_and_fifo_within_each_class() -> None:
    scheduler, gate = GraphScheduler(1), Gate()
    threads = [_start(scheduler, gate, "heavy-0", light=False)]
    _wait_until(lambda: gate.started == ["heavy-0"], "the first run")
    # queued while heavy-0 holds the only lane, in this arrival order
    for name, light in [
        ("heavy-1", False),
        ("light-0", True),
        ("heavy-2", False),
        ("light-1", True),
    ]:
        threads.append(_start(scheduler, gate, name, light))
        queued = len(threads) - 1
        _wait_until(lambda n=queued: scheduler.waiting == n, f"{name} queued")
    expected = ["heavy-0", "light-0", "light-1", "heavy-1", "heavy-2"]
    for i, name in enumerate(expected):
        _wait_until(lambda i=i: len(gate.started) == i + 1, f"run {i}")
        assert gate.started == expected[: i + 1]  # nothing else got the lane meanwhile
        gate.release(name)
    for t in threads:
        t.join(TIMEOUT)
    assert scheduler.waiting == 0


def test_lanes_bound_the_runs_in_progress() -> None:
    scheduler, gate = GraphScheduler(2), Gate()
    threads = [_start(scheduler, gate, f"r{i}", light=True) for i in range(3)]
    _wait_until(lambda: len(gate.started) == 2 and scheduler.waiting == 1, "two running")
    time.sleep(0.05)
    assert len(gate.started) == 2  # the third waits for a lane
    gate.release(gate.started[0])
    _wait_until(lambda: len(gate.started) == 3, "the third run")
    for name in ("r0", "r1", "r2"):
        gate.release(name)
    for t in threads:
        t.join(TIMEOUT)


def test_a_light_request_runs_between_the_chunks_of_a_heavy_one() -> None:
    """run_in_chunks with a scheduled run: a light request that arrives while chunk 0
    of a 4-chunk request runs is scored before chunk 1, and the heavy request's scores
    are still those of the whole batch."""
    scheduler = GraphScheduler(1)
    order: list[str] = []
    chunk_running, light_queued = threading.Event(), threading.Event()

    def heavy_run(inputs):
        order.append(f"heavy rows {int(inputs['x'][0])}-{int(inputs['x'][-1])}")
        if len(order) == 1:
            chunk_running.set()
            assert light_queued.wait(TIMEOUT)  # chunk 1 asks for the lane after this returns
        return {"y": inputs["x"] * 2.0}

    def light_run(inputs):
        order.append("light")
        return {"y": inputs["x"] + 1.0}

    x = np.arange(8, dtype=np.float32)
    result: dict = {}
    heavy = threading.Thread(
        target=lambda: result.update(run_in_chunks(scheduler.wrap(heavy_run, False), {"x": x}, 2))
    )
    heavy.start()
    assert chunk_running.wait(TIMEOUT)
    light_out: dict = {}
    light = threading.Thread(
        target=lambda: light_out.update(scheduler.wrap(light_run, True)({"x": x[:1]}))
    )
    light.start()
    _wait_until(lambda: scheduler.waiting >= 1, "the light request queued")
    light_queued.set()
    heavy.join(TIMEOUT)
    light.join(TIMEOUT)
    assert order == [
        "heavy rows 0-1",
        "light",
        "heavy rows 2-3",
        "heavy rows 4-5",
        "heavy rows 6-7",
    ]
    np.testing.assert_array_equal(result["y"], x * 2.0)
    np.testing.assert_array_equal(light_out["y"], [1.0])


def test_a_failing_run_frees_its_lane() -> None:
    scheduler = GraphScheduler(1)

    def boom():
        raise RuntimeError("graph failed")

    with pytest.raises(RuntimeError, match="graph failed"):
        scheduler.wrap(boom, True)()
    assert scheduler.wrap(lambda: "ok", False)() == "ok"


@pytest.mark.parametrize("lanes", [0, -1, 1.5, True])
def test_lanes_must_be_a_positive_integer(lanes) -> None:
    with pytest.raises(ValueError, match="`lanes` must be a positive integer"):
        GraphScheduler(lanes)
