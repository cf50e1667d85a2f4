"""Runs queries on one inference thread, so no ROS callback ever waits for the model.

Queue policy (queries arriving faster than answers):
- action goals wait in a FIFO of `capacity` entries; a goal arriving while it is full
  is answered at once with ERROR_BUSY (never silently dropped, never blocking);
- the continuous query has one slot per camera, keep-latest: a new run replaces that
  camera's pending one, so topic mode always answers on the newest window and never
  piles up;
- pending goals run before pending topic runs; among cameras with a pending topic run,
  the one served least recently goes first (round robin while inference is the
  bottleneck: no camera starves another, whatever their frame rates).
Every submitted query gets exactly one `Outcome` through its `done` callback: a
grounding, or an error code (Ground.Result.ERROR_*) and message. A canceled query
still waiting is answered ERROR_CANCELED without running; `stop` (deactivate) answers the
waiting ones and the running one ERROR_NOT_ACTIVE.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from molmo2_ros.action import Ground
from molmo2_ros.core.answer_stream import PartialAnswer
from molmo2_ros.core.grounding import Grounding, Task

ERROR_NONE = Ground.Result.ERROR_NONE
ERROR_NOT_ACTIVE = Ground.Result.ERROR_NOT_ACTIVE
ERROR_EMPTY_WINDOW = Ground.Result.ERROR_EMPTY_WINDOW
ERROR_INVALID_QUERY = Ground.Result.ERROR_INVALID_QUERY
ERROR_BACKEND = Ground.Result.ERROR_BACKEND
ERROR_CANCELED = Ground.Result.ERROR_CANCELED
ERROR_BUSY = Ground.Result.ERROR_BUSY


class QueryError(Exception):
    """A query that cannot be answered, with the Ground.Result error code to report."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class Outcome:
    groundings: list[Grounding] = field(default_factory=list)   # one per asked camera
    error_code: int = ERROR_NONE
    error_message: str = ""


@dataclass
class Query:
    query_id: str
    text: str
    task: Task
    cameras: tuple[str, ...] = ("",)   # names in the node's `cameras` ("": its only camera)
    window_seconds: float = 0.0
    max_frames: int = 0
    # Called from the worker thread: stage names of molmo2_ros.core.backend (+ "parsing").
    on_stage: Callable[[str], None] = lambda stage: None
    done: Callable[[Outcome], None] = lambda outcome: None
    # Called from the worker thread while the answer streams: (camera, new points, PartialAnswer).
    on_points: Callable[[str, list, PartialAnswer], None] | None = None
    submitted: float = field(default_factory=time.monotonic)
    canceled: threading.Event = field(default_factory=threading.Event)
    frames: dict = field(default_factory=dict)  # camera -> the window snapshot it was answered on


class QueryWorker:
    """One inference thread; `run(query) -> [Grounding per camera]` does the work (raising
    QueryError for known failures; any other exception is reported as ERROR_BACKEND)."""

    def __init__(self, run: Callable[[Query], list[Grounding]], capacity: int = 2, name: str = "molmo2-inference"):
        if capacity < 1:
            raise ValueError(f"queue capacity must be >= 1, got {capacity}")
        self._run = run
        self.capacity = capacity
        self._goals: deque[Query] = deque()
        self._topics: dict[tuple[str, ...], Query] = {}   # the cameras' keep-latest slots
        self._served: dict[tuple[str, ...], int] = {}     # slot -> when it last ran (a count of runs)
        self._runs = 0
        self._running: Query | None = None
        self._stopping = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, query: Query) -> bool:
        """Queue an action query; False (and ERROR_BUSY through `done`) when full."""
        with self._cond:
            if self._stopping:
                reason = (ERROR_NOT_ACTIVE, "the node is shutting down")
            elif len(self._goals) >= self.capacity:
                reason = (ERROR_BUSY, f"query queue full ({self.capacity} waiting, 1 running); "
                                      "try again when an answer has arrived")
            else:
                self._goals.append(query)
                self._cond.notify()
                return True
        query.done(Outcome(error_code=reason[0], error_message=reason[1]))
        return False

    def submit_latest(self, query: Query) -> None:
        """Put a topic query in its cameras' keep-latest slot (replacing a pending one)."""
        with self._cond:
            replaced = self._topics.get(query.cameras)
            self._topics[query.cameras] = query
            self._cond.notify()
        if replaced is not None:
            replaced.done(Outcome(error_code=ERROR_CANCELED, error_message="replaced by a newer topic query"))

    def topic_pending(self, cameras: tuple[str, ...]) -> bool:
        with self._cond:
            return cameras in self._topics

    @property
    def queue_length(self) -> int:
        with self._cond:
            return len(self._goals) + len(self._topics)

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._running is not None

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._goals and not self._topics:
                    self._cond.wait()
                if self._stopping:
                    return
                if self._goals:
                    query = self._goals.popleft()
                else:
                    slot = min(self._topics, key=lambda key: self._served.get(key, -1))
                    query = self._topics.pop(slot)
                    self._runs += 1
                    self._served[slot] = self._runs
                self._running = query
            try:
                query.done(self._answer(query))
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()

    def _answer(self, query: Query) -> Outcome:
        if query.canceled.is_set():
            return Outcome(error_code=ERROR_CANCELED, error_message="canceled while queued")
        try:
            groundings = self._run(query)
        except QueryError as exc:
            return Outcome(error_code=exc.code, error_message=str(exc))
        except Exception as exc:  # the node must answer, whatever the model did
            return Outcome(error_code=ERROR_BACKEND, error_message=f"{type(exc).__name__}: {exc}")
        if query.canceled.is_set():
            with self._cond:
                stopping = self._stopping
            if stopping:
                return Outcome(error_code=ERROR_NOT_ACTIVE, error_message="the node was deactivated during inference")
            return Outcome(error_code=ERROR_CANCELED, error_message="canceled during inference")
        return Outcome(groundings=groundings)

    def stop(self, timeout: float | None = None) -> None:
        """Answer every waiting query ERROR_NOT_ACTIVE, cancel the running one (the
        backend stops at its next decode step; it is answered ERROR_NOT_ACTIVE too) and
        end the thread."""
        with self._cond:
            self._stopping = True
            if self._running is not None:
                self._running.canceled.set()
            waiting = list(self._goals) + list(self._topics.values())
            self._goals.clear()
            self._topics.clear()
            self._cond.notify_all()
        for query in waiting:
            query.done(Outcome(error_code=ERROR_NOT_ACTIVE, error_message="the node was deactivated"))
        self._thread.join(timeout)
