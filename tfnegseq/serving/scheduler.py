"""Admission of graph runs: a bounded number at a time, small requests first.

Without it every predict thread runs its graph as soon as its request is decoded, so
a client sending maximal-work requests keeps several big graph runs on the CPU at
once and a one-user request shares the cores with all of them (issue 13 measured its
p99 at 8x the unloaded value). `GraphScheduler` gives the graph `lanes` slots. A
request that fits one graph run (`light`: at most `Limits.chunk_examples` examples) waits
only for the runs in progress; a bigger request takes a slot per chunk
(`limits.run_in_chunks`) and, between chunks, lets every waiting light request go first.
Within each class slots are granted in arrival order.

A heavy request can wait as long as light requests keep every lane busy: then the
server is saturated by light traffic and the heavy request is the one to delay.

    scheduler = GraphScheduler(lanes=1)
    with scheduler.slot(light=True):
        outputs = servable.run(key, inputs)
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

LIGHT, HEAVY = 0, 1


class GraphScheduler:
    """At most `lanes` graph runs at once; light requests before heavy chunks.

    Args:
        lanes: int. Graph runs allowed at the same time (each run already uses the
            CPU's intra-op threads). Must be >= 1.
    """

    def __init__(self, lanes: int) -> None:
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
            raise ValueError(f"`lanes` must be a positive integer. Received: lanes={lanes}")
        self.lanes = lanes
        self._free = lanes
        self._waiting: list[tuple[int, int]] = []  # heap of (class, arrival)
        self._arrivals = itertools.count()
        self._cond = threading.Condition()

    @property
    def waiting(self) -> int:
        """Runs waiting for a slot now."""
        with self._cond:
            return len(self._waiting)

    @contextlib.contextmanager
    def slot(self, light: bool) -> Iterator[None]:
        """Holds one lane for the body of the `with` block.

        Args:
            light: bool. True for a request scored in a single graph run; such runs go
                before every waiting chunk of a bigger request.
        """
        ticket = (LIGHT if light else HEAVY, next(self._arrivals))
        with self._cond:
            heapq.heappush(self._waiting, ticket)
            self._cond.wait_for(lambda: self._free > 0 and self._waiting[0] == ticket)
            heapq.heappop(self._waiting)
            self._free -= 1
            self._cond.notify_all()  # the next waiter may take another free lane
        try:
            yield
        finally:
            with self._cond:
                self._free += 1
                self._cond.notify_all()

    def wrap(self, run: Callable[..., T], light: bool) -> Callable[..., T]:
        """`run`, each call holding a lane (one call per graph run or chunk)."""

        def scheduled(*args, **kwargs) -> T:
            with self.slot(light):
                return run(*args, **kwargs)

        return scheduled
