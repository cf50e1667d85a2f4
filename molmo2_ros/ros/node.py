"""The `molmo2_grounding` lifecycle node: camera frames in, grounded answers out.

configure: validate parameters, load the backend (once, whatever the number of cameras),
make each camera's buffers; activate: subscribe to the cameras, start the inference worker
and topic mode; deactivate: stop them and free the backend
(GPU memory); cleanup/shutdown: release everything. With `autostart` (default) the
node configures and activates itself, so a plain run just works.

The node is a thin adapter: the frame window, prompting, parsing, mapping and the
camera-rate track propagation live in molmo2_ros.core. This module holds the lifecycle,
the backend and the parameters, and wires the parts of the node, each with one job:
ingest (each camera -> its frame window, tracking feed), serving (the action and topic mode;
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
from rclpy.parameter import Parameter

from molmo2_ros.backends.trained_window import TrainedWindow, read_trained_window
from molmo2_ros.core.backend import Backend
from molmo2_ros.core.grounder import ground
from molmo2_ros.core.grounding import Frame, Task
from molmo2_ros.ros import live_params
from molmo2_ros.ros.depth_input import DepthInput
from molmo2_ros.ros.ingest import CameraIngest, buffer_bounds, image_qos, make_propagator, make_window
from molmo2_ros.ros.outputs import Diagnostics, Outputs, subscription_events
from molmo2_ros.ros.pipeline import Camera, Pipeline
from molmo2_ros.ros.robot_frames import RobotFrames
from molmo2_ros.ros.serving import QueryServing
from molmo2_ros.ros.settings import (PARAMETERS, Applies, Param, Rebuilds, Settings, camera_defaults, camera_names,
                                     camera_settings, declaration, resolve_window, validate)

NODE_NAME = "molmo2_grounding"


class ConfigureFailed(Exception):
    """A configure (or the reload at activate) that cannot go on; the message says why."""


def descriptor(name: str, param: Param) -> ParameterDescriptor:
    """What `ros2 param describe` shows: the description, the allowed values and when a
    change applies. Dynamic typing: see settings.validate."""
    constraints = param.constraint()
    applies = "applies live" if param.applies is Applies.LIVE else f"applies at {param.applies.value}"
    return ParameterDescriptor(name=name, description=param.description, dynamic_typing=True,
                               additional_constraints=f"{constraints}; {applies}" if constraints else applies)


class GroundingNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        for name, param in PARAMETERS.items():
            self.declare_parameter(name, list(param.default) if param.kind is tuple else param.default,
                                   descriptor(name, param))
        if self.get_parameter("cameras").value is None:   # a params file's `cameras: []` arrives unset
            self.set_parameters([Parameter("cameras", Parameter.Type.STRING_ARRAY, [])])
        # Each camera's own parameters, for the cameras named at start.
        self._camera_parameters: dict = {}
        self._camera_parameters = camera_defaults(self.get_parameter("cameras").value, self._parameter_values())
        for name, default in self._camera_parameters.items():
            self.declare_parameter(name, default, descriptor(name, declaration(name)))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.pipeline = Pipeline()
        self._model = ""                                 # resolved at configure, reloaded at activate
        self._trained_window: TrainedWindow | None = None   # what the model folder states
        self.outputs = Outputs(self, self.pipeline)
        self.ingest = CameraIngest(self, self.pipeline, self.outputs.tracked)
        # The action server and ~/query, kept through every state.
        self.serving = QueryServing(self, self.pipeline, self.outputs.results, self.outputs.partial,
                                    self.ingest.empty_window_reason, self.ingest.stopped)
        self.diagnostics = Diagnostics(self, self.pipeline, [self.serving.diagnostics],
                                       [self.ingest.diagnostics, self.serving.camera_diagnostics])
        if self.get_parameter("autostart").value is True:
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()

    @property
    def executor_threads(self) -> int:
        """Each waiting goal holds one executor thread; keep some for timers, and one for
        each camera's and each depth input's callbacks (none waits for another)."""
        cameras = max(1, len(camera_names(self.get_parameter("cameras").value)))
        return int(self.get_parameter("queue_size").value) + 2 + 2 * cameras

    def _parameter_values(self) -> dict:
        names = [*PARAMETERS, *self._camera_parameters]
        return {name: self.get_parameter(name).value for name in names}

    # --- lifecycle ------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        """Validate the parameters, resolve the model, open the backend, resolve the window
        against the model's, warm up; then make the buffers and publishers."""
        try:
            declared = validate(self._parameter_values())
            model = self._resolve_model(declared)
            backend = self._open_backend(declared, model)
        except (ValueError, ConfigureFailed) as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        try:
            trained = read_trained_window(declared.engine_dir or model)
        except ValueError as exc:
            backend.close()
            self.get_logger().error(f"configure failed: cannot read the model's trained window: {exc}")
            return TransitionCallbackReturn.FAILURE
        settings, source = resolve_window(declared, trained)
        self.get_logger().info(f"window: {settings.max_frames} frames, {settings.window_seconds:g} s at "
                               f"{settings.fps:g} fps, from {source}")
        cameras = camera_settings(settings, self._parameter_values())
        self._log_memory_plan(backend, settings, cameras)
        self._warm_up(backend, settings)
        self._model, self._trained_window = model, trained
        try:
            self._install(settings, source, backend, cameras)
        except Exception as exc:  # a configure that fails always says why
            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
            self._release()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _resolve_model(self, settings: Settings) -> str:
        """The model parameter, or for torch without one the packaged model (engine
        backends run their engines as exported)."""
        if settings.model or settings.backend != "torch":
            return settings.model
        from molmo2_ros.backends.default_model import default_model

        model, is_random = default_model()
        if is_random:
            self.get_logger().warning(
                f"no model given and none packaged: using the tiny RANDOM model {model} "
                "(runs the pipeline, answers are meaningless); set the 'model' parameter")
        return model

    def _open_backend(self, settings: Settings, model: str) -> Backend:
        from molmo2_ros.backends.factory import make_backend

        options = {"device": settings.device or None, "engine_dir": settings.engine_dir or None}
        if settings.backend == "torch":
            options["dtype"] = None if settings.dtype == "auto" else settings.dtype
        if settings.backend == "tensorrt":
            options["build_if_needed"] = settings.force_engine_update
        if settings.backend == "openai":   # an inference server (docs/backends.md)
            options = {"url": settings.server_url, "server_kind": settings.server_kind,
                       "encoding": settings.server_encoding, "timeout_s": settings.server_timeout,
                       "api_key_env": settings.server_api_key_env, "api_key_file": settings.server_api_key_file}
        started = time.monotonic()
        try:
            backend = make_backend(settings.backend, model, **options)
        except Exception as exc:
            raise ConfigureFailed(f"cannot load the {settings.backend} backend for model {model!r}: "
                                  f"{type(exc).__name__}: {exc}") from exc
        self.get_logger().info(f"loaded {backend.name} backend, model {backend.model_id} "
                               f"in {time.monotonic() - started:.1f} s")
        health = getattr(backend, "health", "ok")   # a server backend: did its server answer?
        if health != "ok":
            self.get_logger().warning(f"server {backend.endpoint}: {health}; queries are answered "
                                      "ERROR_BACKEND until it answers")
        return backend

    def _log_memory_plan(self, backend: Backend, settings: Settings, cameras: dict[str, Settings]) -> None:
        """The model's memory (once, whatever the number of cameras), then every camera's
        buffers in host memory."""
        from molmo2_ros.backends.memory_plan import plan_for_backend

        level, line = plan_for_backend(backend, frames=settings.max_frames, max_new_tokens=settings.max_new_tokens)
        getattr(self.get_logger(), level)(line)
        bounds = {name or "the camera": buffer_bounds(s) for name, s in cameras.items()}
        total = sum(sum(b.values()) for b in bounds.values())
        each = "; ".join(f"{name}: " + ", ".join(f"{kind} {mb:.0f}" for kind, mb in b.items())
                         for name, b in bounds.items())
        self.get_logger().info(f"camera buffers (host memory, at most, MiB): {each}; total {total:.0f} MiB "
                               f"for {len(cameras)} camera{'s' if len(cameras) > 1 else ''}")

    def _warm_up(self, backend: Backend, settings: Settings) -> None:
        """With `warmup` always (or auto, for a backend that compiles on first use), answer
        one query over a full window of blank frames, so that compilation for the
        steady-state input length happens now rather than in the first real query. A
        failure is logged; queries still run (and report their own errors)."""
        if settings.warmup == "never" or (settings.warmup == "auto" and not backend.compiles_on_first_use):
            return
        n = max(1, min(settings.max_frames, int(settings.window_seconds * settings.fps)))
        width = settings.max_side or 640
        height = width * 3 // 4
        blank = np.zeros((height, width, 3), np.uint8)
        frames = [Frame(image=blank, stamp_ns=int(i * 1e9 / settings.fps), source_size=(width, height))
                  for i in range(n)]
        started = time.monotonic()
        try:
            ground(backend, frames, "object", Task.POINT, max_new_tokens=settings.max_new_tokens)
        except Exception as exc:
            self.get_logger().warning(f"warm-up failed: {type(exc).__name__}: {exc}")
            return
        self.get_logger().info(f"warm-up: {n} blank frames answered in {time.monotonic() - started:.1f} s")

    def _install(self, settings: Settings, window_source: str, backend: Backend,
                 cameras: dict[str, Settings]) -> None:
        """The configured pipeline: each camera's buffers and depth input, publishers, the
        initial query."""
        p = self.pipeline
        p.settings, p.window_source, p.backend = settings, window_source, backend
        p.cameras = {name: Camera(name, s, make_window(s), make_propagator(s),
                                  DepthInput(self, s) if s.depth_topic else None) for name, s in cameras.items()}
        p.robot_frames = self._robot_frames(settings, any(s.depth_topic for s in cameras.values()))
        self.outputs.open()
        self.serving.open()
        self.diagnostics.open(settings.diagnostics_period)
        if settings.query:
            self.serving.set_topic_query(settings.query)

    def _robot_frames(self, settings: Settings, depth: bool) -> RobotFrames | None:
        """tf2 for target_frame, which needs 3D positions (a depth topic) to transform."""
        if not settings.target_frame:
            return None
        if not depth:
            self.get_logger().warning(f"target_frame {settings.target_frame!r} is set but depth_topic is empty: "
                                      "there are no 3D positions to give in it")
            return None
        frames = RobotFrames(self, settings.target_frame, settings.transform_tolerance)
        frames.report_at_configure()
        return frames

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        p = self.pipeline
        settings = p.settings
        if p.backend is None:  # freed by deactivate
            try:
                p.backend = self._open_backend(settings, self._model)
            except ConfigureFailed as exc:
                self.get_logger().error(f"activate failed: {exc}")
                return TransitionCallbackReturn.FAILURE
            self._warm_up(p.backend, settings)
        events = subscription_events(self.get_logger())
        self.serving.start(settings)
        subscribed = self.ingest.start(events)
        for camera in p.cameras.values():
            if camera.depth is not None:
                camera.depth.start(image_qos(camera.settings), events)
        p.active = True
        self.get_logger().info(f"active: {'; '.join(subscribed)}; window "
                               f"{settings.fps} fps, {settings.window_seconds} s, {settings.max_frames} frames")
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
        p = self.pipeline
        p.active = False
        self.ingest.stop()
        self.serving.stop()
        for camera in p.cameras.values():
            camera.window.reset()
            camera.propagator.reset()
            if camera.depth is not None:
                camera.depth.stop()

    def _free_backend(self) -> None:
        if self.pipeline.backend is not None:
            self.pipeline.backend.close()
            self.pipeline.backend = None

    def _release(self) -> None:
        self._stop_serving()
        self._free_backend()
        self.outputs.close()
        self.diagnostics.close()
        p = self.pipeline
        if p.robot_frames is not None:
            p.robot_frames.close()
            p.robot_frames = None
        p.settings, p.cameras = None, {}
        self.serving.close()

    # --- live parameters (ros2 param set; see live_params) ----------------------------
    def _on_set_parameters(self, parameters) -> SetParametersResult:
        current = self._parameter_values()
        changes = {p.name: p.value for p in parameters if p.name in current
                   and (p.value != current[p.name] or type(p.value) is not type(current[p.name]))}
        state = self.pipeline.state
        reason = live_params.refusal(changes, current, self.get_fully_qualified_name(), state)
        if reason is None and changes and state != "unconfigured":
            values = {**current, **changes}
            new, self.pipeline.window_source = resolve_window(validate(values), self._trained_window)
            self._apply(new, camera_settings(new, values), set(changes))
        return SetParametersResult(successful=reason is None, reason=reason or "")

    def _apply(self, new: Settings, cameras: dict[str, Settings], names: set[str]) -> None:
        """Apply validated parameter changes to the configured node now."""
        p = self.pipeline
        p.settings = new
        rebuilt = live_params.rebuilt(names)
        for camera in p.cameras.values():
            camera.settings = cameras[camera.name]
            if Rebuilds.WINDOW in rebuilt:
                camera.window = make_window(camera.settings)  # restarts empty
            if Rebuilds.DEPTH_BOUNDS in rebuilt and camera.depth is not None:
                camera.depth.follow(camera.settings)   # the bounds depth shares with the camera
            if Rebuilds.TRACKING in rebuilt:
                camera.propagator = make_propagator(camera.settings)  # tracks restart at the next answer
        if Rebuilds.DIAGNOSTICS in rebuilt:
            self.diagnostics.set_period(new.diagnostics_period)
        if Rebuilds.QUERY_PERIOD in rebuilt:
            self.serving.set_query_period(new.query_period)
        if Rebuilds.QUERY in rebuilt:
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
