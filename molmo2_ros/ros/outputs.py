"""What the node publishes: each result (~/grounding, ~/answer; the camera's markers and
debug image only while someone subscribes) with the camera's tracks re-anchored on it,
the camera-rate tracked objects, the continuous query's streamed answer so far
(~/partial_grounding) (lifecycle publishers: silent unless active), the standard messages
beside them (standard_messages), /diagnostics (also while inactive: it says so), and the
warning on a QoS mismatch. With target_frame, 3D positions are also given in it
(robot_frames) before anything is published.

Answers go on the node's topics whatever their camera (Grounding.camera names it); what
belongs to one camera's image stream (tracked objects and poses, markers, debug image,
detections) goes on that camera's own topics, ~/<camera>/..., or ~/... for the node's only
camera.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from molmo2_ros.core.answer_stream import PartialAnswer
from molmo2_ros.core.grounding import NS, Grounding, Task
from molmo2_ros.core.prompts import sanitize_query
from molmo2_ros.core.propagation import TrackedObjects
from molmo2_ros.msg import Grounding as GroundingMsg
from molmo2_ros.msg import TrackedObjectArray
from molmo2_ros.ros.image_messages import rgb_to_image
from molmo2_ros.ros.messages import grounding_markers, grounding_to_msg, to_time, tracked_to_msg
from molmo2_ros.ros.pipeline import Camera, Pipeline
from molmo2_ros.ros.query_worker import Query
from molmo2_ros.ros.standard_messages import StandardOutputs

try:  # Jazzy and later
    from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import PublisherEventCallbacks, SubscriptionEventCallbacks

RESULTS_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE, history=HistoryPolicy.KEEP_LAST)


def qos_warning(logger) -> Callable:
    """An incompatible-QoS event handler that says what to change."""
    def on_incompatible_qos(event) -> None:
        policy = getattr(event, "last_policy_kind", "?")
        logger.warning(
            f"QoS incompatible with a peer (policy {policy}, {event.total_count} so far): no "
            "messages flow between them. For a reliable-only camera set image_reliability; "
            "result topics are reliable, so subscribe to them reliably.")
    return on_incompatible_qos


def subscription_events(logger) -> SubscriptionEventCallbacks:
    """For a subscription of the node: a QoS mismatch with a publisher is warned."""
    return SubscriptionEventCallbacks(incompatible_qos=qos_warning(logger))


@dataclass
class CameraPublishers:
    """One camera's own topics."""

    debug: object
    markers: object
    tracked: object
    standard: StandardOutputs


class Outputs:
    """The result publishers of `node`, made at configure (`open`) and destroyed at cleanup
    (`close`); depth and tracking come from the pipeline's cameras."""

    def __init__(self, node: LifecycleNode, pipeline: Pipeline):
        self._node = node
        self._pipeline = pipeline
        self._publishers = []
        self._cameras: dict[str, CameraPublishers] = {}

    def open(self) -> None:
        node = self._node
        events = PublisherEventCallbacks(incompatible_qos=qos_warning(node.get_logger()))

        def publisher(kind, topic: str, qos: QoSProfile):
            made = node.create_lifecycle_publisher(kind, topic, qos, event_callbacks=events)
            self._publishers.append(made)
            return made

        self._grounding_pub = publisher(GroundingMsg, "~/grounding", RESULTS_QOS)
        self._answer_pub = publisher(String, "~/answer", RESULTS_QOS)
        self._partial_pub = publisher(GroundingMsg, "~/partial_grounding", RESULTS_QOS)
        for camera in self._pipeline.cameras.values():
            tf_prefix = "_".join(filter(None, (node.get_name(), camera.name))) \
                if camera.settings.tracked_tf_frames else ""
            self._cameras[camera.name] = CameraPublishers(
                debug=publisher(Image, camera.topic("debug_image"), qos_profile_sensor_data),
                markers=publisher(MarkerArray, camera.topic("markers"), RESULTS_QOS),
                tracked=publisher(TrackedObjectArray, camera.topic("tracked_objects"), RESULTS_QOS),
                standard=StandardOutputs(publisher, RESULTS_QOS, camera.topic, tf_prefix))

    def close(self) -> None:
        for made in self._publishers:
            self._node.destroy_lifecycle_publisher(made)
        self._publishers = []
        self._cameras = {}

    # --- results ----------------------------------------------------------------------
    def results(self, grounding: Grounding, query: Query) -> GroundingMsg:
        """Publish a successful result (worker thread for continuous mode, the goal's
        executor thread for actions; never the camera callback) and anchor its camera's
        tracking on it."""
        camera, frames = self._pipeline.cameras[grounding.camera], query.frames[grounding.camera]
        if camera.depth is not None:
            grounding = camera.depth.place(grounding, frames)
        if self._pipeline.robot_frames is not None:
            grounding = self._pipeline.robot_frames.place(grounding, frames)
        msg = grounding_to_msg(grounding, query.query_id)
        self._grounding_pub.publish(msg)
        self._answer_pub.publish(String(data=grounding.answer))
        own = self._cameras[camera.name]
        own.standard.results(grounding)
        newest = frames[-1]
        if own.markers.get_subscription_count() > 0:
            own.markers.publish(grounding_markers(grounding, newest.source_size))
        if own.debug.get_subscription_count() > 0:
            own.debug.publish(rgb_to_image(self._annotate(grounding, newest), to_time(newest.stamp_ns),
                                           newest.frame_id))
        self._anchor(camera, grounding, query.query_id)
        return msg

    def partial(self, partial: PartialAnswer, query: Query) -> None:
        """The continuous query's answer so far (the worker thread, while it streams) on
        ~/partial_grounding, never on ~/grounding: a Grounding message holding everything
        final so far (core.answer_stream), header as the result's; count -1, no answer text.
        A continuous run asks one camera."""
        camera = query.cameras[0]
        frames = query.frames[camera]
        newest = max(frames, key=lambda f: f.stamp_ns)
        so_far = Grounding(task=query.task, query=sanitize_query(query.text), points=partial.points,
                           tracks=partial.tracks, camera=camera,
                           frame_stamps_ns=[f.stamp_ns for f in frames], frame_id=newest.frame_id)
        self._partial_pub.publish(grounding_to_msg(so_far, query.query_id))

    def _anchor(self, camera: Camera, grounding: Grounding, query_id: str) -> None:
        """Re-anchor the camera's propagated tracks on an answer with points (point, count
        and track tasks; an `ask` answer has none and leaves them alone). Latency
        compensation runs here, outside the propagator's lock, so camera frames keep
        flowing meanwhile."""
        propagator, log = camera.propagator, self._node.get_logger()
        if not propagator.enable or not self._pipeline.active or grounding.task == Task.ASK:
            return
        try:
            warnings = propagator.anchor(grounding, query_id)
        except Exception as exc:  # tracking must never cost the answer, already published
            log.error(f"tracking: answer {query_id} not anchored: {type(exc).__name__}: {exc}")
            return
        for warning in warnings:
            log.warning(f"tracking: {warning}", throttle_duration_sec=2.0)

    @staticmethod
    def _annotate(grounding: Grounding, frame):
        from molmo2_ros.annotate import annotate_frame

        return annotate_frame(frame, grounding)

    def tracked(self, camera: Camera, snap: TrackedObjects, frame_id: str) -> None:
        """The propagated objects on one frame of `camera` (its camera callback)."""
        if self._pipeline.robot_frames is not None:
            snap = self._pipeline.robot_frames.place_tracked(snap, frame_id)
        own = self._cameras[camera.name]
        own.tracked.publish(tracked_to_msg(snap, frame_id))
        own.standard.tracked(snap, frame_id)


class Diagnostics:
    """/diagnostics every `period` s, in every state: the pipeline's state and backend and
    what each of `reports` (a part's own `diagnostics()`: name -> value) says; and for each
    camera its window, tracking buffer and depth input and what each of `camera_reports`
    (`diagnostics(camera)`) says. The node's only camera is in the node's status; named
    cameras have a status each, "<node>: camera <name>"."""

    def __init__(self, node: LifecycleNode, pipeline: Pipeline, reports: list[Callable[[], dict[str, str]]],
                 camera_reports: list[Callable[[Camera], dict[str, str]]]):
        self._node = node
        self._pipeline = pipeline
        self._reports = reports
        self._camera_reports = camera_reports
        self._pub = None
        self._timer = None

    def open(self, period: float) -> None:
        self._pub = self._node.create_publisher(DiagnosticArray, "/diagnostics", RESULTS_QOS)
        self._timer = self._node.create_timer(period, self.publish)

    def close(self) -> None:
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
            self._node.destroy_publisher(self._pub)
            self._timer = self._pub = None

    def set_period(self, period: float) -> None:
        if self._timer is not None:
            self._timer.timer_period_ns = round(period * NS)

    def _camera(self, camera: Camera) -> tuple[dict[str, str], int, str]:
        """A camera's values, and its level and message while the node is active."""
        stats = camera.window.stats()
        values = {
            "window_frames": str(stats.frames),
            "window_max_frames": str(stats.max_frames),
            "window_source": self._pipeline.window_source,
            "window_span_s": f"{stats.span_s:.2f}",
            "window_bytes": str(stats.bytes),
            "frames_rejected": str(stats.rejected),
            "window_resets": str(stats.resets),
        }
        for report in self._camera_reports:
            values.update(report(camera))
        if camera.propagator.enable:
            frames, nbytes = camera.propagator.buffered()
            values["tracking_frames"], values["tracking_bytes"] = str(frames), str(nbytes)
            values["tracked_objects"] = str(len(camera.propagator.current().objects))
        if camera.depth is not None:
            values.update(camera.depth.diagnostics())
        if values.get("stopped"):
            return values, DiagnosticStatus.WARN, values["stopped"]
        if stats.frames == 0:
            return values, DiagnosticStatus.WARN, "no camera frames in the window"
        return values, DiagnosticStatus.OK, f"{stats.frames} frames buffered"

    def publish(self) -> None:
        pipeline = self._pipeline
        backend = pipeline.backend
        values = {"state": "active" if pipeline.active else "inactive",
                  "backend": backend.name if backend else "", "model": backend.model_id if backend else ""}
        for report in self._reports:
            values.update(report())
        server = getattr(backend, "diagnostics", None)   # a server backend: its URL and health
        if server is not None:
            values.update(server())
        if pipeline.robot_frames is not None:
            values.update(pipeline.robot_frames.diagnostics())
        cameras = {camera.name: self._camera(camera) for camera in pipeline.cameras.values()}
        only = cameras.pop("", None)   # the node's only camera: in the node's own status
        if only is not None:
            values.update(only[0])
        if not pipeline.active:
            level, message = DiagnosticStatus.WARN, "not active"
        elif values.get("server_health", "ok") != "ok":
            level, message = DiagnosticStatus.WARN, f"server {values['server_health']}"
        elif only is not None:
            level, message = only[1:]
        elif not cameras:
            level, message = DiagnosticStatus.WARN, "no camera configured"
        else:
            waiting = [name for name, (_, level, _) in cameras.items() if level != DiagnosticStatus.OK]
            level = DiagnosticStatus.WARN if waiting else DiagnosticStatus.OK
            message = f"{len(cameras)} cameras" + (f"; not ready: {', '.join(waiting)}" if waiting else "")
        node = self._node.get_fully_qualified_name().lstrip("/")
        statuses = [self._status(f"{node}: grounding", level, message, values)]
        for camera, (camera_values, camera_level, camera_message) in cameras.items():
            if not pipeline.active:
                camera_level, camera_message = DiagnosticStatus.WARN, "not active"
            statuses.append(self._status(f"{node}: camera {camera}", camera_level, camera_message, camera_values))
        array = DiagnosticArray(status=statuses)
        array.header.stamp = self._node.get_clock().now().to_msg()
        self._pub.publish(array)

    def _status(self, name: str, level: int, message: str, values: dict[str, str]) -> DiagnosticStatus:
        backend = self._pipeline.backend
        return DiagnosticStatus(level=level, name=name, hardware_id=backend.name if backend else "",
                                message=message, values=[KeyValue(key=k, value=v) for k, v in values.items()])
