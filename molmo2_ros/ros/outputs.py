"""What the node publishes: each result (~/grounding, ~/answer; ~/markers and
~/debug_image only while someone subscribes) with the tracks re-anchored on it, the
camera-rate ~/tracked_objects, /diagnostics, and the warning on a QoS mismatch.
"""
from __future__ import annotations

import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from molmo2_ros.core.grounding import Grounding, Task
from molmo2_ros.core.propagation import TrackedObjects
from molmo2_ros.msg import Grounding as GroundingMsg
from molmo2_ros.msg import TrackedObjectArray
from molmo2_ros.ros.image_messages import rgb_to_image
from molmo2_ros.ros.messages import grounding_markers, grounding_to_msg, to_time, tracked_to_msg
from molmo2_ros.ros.query_worker import Query
from molmo2_ros.ros.settings import Settings

try:  # Jazzy and later
    from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import PublisherEventCallbacks, SubscriptionEventCallbacks

RESULTS_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE, history=HistoryPolicy.KEEP_LAST)


class Outputs:
    """The publishers of `node` (a GroundingNode), made at configure (`open`) and destroyed
    at cleanup (`close`), and the diagnostics timer."""

    def __init__(self, node):
        self._node = node
        self._publishers = []
        self._diag_timer = None

    def open(self, s: Settings) -> None:
        node = self._node
        pub_events = PublisherEventCallbacks(incompatible_qos=self.on_incompatible_qos)
        self._grounding_pub = node.create_publisher(GroundingMsg, "~/grounding", RESULTS_QOS,
                                                    event_callbacks=pub_events)
        self._answer_pub = node.create_publisher(String, "~/answer", RESULTS_QOS, event_callbacks=pub_events)
        self._debug_pub = node.create_publisher(Image, "~/debug_image", qos_profile_sensor_data)
        self._markers_pub = node.create_publisher(MarkerArray, "~/markers", RESULTS_QOS)
        self._diag_pub = node.create_publisher(DiagnosticArray, "/diagnostics", RESULTS_QOS)
        self._tracked_pub = node.create_publisher(TrackedObjectArray, "~/tracked_objects", RESULTS_QOS,
                                                  event_callbacks=pub_events)
        self._publishers = [self._grounding_pub, self._answer_pub, self._debug_pub,
                            self._markers_pub, self._diag_pub, self._tracked_pub]
        self._diag_timer = node.create_timer(s.diagnostics_period, self.publish_diagnostics)

    def close(self) -> None:
        if self._diag_timer is not None:
            self._node.destroy_timer(self._diag_timer)
            self._diag_timer = None
        for publisher in self._publishers:
            self._node.destroy_publisher(publisher)
        self._publishers = []

    def set_diagnostics_period(self, period: float) -> None:
        self._node.destroy_timer(self._diag_timer)
        self._diag_timer = self._node.create_timer(period, self.publish_diagnostics)

    # --- results ----------------------------------------------------------------------
    def results(self, grounding: Grounding, query: Query) -> GroundingMsg:
        """Publish a successful result (worker thread for continuous mode, the goal's
        executor thread for actions; never the camera callback) and anchor tracking on it."""
        depth = self._node.depth
        if depth is not None:
            grounding = depth.place(grounding, query.frames)
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
        node = self._node
        propagator = node.propagator
        if propagator is None or not propagator.enable or not node.active or grounding.task == Task.ASK:
            return
        try:
            warnings = propagator.anchor(grounding, query_id)
        except Exception as exc:  # tracking must never cost the answer, already published
            node.get_logger().error(f"tracking: answer {query_id} not anchored: {type(exc).__name__}: {exc}")
            return
        for warning in warnings:
            node.get_logger().warning(f"tracking: {warning}", throttle_duration_sec=2.0)

    @staticmethod
    def _annotate(grounding: Grounding, frame):
        from molmo2_ros.annotate import annotate_frame

        return annotate_frame(frame, grounding)

    def tracked(self, snap: TrackedObjects, frame_id: str) -> None:
        """The propagated objects on one camera frame (the camera callback)."""
        self._tracked_pub.publish(tracked_to_msg(snap, frame_id))

    # --- health -----------------------------------------------------------------------
    def subscription_events(self) -> SubscriptionEventCallbacks:
        """For a subscription of the node: a QoS mismatch with a publisher is warned."""
        return SubscriptionEventCallbacks(incompatible_qos=self.on_incompatible_qos)

    def on_incompatible_qos(self, event) -> None:
        policy = getattr(event, "last_policy_kind", "?")
        self._node.get_logger().warning(
            f"QoS incompatible with a peer (policy {policy}, {event.total_count} so far): no "
            "messages flow between them. For a reliable-only camera set image_reliability; "
            "result topics are reliable, so subscribe to them reliably.")

    def publish_diagnostics(self) -> None:
        node, ingest = self._node, self._node.ingest
        now = time.monotonic()
        rate = ingest.rate(now)
        window = node.window
        stats = window.stats() if window is not None else None
        worker = node.serving.worker
        backend = node.backend
        values = {
            "state": "active" if node.active else "inactive",
            "backend": backend.name if backend else "",
            "model": backend.model_id if backend else "",
            "ingest_rate_hz": f"{rate:.2f}",
            "frames_received": str(ingest.frames_total),
            "window_frames": str(stats.frames if stats else 0),
            "window_max_frames": str(stats.max_frames if stats else 0),
            "window_source": node.window_source,
            "window_span_s": f"{stats.span_s:.2f}" if stats else "0",
            "window_bytes": str(stats.bytes if stats else 0),
            "frames_rejected": str(stats.rejected if stats else 0),
            "window_resets": str(stats.resets if stats else 0),
            "frames_malformed": str(ingest.bad_frames),
            "frames_too_large": str(ingest.too_large_frames),
            "last_frame_error": ingest.last_frame_error,
            "queue_length": str(worker.queue_length if worker else 0),
            "inferring": str(bool(worker and worker.busy)),
        }
        propagator = node.propagator
        if propagator is not None and propagator.enable:
            frames, nbytes = propagator.buffered()
            values["tracking_frames"], values["tracking_bytes"] = str(frames), str(nbytes)
            values["tracked_objects"] = str(len(propagator.current().objects))
        depth = node.depth
        if depth is not None:
            values.update(depth.diagnostics())
        server = getattr(backend, "diagnostics", None)   # a server backend: its URL and health
        if server is not None:
            values.update(server())
        timings = node.serving.last_timings
        if timings is not None:
            for stage in ("queue_wait", "preprocess", "generation", "parse"):
                values[f"last_{stage}_s"] = f"{getattr(timings, stage):.3f}"
        if not node.active:
            level, message = DiagnosticStatus.WARN, "not active"
        elif values.get("server_health", "ok") != "ok":
            level, message = DiagnosticStatus.WARN, f"server {values['server_health']}"
        elif stats is None or stats.frames == 0:
            level, message = DiagnosticStatus.WARN, "no camera frames in the window"
        else:
            level, message = DiagnosticStatus.OK, f"{stats.frames} frames buffered"
        status = DiagnosticStatus(level=level, name=f"{node.get_fully_qualified_name().lstrip('/')}: grounding",
                                  hardware_id=values["backend"], message=message,
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = node.get_clock().now().to_msg()
        self._diag_pub.publish(array)
