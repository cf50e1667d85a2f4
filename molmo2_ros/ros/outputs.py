"""What the node publishes: each result (~/grounding, ~/answer; ~/markers and
~/debug_image only while someone subscribes) with the tracks re-anchored on it, the
camera-rate ~/tracked_objects, the continuous query's streamed answer so far
(~/partial_grounding) (lifecycle publishers: silent unless active), the standard messages
beside them (standard_messages), /diagnostics (also while inactive: it says so), and the
warning on a QoS mismatch. With target_frame, 3D positions are also given in it
(robot_frames) before anything is published.
"""
from __future__ import annotations

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
from molmo2_ros.ros.pipeline import Pipeline
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


class Outputs:
    """The result publishers of `node`, made at configure (`open`) and destroyed at cleanup
    (`close`); depth and tracking come from the pipeline."""

    def __init__(self, node: LifecycleNode, pipeline: Pipeline):
        self._node = node
        self._pipeline = pipeline
        self._publishers = []

    def open(self) -> None:
        node = self._node
        events = PublisherEventCallbacks(incompatible_qos=qos_warning(node.get_logger()))

        def publisher(kind, topic: str, qos: QoSProfile):
            made = node.create_lifecycle_publisher(kind, topic, qos, event_callbacks=events)
            self._publishers.append(made)
            return made

        self._grounding_pub = publisher(GroundingMsg, "~/grounding", RESULTS_QOS)
        self._answer_pub = publisher(String, "~/answer", RESULTS_QOS)
        self._debug_pub = publisher(Image, "~/debug_image", qos_profile_sensor_data)
        self._markers_pub = publisher(MarkerArray, "~/markers", RESULTS_QOS)
        self._tracked_pub = publisher(TrackedObjectArray, "~/tracked_objects", RESULTS_QOS)
        self._partial_pub = publisher(GroundingMsg, "~/partial_grounding", RESULTS_QOS)
        tf_prefix = node.get_name() if self._pipeline.settings.tracked_tf_frames else ""
        self._standard = StandardOutputs(publisher, RESULTS_QOS, tf_prefix)

    def close(self) -> None:
        for made in self._publishers:
            self._node.destroy_lifecycle_publisher(made)
        self._publishers = []

    # --- results ----------------------------------------------------------------------
    def results(self, grounding: Grounding, query: Query) -> GroundingMsg:
        """Publish a successful result (worker thread for continuous mode, the goal's
        executor thread for actions; never the camera callback) and anchor tracking on it."""
        depth = self._pipeline.depth
        if depth is not None:
            grounding = depth.place(grounding, query.frames)
        if self._pipeline.robot_frames is not None:
            grounding = self._pipeline.robot_frames.place(grounding, query.frames)
        msg = grounding_to_msg(grounding, query.query_id)
        self._grounding_pub.publish(msg)
        self._answer_pub.publish(String(data=grounding.answer))
        self._standard.results(grounding)
        newest = query.frames[-1]
        if self._markers_pub.get_subscription_count() > 0:
            self._markers_pub.publish(grounding_markers(grounding, newest.source_size))
        if self._debug_pub.get_subscription_count() > 0:
            self._debug_pub.publish(rgb_to_image(self._annotate(grounding, newest),
                                                 to_time(newest.stamp_ns), newest.frame_id))
        self._anchor(grounding, query.query_id)
        return msg

    def partial(self, partial: PartialAnswer, query: Query) -> None:
        """The continuous query's answer so far (the worker thread, while it streams) on
        ~/partial_grounding, never on ~/grounding: a Grounding message holding everything
        final so far (core.answer_stream), header as the result's; count -1, no answer text."""
        newest = max(query.frames, key=lambda f: f.stamp_ns)
        so_far = Grounding(task=query.task, query=sanitize_query(query.text), points=partial.points,
                           tracks=partial.tracks,
                           frame_stamps_ns=[f.stamp_ns for f in query.frames], frame_id=newest.frame_id)
        self._partial_pub.publish(grounding_to_msg(so_far, query.query_id))

    def _anchor(self, grounding: Grounding, query_id: str) -> None:
        """Re-anchor the propagated tracks on an answer with points (point, count and
        track tasks; an `ask` answer has none and leaves them alone). Latency
        compensation runs here, outside the propagator's lock, so camera frames keep
        flowing meanwhile."""
        propagator, log = self._pipeline.propagator, self._node.get_logger()
        if propagator is None or not propagator.enable or not self._pipeline.active or grounding.task == Task.ASK:
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

    def tracked(self, snap: TrackedObjects, frame_id: str) -> None:
        """The propagated objects on one camera frame (the camera callback)."""
        if self._pipeline.robot_frames is not None:
            snap = self._pipeline.robot_frames.place_tracked(snap, frame_id)
        self._tracked_pub.publish(tracked_to_msg(snap, frame_id))
        self._standard.tracked(snap, frame_id)


class Diagnostics:
    """/diagnostics every `period` s, in every state: the pipeline's state, window,
    tracking buffer, depth input and backend, and what each of `reports` (a part's own
    `diagnostics()`: name -> value) says."""

    def __init__(self, node: LifecycleNode, pipeline: Pipeline, reports: list[Callable[[], dict[str, str]]]):
        self._node = node
        self._pipeline = pipeline
        self._reports = reports
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

    def publish(self) -> None:
        pipeline = self._pipeline
        stats = pipeline.window.stats() if pipeline.window is not None else None
        backend = pipeline.backend
        values = {
            "state": "active" if pipeline.active else "inactive",
            "backend": backend.name if backend else "",
            "model": backend.model_id if backend else "",
            "window_frames": str(stats.frames if stats else 0),
            "window_max_frames": str(stats.max_frames if stats else 0),
            "window_source": pipeline.window_source,
            "window_span_s": f"{stats.span_s:.2f}" if stats else "0",
            "window_bytes": str(stats.bytes if stats else 0),
            "frames_rejected": str(stats.rejected if stats else 0),
            "window_resets": str(stats.resets if stats else 0),
        }
        for report in self._reports:
            values.update(report())
        propagator = pipeline.propagator
        if propagator is not None and propagator.enable:
            frames, nbytes = propagator.buffered()
            values["tracking_frames"], values["tracking_bytes"] = str(frames), str(nbytes)
            values["tracked_objects"] = str(len(propagator.current().objects))
        if pipeline.depth is not None:
            values.update(pipeline.depth.diagnostics())
        server = getattr(backend, "diagnostics", None)   # a server backend: its URL and health
        if server is not None:
            values.update(server())
        if pipeline.robot_frames is not None:
            values.update(pipeline.robot_frames.diagnostics())
        if not pipeline.active:
            level, message = DiagnosticStatus.WARN, "not active"
        elif values.get("server_health", "ok") != "ok":
            level, message = DiagnosticStatus.WARN, f"server {values['server_health']}"
        elif stats is None or stats.frames == 0:
            level, message = DiagnosticStatus.WARN, "no camera frames in the window"
        else:
            level, message = DiagnosticStatus.OK, f"{stats.frames} frames buffered"
        name = f"{self._node.get_fully_qualified_name().lstrip('/')}: grounding"
        status = DiagnosticStatus(level=level, name=name, hardware_id=values["backend"], message=message,
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self._node.get_clock().now().to_msg()
        self._pub.publish(array)
