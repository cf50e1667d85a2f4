"""Query serving: the ~/ground action (one query on one camera or several, feedback per
stage and with the points streamed so far, cancel) and topic mode (~/query: one query
re-run every `query_period` s on every camera, ~/<camera>/query on that camera only; its
streamed points go to ~/partial_grounding). Both are answered on the QueryWorker's
inference thread (see its queue policy: goals FIFO, the cameras' continuous runs least
recently served first), over each camera's window as it is when the query's turn comes;
results go out through the node's Outputs.
"""
from __future__ import annotations

import queue
import time
from typing import Callable

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from molmo2_ros.action import Ground
from molmo2_ros.core.answer_stream import PartialAnswer
from molmo2_ros.core.grounder import ground
from molmo2_ros.core.grounding import NS, Grounding, Task, Timings
from molmo2_ros.core.prompts import InvalidQuery, sanitize_query
from molmo2_ros.msg import Grounding as GroundingMsg
from molmo2_ros.ros.messages import partial_to_msgs
from molmo2_ros.ros.outputs import RESULTS_QOS
from molmo2_ros.ros.pipeline import Camera, Pipeline
from molmo2_ros.ros.query_worker import (ERROR_CANCELED, ERROR_EMPTY_WINDOW, ERROR_INVALID_QUERY,
                                         ERROR_NONE, ERROR_NOT_ACTIVE, Outcome, Query,
                                         QueryError, QueryWorker)
from molmo2_ros.ros.settings import Settings, check_goal_window, parse_task

STAGES = {"preprocessing": Ground.Feedback.STAGE_PREPROCESSING,
          "generating": Ground.Feedback.STAGE_GENERATING,
          "parsing": Ground.Feedback.STAGE_PARSING}
# The action's goal, result and cancel services keep every request until the executor
# takes it. The default (keep last 10) lets DDS overwrite the oldest waiting requests when
# a burst of goals arrives faster than the executor takes them: those clients never hear back.
ACTION_SERVICE_QOS = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.VOLATILE)
# Seconds a finished goal's result is kept for a late result request (rclpy: 900). Every
# kept goal is listed in each status message, published at every goal's acceptance and
# end: under bursts of goals 15 minutes' worth grew to thousands of entries per message.
RESULT_TIMEOUT_S = 30


def split_topic_query(text: str, default_task: Task) -> tuple[Task, str]:
    """'count: red circles' -> (COUNT, 'red circles'); text without a known task
    prefix keeps `default_task`."""
    head, sep, rest = text.partition(":")
    if sep:
        try:
            return parse_task(head), rest.strip()
        except ValueError:
            pass
    return default_task, text.strip()


class QueryServing:
    """The action server and the ~/query subscription, both made once and kept through
    every state, so a query while inactive still gets an answer (ERROR_NOT_ACTIVE) instead
    of silence; the inference worker and the topic-mode timer, made at activate (`start`)
    and stopped at deactivate (`stop`). Queries run over the pipeline's window and backend;
    each success goes to `publish` (which returns the message sent), the continuous query's
    streamed answer so far to `publish_partial` (an action goal's goes out as feedback);
    `empty_window_reason` says why a query found no frames of a camera, `stopped` why a
    camera counts as stopped ("" while it does not). `node` is the rclpy node the entities
    belong to."""

    def __init__(self, node: Node, pipeline: Pipeline, publish: Callable[[Grounding, Query], GroundingMsg],
                 publish_partial: Callable[[PartialAnswer, Query], None],
                 empty_window_reason: Callable[[Camera], str], stopped: Callable[[Camera], str]):
        self._node = node
        self._pipeline = pipeline
        self._publish = publish
        self._publish_partial = publish_partial
        self._empty_window_reason = empty_window_reason
        self._stopped = stopped
        self.worker: QueryWorker | None = None
        self.last_timings = None
        self._last_answered: dict[str, tuple[float, Timings]] = {}   # camera -> (monotonic, timings)
        self._topic_queries: dict[str, tuple[Task, str]] = {}       # camera -> continuous query
        self._query_subs = []
        self._topic_runs = 0
        self._topic_timer = None
        self._group = ReentrantCallbackGroup()
        self._action_server = ActionServer(
            node, Ground, "~/ground", self._execute, callback_group=self._group,
            goal_callback=lambda goal: GoalResponse.ACCEPT,
            cancel_callback=lambda goal_handle: CancelResponse.ACCEPT,
            goal_service_qos_profile=ACTION_SERVICE_QOS, result_service_qos_profile=ACTION_SERVICE_QOS,
            cancel_service_qos_profile=ACTION_SERVICE_QOS, result_timeout=RESULT_TIMEOUT_S)
        self._query_sub = node.create_subscription(String, "~/query", lambda msg: self._on_query(msg, None),
                                                   RESULTS_QOS)

    def open(self) -> None:
        """Configure: with named cameras, each camera's ~/<camera>/query (kept to cleanup)."""
        self._query_subs = [self._node.create_subscription(
            String, camera.topic("query"), lambda msg, camera=camera: self._on_query(msg, [camera.name]),
            RESULTS_QOS) for camera in self._pipeline.cameras.values() if camera.name]

    def start(self, settings: Settings) -> None:
        self.worker = QueryWorker(self._run_query, capacity=settings.queue_size)
        self._topic_timer = self._node.create_timer(settings.query_period, self._topic_tick)

    def stop(self) -> None:
        """Stop topic mode's timer and the worker (which answers the waiting queries)."""
        if self._topic_timer is not None:
            self._node.destroy_timer(self._topic_timer)
            self._topic_timer = None
        if self.worker is not None:
            self.worker.stop(timeout=30.0)
            self.worker = None

    def set_query_period(self, period: float) -> None:
        if self._topic_timer is not None:
            self._topic_timer.timer_period_ns = round(period * NS)

    def diagnostics(self) -> dict[str, str]:
        """The worker's queue, and the last answer's stage timings."""
        worker, timings = self.worker, self.last_timings
        values = {"queue_length": str(worker.queue_length if worker else 0),
                  "inferring": str(bool(worker and worker.busy))}
        if timings is not None:
            for stage in ("queue_wait", "preprocess", "generation", "parse"):
                values[f"last_{stage}_s"] = f"{getattr(timings, stage):.3f}"
        return values

    def camera_diagnostics(self, camera: Camera) -> dict[str, str]:
        """A camera's continuous query and its last answer: when, and how long it took."""
        topic = self._topic_queries.get(camera.name)
        values = {"continuous_query": f"{topic[0].value}: {topic[1]}" if topic else ""}
        if camera.name in self._last_answered:
            at, timings = self._last_answered[camera.name]
            values["last_answer_age_s"] = f"{time.monotonic() - at:.2f}"
            values["last_latency_s"] = f"{timings.queue_wait + timings.preprocess + timings.generation:.3f}"
        return values

    def close(self) -> None:
        """Cleanup: the cameras' query topics go; the next configure starts from the
        `query` parameter."""
        for sub in self._query_subs:
            self._node.destroy_subscription(sub)
        self._query_subs = []
        self._topic_queries = {}
        self._last_answered = {}

    # --- one query --------------------------------------------------------------------
    def _check_query(self, text: str, task) -> Task:
        """The query's Task, or QueryError(ERROR_INVALID_QUERY) saying what is wrong."""
        try:
            sanitize_query(text)
            return parse_task(task)
        except ValueError as exc:  # InvalidQuery is a ValueError
            raise QueryError(ERROR_INVALID_QUERY, str(exc)) from None

    def _cameras(self, names) -> tuple[str, ...]:
        """A goal's cameras (empty: the first), or QueryError(ERROR_INVALID_QUERY) naming
        the cameras there are."""
        cameras = self._pipeline.cameras
        asked = tuple(dict.fromkeys(names)) or (self._pipeline.first.name,)
        unknown = [name for name in asked if name not in cameras]
        if unknown:
            there = f"the cameras are {', '.join(map(repr, cameras))}" if self._pipeline.first.name else \
                "this node has one camera and no `cameras` parameter: leave the goal's cameras empty"
            raise QueryError(ERROR_INVALID_QUERY, f"unknown camera {', '.join(map(repr, unknown))}: {there}")
        return asked

    def _run_query(self, query: Query) -> list[Grounding]:
        """On the worker thread: select each asked camera's window now (the newest
        frames), every one before the first answer (a camera without frames, or stopped,
        fails the query at once), and ground them one after another (the backends answer
        one window at a time)."""
        pipeline = self._pipeline
        backend, settings = pipeline.backend, pipeline.settings
        if backend is None or settings is None or not pipeline.active:
            raise QueryError(ERROR_NOT_ACTIVE, "the node is not active")
        cameras = [pipeline.cameras[name] for name in query.cameras]
        for camera in cameras:
            query.frames[camera.name] = camera.window.select(
                max_frames=query.max_frames or settings.max_frames,
                seconds=query.window_seconds or settings.window_seconds)
        empty = [why for c in cameras
                 if (why := self._stopped(c) or ("" if query.frames[c.name] else self._empty_window_reason(c)))]
        if empty:
            raise QueryError(ERROR_EMPTY_WINDOW, "; ".join(empty))
        return [self._ground(query, camera, backend, settings) for camera in cameras]

    def _ground(self, query: Query, camera: Camera, backend, settings: Settings) -> Grounding:
        frames = query.frames[camera.name]
        queue_wait = time.monotonic() - query.submitted
        on_points = query.on_points
        try:
            grounding = ground(backend, frames, query.text, query.task,
                               max_new_tokens=settings.max_new_tokens, progress=query.on_stage,
                               should_stop=query.canceled.is_set,
                               on_points=on_points and (lambda new, partial: on_points(camera.name, new, partial)))
        except InvalidQuery as exc:
            raise QueryError(ERROR_INVALID_QUERY, str(exc)) from None
        grounding.timings.queue_wait = queue_wait
        grounding.camera = camera.name
        grounding.frame_id = grounding.frame_id or frames[-1].frame_id
        grounding.model = grounding.model or backend.model_id
        grounding.backend = grounding.backend or backend.name
        self.last_timings = grounding.timings
        self._last_answered[camera.name] = (time.monotonic(), grounding.timings)
        return grounding

    # --- the action -------------------------------------------------------------------
    def _execute(self, goal_handle) -> Ground.Result:
        """Action goal: queue it, relay stages as feedback and cancel requests to the
        worker, and finish with a result (a grounding or an error code + message)."""
        goal, accepted = goal_handle.request, time.monotonic()
        events: queue.Queue = queue.Queue()
        query_id = bytes(goal_handle.goal_id.uuid).hex()
        try:
            if not self._pipeline.active or self.worker is None:
                raise QueryError(ERROR_NOT_ACTIVE, "the node is not active (lifecycle state "
                                                   "unconfigured/inactive); activate it first")
            task = self._check_query(goal.query, goal.task)
            cameras = self._cameras(goal.cameras)
            try:
                check_goal_window(goal.window_seconds, goal.max_frames, self._pipeline.settings)
            except ValueError as exc:
                raise QueryError(ERROR_INVALID_QUERY, str(exc)) from None
        except QueryError as exc:
            goal_handle.abort()
            return Ground.Result(error_code=exc.code, error_message=str(exc))
        query = Query(query_id=query_id, text=goal.query, task=task, cameras=cameras,
                      window_seconds=goal.window_seconds, max_frames=goal.max_frames,
                      on_stage=lambda stage: events.put(("stage", stage)),
                      done=lambda outcome: events.put(("done", outcome)),
                      on_points=lambda camera, new, partial: events.put(("points", (camera, partial))))
        self._feedback(goal_handle, Ground.Feedback.STAGE_QUEUED, accepted)
        worker = self.worker
        if worker is None:
            goal_handle.abort()
            return Ground.Result(error_code=ERROR_NOT_ACTIVE, error_message="the node was deactivated")
        worker.submit(query)
        while True:
            try:
                kind, value = events.get(timeout=0.05)
            except queue.Empty:
                if goal_handle.is_cancel_requested:
                    query.canceled.set()
                continue
            if kind == "stage":
                if value in STAGES:
                    self._feedback(goal_handle, STAGES[value], accepted)
                continue
            if kind == "points":
                self._feedback(goal_handle, Ground.Feedback.STAGE_GENERATING, accepted, *value)
                continue
            outcome: Outcome = value
            break
        result = Ground.Result(error_code=outcome.error_code, error_message=outcome.error_message)
        if outcome.error_code == ERROR_NONE:
            result.groundings = [self._publish(grounding, query) for grounding in outcome.groundings]
            result.grounding = result.groundings[0]
            goal_handle.succeed()
        elif outcome.error_code == ERROR_CANCELED and goal_handle.is_cancel_requested:
            goal_handle.canceled()
        else:
            goal_handle.abort()
        return result

    def _feedback(self, goal_handle, stage: int, accepted: float, camera: str = "",
                  partial: PartialAnswer | None = None) -> None:
        """A stage, with `camera`'s streamed answer so far while generating (`partial`)."""
        feedback = Ground.Feedback(stage=stage, elapsed=time.monotonic() - accepted, camera=camera)
        if partial is not None:
            feedback.points, feedback.tracks = partial_to_msgs(partial)
        goal_handle.publish_feedback(feedback)

    # --- topic mode -------------------------------------------------------------------
    def _on_query(self, msg: String, cameras: list[str]) -> None:
        if not self._pipeline.active:
            self._node.get_logger().warning("a continuous query received while the node is not active; ignored")
            return
        self.set_topic_query(msg.data, cameras)

    def set_topic_query(self, text: str, cameras: list[str] | None = None) -> None:
        """Start (or with empty text: stop) continuous mode on `cameras` (None: all)."""
        log = self._node.get_logger()
        names = list(self._pipeline.cameras) if cameras is None else cameras
        where = "" if not self._pipeline.first.name else f" on {', '.join(names)}"
        if not text.strip():
            for name in names:
                self._topic_queries.pop(name, None)
            log.info(f"continuous query stopped{where}")
            return
        settings = self._pipeline.settings
        task, body = split_topic_query(text, parse_task(settings.query_task))
        try:
            self._check_query(body, task.value)
        except QueryError as exc:
            for name in names:
                self._topic_queries.pop(name, None)
            log.error(f"continuous query refused{where}: {exc}")
            return
        self._topic_queries.update(dict.fromkeys(names, (task, body)))
        log.info(f"continuous query{where}: {task.value} {body!r} every {settings.query_period} s")

    def _topic_tick(self) -> None:
        """Each camera with a continuous query and no run waiting gets one (the worker
        serves the waiting cameras least recently served first)."""
        worker = self.worker
        if worker is None:
            return
        for camera, (task, body) in list(self._topic_queries.items()):
            if worker.topic_pending((camera,)):
                continue
            self._topic_runs += 1
            query = Query(query_id=f"topic-{self._topic_runs}", text=body, task=task, cameras=(camera,))
            query.done = lambda outcome, query=query: self._on_topic_done(query, outcome)
            query.on_points = lambda camera, new, partial, query=query: self._publish_partial(partial, query)
            worker.submit_latest(query)

    def _on_topic_done(self, query: Query, outcome: Outcome) -> None:
        if outcome.error_code == ERROR_NONE:
            for grounding in outcome.groundings:
                self._publish(grounding, query)
        elif outcome.error_code != ERROR_CANCELED:
            self._node.get_logger().warning(f"continuous query {query.query_id}: {outcome.error_message}",
                                            throttle_duration_sec=5.0)
