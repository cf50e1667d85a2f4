"""The `molmo2_grounding` lifecycle node: camera frames in, grounded answers out.

configure: validate parameters, load the backend; activate: subscribe to the camera,
start the inference worker and topic mode; deactivate: stop them and free the backend
(GPU memory); cleanup/shutdown: release everything. With `autostart` (default) the
node configures and activates itself, so a plain run just works.

The node is a thin adapter: the frame window, prompting, parsing, mapping and the
camera-rate track propagation live in molmo2_ros.core; inference runs on the
QueryWorker thread (see its queue policy).
Parameters, topics and QoS are documented in README.md and docs/node.md.
"""
from __future__ import annotations

import argparse
import queue
import sys
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.exceptions import InvalidHandle
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from molmo2_ros.action import Ground
from molmo2_ros.core.frame_window import FrameWindow, Ingest
from molmo2_ros.core.grounding import Frame, Grounding, Task
from molmo2_ros.core.prompts import InvalidQuery, sanitize_query
from molmo2_ros.core.propagation import TrackPropagator
from molmo2_ros.msg import Grounding as GroundingMsg
from molmo2_ros.msg import TrackedObjectArray
from molmo2_ros.core.image_conversion import ImageTooLarge, compressed_to_rgb, image_to_rgb
from molmo2_ros.ros.depth_input import DepthInput
from molmo2_ros.ros.image_messages import rgb_to_image
from molmo2_ros.ros.messages import (from_time, grounding_markers, grounding_to_msg, to_time,
                                     tracked_to_msg)
from molmo2_ros.ros.query_worker import (ERROR_CANCELED, ERROR_EMPTY_WINDOW, ERROR_INVALID_QUERY,
                                         ERROR_NONE, ERROR_NOT_ACTIVE, Outcome, Query,
                                         QueryError, QueryWorker)
from molmo2_ros.ros import live_params
from molmo2_ros.backends.trained_window import read_trained_window
from molmo2_ros.ros.settings import (PARAMETERS, Settings, check_goal_window, parse_task, resolve_window,
                                     validate)

try:  # Jazzy and later
    from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import PublisherEventCallbacks, SubscriptionEventCallbacks

NODE_NAME = "molmo2_grounding"
STAGES = {"preprocessing": Ground.Feedback.STAGE_PREPROCESSING,
          "generating": Ground.Feedback.STAGE_GENERATING,
          "parsing": Ground.Feedback.STAGE_PARSING}
RESULTS_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE, history=HistoryPolicy.KEEP_LAST)
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


class GroundingNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        for name, (default, meaning) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(
                description=meaning, dynamic_typing=True))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.settings: Settings | None = None
        self._backend = None
        self._trained_window = None    # what the model folder states, read at configure
        self._window_source = ""
        self._ground = None
        self._window: FrameWindow | None = None
        self._propagator: TrackPropagator | None = None
        self._depth: DepthInput | None = None   # with depth_topic: 3D positions
        self._worker: QueryWorker | None = None
        self._active = False
        self._image_sub = None
        self._topic_timer = None
        self._diag_timer = None
        self._result_publishers = []   # not `_publishers`: rclpy's Node keeps its own list there
        self._topic_query: tuple[Task, str] | None = None
        self._topic_runs = 0
        self._frames_in = 0            # camera messages received since the last diagnostics
        self._frames_total = 0         # camera messages received in all
        self._frames_since_activation = 0
        self._frames_in_since = time.monotonic()
        self._bad_frames = 0
        self._too_large_frames = 0
        self._last_frame_error = ""        # since activation
        self._last_timings = None
        self._ingest_group = MutuallyExclusiveCallbackGroup()
        self._action_group = ReentrantCallbackGroup()
        # Created once and kept through every state, so a query while inactive still
        # gets an answer (ERROR_NOT_ACTIVE) instead of silence.
        self._action_server = ActionServer(
            self, Ground, "~/ground", self._execute, callback_group=self._action_group,
            goal_callback=lambda goal: GoalResponse.ACCEPT,
            cancel_callback=lambda goal_handle: CancelResponse.ACCEPT,
            goal_service_qos_profile=ACTION_SERVICE_QOS, result_service_qos_profile=ACTION_SERVICE_QOS,
            cancel_service_qos_profile=ACTION_SERVICE_QOS, result_timeout=RESULT_TIMEOUT_S)
        self._query_sub = self.create_subscription(String, "~/query", self._on_query, RESULTS_QOS)
        if self.get_parameter("autostart").value is True:
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()

    @property
    def executor_threads(self) -> int:
        """Each waiting goal holds one executor thread; keep some for ingest and timers."""
        return int(self.get_parameter("queue_size").value) + 4

    # --- lifecycle ------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            self.settings = validate({n: self.get_parameter(n).value for n in PARAMETERS})
        except ValueError as exc:
            self.get_logger().error(f"invalid parameters: {exc}")
            return TransitionCallbackReturn.FAILURE
        if not self._load_backend():
            return TransitionCallbackReturn.FAILURE
        s = self.settings   # the window resolved against the model's
        self._window = self._make_window(s)
        self._propagator = self._make_propagator(s)
        self._depth = DepthInput(self, s) if s.depth_topic else None
        pub_events = PublisherEventCallbacks(incompatible_qos=self._on_incompatible_qos)
        self._grounding_pub = self.create_publisher(GroundingMsg, "~/grounding", RESULTS_QOS,
                                                    event_callbacks=pub_events)
        self._answer_pub = self.create_publisher(String, "~/answer", RESULTS_QOS, event_callbacks=pub_events)
        self._debug_pub = self.create_publisher(Image, "~/debug_image", qos_profile_sensor_data)
        self._markers_pub = self.create_publisher(MarkerArray, "~/markers", RESULTS_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", RESULTS_QOS)
        self._tracked_pub = self.create_publisher(TrackedObjectArray, "~/tracked_objects", RESULTS_QOS,
                                                  event_callbacks=pub_events)
        self._result_publishers = [self._grounding_pub, self._answer_pub, self._debug_pub,
                                   self._markers_pub, self._diag_pub, self._tracked_pub]
        self._diag_timer = self.create_timer(s.diagnostics_period, self._publish_diagnostics)
        if s.query:
            self._set_topic_query(s.query)
        return TransitionCallbackReturn.SUCCESS

    @staticmethod
    def _make_window(s: Settings) -> FrameWindow:
        return FrameWindow(fps=s.fps, max_seconds=s.window_seconds, max_frames=s.max_frames,
                           max_side=s.max_side, jump_back_s=s.jump_back_s, jump_ahead_s=s.jump_ahead_s)

    @staticmethod
    def _make_propagator(s: Settings) -> TrackPropagator:
        return TrackPropagator(
            enable=s.tracking_enable, max_points=s.tracking_max_points, max_age=s.tracking_max_age,
            window=s.tracking_window, flow_max_side=s.tracking_max_side, buffer_mb=s.tracking_buffer_mb)

    def _load_backend(self) -> bool:
        s = self.settings
        from molmo2_ros.backends.factory import make_backend
        from molmo2_ros.core.grounder import ground

        model = s.model
        if not model and s.backend == "torch":   # engine backends run their engines as exported
            from molmo2_ros.backends.default_model import default_model
            model, is_random = default_model()
            if is_random:
                self.get_logger().warning(
                    f"no model given and none packaged: using the tiny RANDOM model {model} "
                    "(runs the pipeline, answers are meaningless); set the 'model' parameter")
        options = {"device": s.device or None, "engine_dir": s.engine_dir or None}
        if s.backend == "torch":
            options["dtype"] = None if s.dtype == "auto" else s.dtype
        if s.backend == "tensorrt":
            options["build_if_needed"] = s.force_engine_update
        try:
            started = time.monotonic()
            self._backend = make_backend(s.backend, model, **options)
        except Exception as exc:
            self.get_logger().error(f"cannot load the {s.backend} backend for model {model!r}: "
                                    f"{type(exc).__name__}: {exc}")
            return False
        self._ground = ground
        self.get_logger().info(f"loaded {self._backend.name} backend, model {self._backend.model_id} "
                               f"in {time.monotonic() - started:.1f} s")
        try:
            self._trained_window = read_trained_window(s.engine_dir or model)
        except ValueError as exc:
            self.get_logger().error(f"cannot read the model's trained window: {exc}")
            self._free_backend()
            return False
        # parameters left at 0 take the model's window (read from the parameters as they are now)
        declared = validate({n: self.get_parameter(n).value for n in PARAMETERS})
        self.settings, self._window_source = resolve_window(declared, self._trained_window)
        w = self.settings
        self.get_logger().info(f"window: {w.max_frames} frames, {w.window_seconds:g} s at {w.fps:g} fps, "
                               f"from {self._window_source}")
        from molmo2_ros.backends.memory_plan import plan_for_backend
        level, line = plan_for_backend(self._backend, frames=w.max_frames, max_new_tokens=w.max_new_tokens)
        getattr(self.get_logger(), level)(line)
        if w.warmup == "always" or (w.warmup == "auto" and self._backend.compiles_on_first_use):
            self._warm_up()
        return True

    def _warm_up(self) -> None:
        """Answer one query over a full window of blank frames, so that compilation for
        the steady-state input length happens now rather than in the first real query.
        A failure is logged; queries still run (and report their own errors)."""
        s = self.settings
        n = max(1, min(s.max_frames, int(s.window_seconds * s.fps)))
        width = s.max_side or 640
        height = width * 3 // 4
        blank = np.zeros((height, width, 3), np.uint8)
        frames = [Frame(image=blank, stamp_ns=int(i * 1e9 / s.fps), source_size=(width, height))
                  for i in range(n)]
        started = time.monotonic()
        try:
            self._ground(self._backend, frames, "object", Task.POINT, max_new_tokens=s.max_new_tokens)
        except Exception as exc:
            self.get_logger().warning(f"warm-up failed: {type(exc).__name__}: {exc}")
            return
        self.get_logger().info(f"warm-up: {n} blank frames answered in {time.monotonic() - started:.1f} s")

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        s = self.settings
        if self._backend is None and not self._load_backend():  # freed by deactivate
            return TransitionCallbackReturn.FAILURE
        qos = QoSProfile(depth=s.image_depth, history=HistoryPolicy.KEEP_LAST,
                         durability=DurabilityPolicy.VOLATILE,
                         reliability=ReliabilityPolicy.RELIABLE if s.image_reliability == "reliable"
                         else ReliabilityPolicy.BEST_EFFORT)
        topic, kind = s.image_topic, Image
        if s.compressed:
            kind = CompressedImage
            topic = topic if topic.endswith("/compressed") else topic.rstrip("/") + "/compressed"
        self._worker = QueryWorker(self._run_query, capacity=s.queue_size)
        self._image_sub = self.create_subscription(
            kind, topic, self._on_image, qos, callback_group=self._ingest_group,
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos))
        if self._depth is not None:
            self._depth.start(qos, SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos))
        self._topic_timer = self.create_timer(s.query_period, self._topic_tick)
        self._frames_since_activation = 0
        self._last_frame_error = ""
        self._active = True
        self.get_logger().info(f"active: {kind.__name__} on {self.resolve_topic_name(topic)} "
                               f"({s.image_reliability}, depth {s.image_depth}); window {s.fps} fps, "
                               f"{s.window_seconds} s, {s.max_frames} frames")
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._stop_serving()
        self._free_backend()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_serving(self) -> None:
        self._active = False
        if self._image_sub is not None:
            self.destroy_subscription(self._image_sub)
            self._image_sub = None
        if self._topic_timer is not None:
            self.destroy_timer(self._topic_timer)
            self._topic_timer = None
        if self._worker is not None:
            self._worker.stop(timeout=30.0)
            self._worker = None
        if self._window is not None:
            self._window.reset()
        if self._propagator is not None:
            self._propagator.reset()
        if self._depth is not None:
            self._depth.stop()

    def _free_backend(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def _release(self) -> None:
        self._stop_serving()
        self._free_backend()
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        for publisher in self._result_publishers:
            self.destroy_publisher(publisher)
        self._result_publishers = []
        self._window = None
        self._propagator = None
        self._depth = None
        self._topic_query = None

    # --- live parameters (ros2 param set; see live_params) ----------------------------
    def _on_set_parameters(self, parameters) -> SetParametersResult:
        current = {name: self.get_parameter(name).value for name in PARAMETERS}
        changes = {p.name: p.value for p in parameters if p.name in PARAMETERS
                   and (p.value != current[p.name] or type(p.value) is not type(current[p.name]))}
        state = "active" if self._active else "inactive" if self._window is not None else "unconfigured"
        reason = live_params.refusal(changes, self.get_fully_qualified_name(), state)
        if reason is None and changes and state != "unconfigured":
            new, self._window_source = resolve_window(validate({**current, **changes}), self._trained_window)
            self._apply(new, set(changes))
        return SetParametersResult(successful=reason is None, reason=reason or "")

    def _apply(self, new: Settings, names: set[str]) -> None:
        """Apply validated parameter changes to the configured node now."""
        self.settings = new
        if names & live_params.WINDOW:
            self._window = self._make_window(new)  # restarts empty
        if names & live_params.TRACKING:
            self._propagator = self._make_propagator(new)  # tracks restart at the next answer
        if "diagnostics_period" in names:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = self.create_timer(new.diagnostics_period, self._publish_diagnostics)
        if "query_period" in names and self._topic_timer is not None:
            self.destroy_timer(self._topic_timer)
            self._topic_timer = self.create_timer(new.query_period, self._topic_tick)
        if "query" in names:
            self._set_topic_query(new.query)
        self.get_logger().info(f"parameters applied: {', '.join(sorted(names))}")

    # --- ingest ---------------------------------------------------------------------
    def _on_image(self, msg) -> None:
        self._frames_in += 1
        self._frames_total += 1
        self._frames_since_activation += 1
        window, propagator, max_side = self._window, self._propagator, self.settings.max_side
        max_pixels = self.settings.max_image_pixels
        if window is None or propagator is None:
            return
        convert = compressed_to_rgb if isinstance(msg, CompressedImage) else image_to_rgb
        converted = {}

        def rgb(side: int):
            """(RGB, source size) shrunk to `side`, converted once per size."""
            if side not in converted:
                converted[side] = convert(msg, side, max_pixels)
            return converted[side]

        try:
            stamp_ns = from_time(msg.header.stamp)
            decision = window.add(stamp_ns, lambda: rgb(max_side), frame_id=msg.header.frame_id)
            # Tracking takes every frame, kept by the window or not (not an out-of-order
            # or duplicate one), so tracks move at camera rate.
            track = propagator.enable and decision.outcome is not Ingest.REJECTED
            image, source_size = rgb(propagator.flow_max_side) if track else (None, None)
        except ValueError as exc:
            if isinstance(exc, ImageTooLarge):
                self._too_large_frames += 1
            else:
                self._bad_frames += 1
            self._last_frame_error = str(exc)
            self.get_logger().warning(f"dropped a camera frame: {exc}", throttle_duration_sec=2.0)
            return
        if decision.outcome is Ingest.REJECTED:
            self._last_frame_error = decision.reason
            self.get_logger().warning(f"dropped a camera frame: {decision.reason}", throttle_duration_sec=2.0)
        elif decision.outcome is Ingest.RESET:
            self.get_logger().warning(decision.reason)
        depth = self._depth
        if depth is not None and decision.keep:
            depth.want(stamp_ns, msg.header.frame_id, rgb(max_side)[1])  # converted already
        if track:
            self._track(propagator, msg.header.frame_id, stamp_ns, image, source_size)

    def _track(self, propagator: TrackPropagator, frame_id: str, stamp_ns: int, image, source_size) -> None:
        """Carry the propagated objects onto this camera frame and publish them for it
        (once an answer has been anchored). Runs on the camera callback: flow for one
        frame only; latency compensation runs on the result path (`_anchor`)."""
        try:
            warnings = propagator.add_frame(image, stamp_ns, source_size)
        except ValueError as exc:  # e.g. an image too small to track in; the window has it
            self.get_logger().warning(f"tracking: frame not used: {exc}", throttle_duration_sec=2.0)
            return
        for warning in warnings:
            self.get_logger().warning(f"tracking: {warning}", throttle_duration_sec=2.0)
        snap = propagator.current()
        if snap.answer_id and snap.stamp_ns == stamp_ns:
            if self._depth is not None:
                snap = self._depth.place_tracked(snap, frame_id, source_size)
            self._tracked_pub.publish(tracked_to_msg(snap, frame_id))

    # --- queries --------------------------------------------------------------------
    def _check_query(self, text: str, task) -> Task:
        """The query's Task, or QueryError(ERROR_INVALID_QUERY) saying what is wrong."""
        try:
            sanitize_query(text)
            return parse_task(task)
        except ValueError as exc:  # InvalidQuery is a ValueError
            raise QueryError(ERROR_INVALID_QUERY, str(exc)) from None

    def _run_query(self, query: Query) -> Grounding:
        """On the worker thread: select the window now (the newest frames) and ground."""
        backend, window = self._backend, self._window
        if backend is None or window is None:
            raise QueryError(ERROR_NOT_ACTIVE, "the node is not active")
        s = self.settings
        frames = window.select(max_frames=query.max_frames or s.max_frames,
                               seconds=query.window_seconds or s.window_seconds)
        if not frames:
            reason = "no camera frames buffered yet"
            if self._last_frame_error:
                reason += f" (last frame dropped: {self._last_frame_error})"
            elif self._frames_since_activation == 0:
                reason += f" (no frame has arrived on {self.resolve_topic_name(s.image_topic)} since activation)"
            raise QueryError(ERROR_EMPTY_WINDOW, reason)
        query.frames = frames
        queue_wait = time.monotonic() - query.submitted
        try:
            grounding = self._ground(backend, frames, query.text, query.task,
                                     max_new_tokens=s.max_new_tokens, progress=query.on_stage,
                                     should_stop=query.canceled.is_set)
        except InvalidQuery as exc:
            raise QueryError(ERROR_INVALID_QUERY, str(exc)) from None
        grounding.timings.queue_wait = queue_wait
        grounding.frame_id = grounding.frame_id or frames[-1].frame_id
        grounding.model = grounding.model or backend.model_id
        grounding.backend = grounding.backend or backend.name
        self._last_timings = grounding.timings
        return grounding

    def _execute(self, goal_handle) -> Ground.Result:
        """Action goal: queue it, relay stages as feedback and cancel requests to the
        worker, and finish with a result (a grounding or an error code + message)."""
        goal, accepted = goal_handle.request, time.monotonic()
        events: queue.Queue = queue.Queue()
        query_id = bytes(goal_handle.goal_id.uuid).hex()
        try:
            if not self._active or self._worker is None:
                raise QueryError(ERROR_NOT_ACTIVE, "the node is not active (lifecycle state "
                                                   "unconfigured/inactive); activate it first")
            task = self._check_query(goal.query, goal.task)
            try:
                check_goal_window(goal.window_seconds, goal.max_frames, self.settings)
            except ValueError as exc:
                raise QueryError(ERROR_INVALID_QUERY, str(exc)) from None
        except QueryError as exc:
            goal_handle.abort()
            return Ground.Result(error_code=exc.code, error_message=str(exc))
        query = Query(query_id=query_id, text=goal.query, task=task,
                      window_seconds=goal.window_seconds, max_frames=goal.max_frames,
                      on_stage=lambda stage: events.put(("stage", stage)),
                      done=lambda outcome: events.put(("done", outcome)))
        self._feedback(goal_handle, Ground.Feedback.STAGE_QUEUED, accepted)
        worker = self._worker
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
            outcome: Outcome = value
            break
        result = Ground.Result(error_code=outcome.error_code, error_message=outcome.error_message)
        if outcome.error_code == ERROR_NONE:
            result.grounding = self._publish_results(outcome.grounding, query)
            goal_handle.succeed()
        elif outcome.error_code == ERROR_CANCELED and goal_handle.is_cancel_requested:
            goal_handle.canceled()
        else:
            goal_handle.abort()
        return result

    def _feedback(self, goal_handle, stage: int, accepted: float) -> None:
        goal_handle.publish_feedback(Ground.Feedback(stage=stage, elapsed=time.monotonic() - accepted))

    def _on_query(self, msg: String) -> None:
        if not self._active:
            self.get_logger().warning("~/query received while the node is not active; ignored")
            return
        self._set_topic_query(msg.data)

    def _set_topic_query(self, text: str) -> None:
        """Start (or with empty text: stop) continuous mode."""
        if not text.strip():
            self._topic_query = None
            self.get_logger().info("continuous query stopped")
            return
        task, body = split_topic_query(text, parse_task(self.settings.query_task))
        try:
            self._check_query(body, task.value)
        except QueryError as exc:
            self._topic_query = None
            self.get_logger().error(f"continuous query refused: {exc}")
            return
        self._topic_query = (task, body)
        self.get_logger().info(f"continuous query: {task.value} {body!r} every {self.settings.query_period} s")

    def _topic_tick(self) -> None:
        worker, topic = self._worker, self._topic_query
        if topic is None or worker is None or worker.topic_pending():
            return
        self._topic_runs += 1
        query = Query(query_id=f"topic-{self._topic_runs}", text=topic[1], task=topic[0])
        query.done = lambda outcome: self._on_topic_done(query, outcome)
        worker.submit_latest(query)

    def _on_topic_done(self, query: Query, outcome: Outcome) -> None:
        if outcome.error_code == ERROR_NONE:
            self._publish_results(outcome.grounding, query)
        elif outcome.error_code != ERROR_CANCELED:
            self.get_logger().warning(f"continuous query {query.query_id}: {outcome.error_message}",
                                      throttle_duration_sec=5.0)

    # --- outputs --------------------------------------------------------------------
    def _publish_results(self, grounding: Grounding, query: Query) -> GroundingMsg:
        """Publish a successful result (worker thread for continuous mode, the goal's
        executor thread for actions; never the camera callback) and anchor tracking on it."""
        if self._depth is not None:
            grounding = self._depth.place(grounding, query.frames)
        msg = grounding_to_msg(grounding, query.query_id)
        self._grounding_pub.publish(msg)
        self._answer_pub.publish(String(data=grounding.answer))
        newest = query.frames[-1]
        if self._markers_pub.get_subscription_count() > 0:
            self._markers_pub.publish(grounding_markers(grounding, newest.source_size))
        if self._debug_pub.get_subscription_count() > 0:
            self._debug_pub.publish(rgb_to_image(self._annotate(grounding, newest),
                                                 to_time(newest.stamp_ns), newest.frame_id))
        self._anchor(grounding, query.query_id)
        return msg

    def _anchor(self, grounding: Grounding, query_id: str) -> None:
        """Re-anchor the propagated tracks on an answer with points (point, count and
        track tasks; an `ask` answer has none and leaves them alone). Latency
        compensation runs here, outside the propagator's lock, so camera frames keep
        flowing meanwhile."""
        propagator = self._propagator
        if propagator is None or not propagator.enable or not self._active or grounding.task == Task.ASK:
            return
        try:
            warnings = propagator.anchor(grounding, query_id)
        except Exception as exc:  # tracking must never cost the answer, already published
            self.get_logger().error(f"tracking: answer {query_id} not anchored: {type(exc).__name__}: {exc}")
            return
        for warning in warnings:
            self.get_logger().warning(f"tracking: {warning}", throttle_duration_sec=2.0)

    @staticmethod
    def _annotate(grounding: Grounding, frame):
        from molmo2_ros.annotate import annotate_frame

        return annotate_frame(frame, grounding)

    def _on_incompatible_qos(self, event) -> None:
        policy = getattr(event, "last_policy_kind", "?")
        self.get_logger().warning(
            f"QoS incompatible with a peer (policy {policy}, {event.total_count} so far): no "
            "messages flow between them. For a reliable-only camera set image_reliability; "
            "result topics are reliable, so subscribe to them reliably.")

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        rate = self._frames_in / max(now - self._frames_in_since, 1e-6)
        self._frames_in, self._frames_in_since = 0, now
        window = self._window
        stats = window.stats() if window is not None else None
        worker = self._worker
        values = {
            "state": "active" if self._active else "inactive",
            "backend": self._backend.name if self._backend else "",
            "model": self._backend.model_id if self._backend else "",
            "ingest_rate_hz": f"{rate:.2f}",
            "frames_received": str(self._frames_total),
            "window_frames": str(stats.frames if stats else 0),
            "window_max_frames": str(stats.max_frames if stats else 0),
            "window_source": self._window_source,
            "window_span_s": f"{stats.span_s:.2f}" if stats else "0",
            "window_bytes": str(stats.bytes if stats else 0),
            "frames_rejected": str(stats.rejected if stats else 0),
            "window_resets": str(stats.resets if stats else 0),
            "frames_malformed": str(self._bad_frames),
            "frames_too_large": str(self._too_large_frames),
            "last_frame_error": self._last_frame_error,
            "queue_length": str(worker.queue_length if worker else 0),
            "inferring": str(bool(worker and worker.busy)),
        }
        propagator = self._propagator
        if propagator is not None and propagator.enable:
            frames, nbytes = propagator.buffered()
            values["tracking_frames"], values["tracking_bytes"] = str(frames), str(nbytes)
            values["tracked_objects"] = str(len(propagator.current().objects))
        if self._depth is not None:
            values.update(self._depth.diagnostics())
        if self._last_timings is not None:
            for stage in ("queue_wait", "preprocess", "generation", "parse"):
                values[f"last_{stage}_s"] = f"{getattr(self._last_timings, stage):.3f}"
        if not self._active:
            level, message = DiagnosticStatus.WARN, "not active"
        elif stats is None or stats.frames == 0:
            level, message = DiagnosticStatus.WARN, "no camera frames in the window"
        else:
            level, message = DiagnosticStatus.OK, f"{stats.frames} frames buffered"
        status = DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name().lstrip('/')}: grounding",
                                  hardware_id=values["backend"], message=message,
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)


def main(argv: list[str] | None = None) -> int:
    rclpy.init(args=sys.argv if argv is None else argv)
    node = None
    try:
        node = GroundingNode()
        executor = MultiThreadedExecutor(num_threads=node.executor_threads)
        executor.add_node(node)
        _spin(executor, node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node._release()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def _spin(executor, node) -> None:
    """Spin until shutdown. rclpy's executor raises InvalidHandle when an entity with event
    handlers (every publisher, the camera subscriptions) is destroyed by a lifecycle
    transition, on another executor thread, while it builds its wait set (ros2/rclpy#1142).
    The entity is already gone from the node, so the next wait set is right: spin on."""
    while True:
        try:
            executor.spin()
            return
        except InvalidHandle as exc:
            if not executor.context.ok():
                raise
            node.get_logger().warning(f"executor: {exc} (an entity destroyed during a transition); spinning on")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`molmo2-ros node [--ros-args ...]`."""
    parser.add_argument("--ros-args", dest="ros_args", nargs=argparse.REMAINDER, default=None,
                        help="ROS arguments, to the end of the line, e.g. --ros-args --params-file "
                             "config/molmo2_grounding.yaml -p model:=/path/to/model")


def run(args: argparse.Namespace) -> int:
    ros_args = [] if args.ros_args is None else ["--ros-args", *args.ros_args]
    return main([NODE_NAME, *ros_args])
