"""The `molmo2_grounding` lifecycle node: camera frames in, grounded answers out.

configure: validate parameters, load the backend; activate: subscribe to the camera,
start the inference worker and topic mode; deactivate: stop them and free the backend
(GPU memory); cleanup/shutdown: release everything. With `autostart` (default) the
node configures and activates itself, so a plain run just works.

The node is a thin adapter: the frame window, prompting, parsing, mapping and the
camera-rate track propagation live in molmo2_ros.core. This module holds the lifecycle,
the backend and the parameters, and wires the parts of the node, each with one job:
ingest (camera -> frame window, tracking feed), serving (the action and topic mode;
inference runs on the QueryWorker thread, see its queue policy) and outputs (result
messages, debug image, markers, tracked objects, diagnostics).
Parameters, topics and QoS are documented in README.md and docs/node.md.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.exceptions import InvalidHandle
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn

from molmo2_ros.backends.trained_window import read_trained_window
from molmo2_ros.core.frame_window import FrameWindow
from molmo2_ros.core.grounding import Frame, Task
from molmo2_ros.core.propagation import TrackPropagator
from molmo2_ros.ros import live_params
from molmo2_ros.ros.depth_input import DepthInput
from molmo2_ros.ros.ingest import CameraIngest, image_qos, make_propagator, make_window
from molmo2_ros.ros.outputs import Outputs
from molmo2_ros.ros.serving import QueryServing
from molmo2_ros.ros.settings import PARAMETERS, Settings, resolve_window, validate

NODE_NAME = "molmo2_grounding"


class GroundingNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        for name, (default, meaning) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(
                description=meaning, dynamic_typing=True))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # What the parts share, read when they need it (live parameters replace the
        # window and propagator; cleanup drops them).
        self.settings: Settings | None = None
        self.backend = None
        self.ground = None
        self._trained_window = None    # what the model folder states, read at configure
        self.window_source = ""
        self.window: FrameWindow | None = None
        self.propagator: TrackPropagator | None = None
        self.depth: DepthInput | None = None   # with depth_topic: 3D positions
        self.active = False
        self.ingest = CameraIngest(self)
        self.serving = QueryServing(self)   # the action server and ~/query, kept through every state
        self.outputs = Outputs(self)
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
        self.window = make_window(s)
        self.propagator = make_propagator(s)
        self.depth = DepthInput(self, s) if s.depth_topic else None
        self.outputs.open(s)
        if s.query:
            self.serving.set_topic_query(s.query)
        return TransitionCallbackReturn.SUCCESS

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
        if s.backend == "openai":   # an inference server (docs/backends.md)
            options = {"url": s.server_url, "server_kind": s.server_kind, "encoding": s.server_encoding,
                       "timeout_s": s.server_timeout, "api_key_env": s.server_api_key_env,
                       "api_key_file": s.server_api_key_file}
        try:
            started = time.monotonic()
            self.backend = make_backend(s.backend, model, **options)
        except Exception as exc:
            self.get_logger().error(f"cannot load the {s.backend} backend for model {model!r}: "
                                    f"{type(exc).__name__}: {exc}")
            return False
        self.ground = ground
        self.get_logger().info(f"loaded {self.backend.name} backend, model {self.backend.model_id} "
                               f"in {time.monotonic() - started:.1f} s")
        health = getattr(self.backend, "health", "ok")   # a server backend: did its server answer?
        if health != "ok":
            self.get_logger().warning(f"server {self.backend.endpoint}: {health}; queries are answered "
                                      "ERROR_BACKEND until it answers")
        try:
            self._trained_window = read_trained_window(s.engine_dir or model)
        except ValueError as exc:
            self.get_logger().error(f"cannot read the model's trained window: {exc}")
            self._free_backend()
            return False
        # parameters left at 0 take the model's window (read from the parameters as they are now)
        declared = validate({n: self.get_parameter(n).value for n in PARAMETERS})
        self.settings, self.window_source = resolve_window(declared, self._trained_window)
        w = self.settings
        self.get_logger().info(f"window: {w.max_frames} frames, {w.window_seconds:g} s at {w.fps:g} fps, "
                               f"from {self.window_source}")
        from molmo2_ros.backends.memory_plan import plan_for_backend
        level, line = plan_for_backend(self.backend, frames=w.max_frames, max_new_tokens=w.max_new_tokens)
        getattr(self.get_logger(), level)(line)
        if w.warmup == "always" or (w.warmup == "auto" and self.backend.compiles_on_first_use):
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
            self.ground(self.backend, frames, "object", Task.POINT, max_new_tokens=s.max_new_tokens)
        except Exception as exc:
            self.get_logger().warning(f"warm-up failed: {type(exc).__name__}: {exc}")
            return
        self.get_logger().info(f"warm-up: {n} blank frames answered in {time.monotonic() - started:.1f} s")

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        s = self.settings
        if self.backend is None and not self._load_backend():  # freed by deactivate
            return TransitionCallbackReturn.FAILURE
        qos = image_qos(s)
        self.serving.start(s)
        kind, topic = self.ingest.start(s, qos, self.outputs.subscription_events())
        if self.depth is not None:
            self.depth.start(qos, self.outputs.subscription_events())
        self.active = True
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
        self.active = False
        self.ingest.stop()
        self.serving.stop()
        if self.window is not None:
            self.window.reset()
        if self.propagator is not None:
            self.propagator.reset()
        if self.depth is not None:
            self.depth.stop()

    def _free_backend(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def _release(self) -> None:
        self._stop_serving()
        self._free_backend()
        self.outputs.close()
        self.window = None
        self.propagator = None
        self.depth = None
        self.serving.forget_topic_query()

    # --- live parameters (ros2 param set; see live_params) ----------------------------
    def _on_set_parameters(self, parameters) -> SetParametersResult:
        current = {name: self.get_parameter(name).value for name in PARAMETERS}
        changes = {p.name: p.value for p in parameters if p.name in PARAMETERS
                   and (p.value != current[p.name] or type(p.value) is not type(current[p.name]))}
        state = "active" if self.active else "inactive" if self.window is not None else "unconfigured"
        reason = live_params.refusal(changes, self.get_fully_qualified_name(), state)
        if reason is None and changes and state != "unconfigured":
            new, self.window_source = resolve_window(validate({**current, **changes}), self._trained_window)
            self._apply(new, set(changes))
        return SetParametersResult(successful=reason is None, reason=reason or "")

    def _apply(self, new: Settings, names: set[str]) -> None:
        """Apply validated parameter changes to the configured node now."""
        self.settings = new
        if names & live_params.WINDOW:
            self.window = make_window(new)  # restarts empty
        if names & live_params.TRACKING:
            self.propagator = make_propagator(new)  # tracks restart at the next answer
        if "diagnostics_period" in names:
            self.outputs.set_diagnostics_period(new.diagnostics_period)
        if "query_period" in names:
            self.serving.set_query_period(new.query_period)
        if "query" in names:
            self.serving.set_topic_query(new.query)
        self.get_logger().info(f"parameters applied: {', '.join(sorted(names))}")


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
