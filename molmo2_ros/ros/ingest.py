"""The node's camera ingest: every camera message is decoded (once per size it is needed
at), offered to the frame window, which keeps frames at the model's sampling rate, and,
kept or not, given to the track propagator, whose objects are then published for that
frame. Runs on the camera callback; it never waits for inference.
"""
from __future__ import annotations

import time
from typing import Callable

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from molmo2_ros.core.frame_window import FrameWindow, Ingest
from molmo2_ros.core.image_conversion import ImageTooLarge, compressed_to_rgb, image_to_rgb
from molmo2_ros.core.propagation import TrackedObjects, TrackPropagator
from molmo2_ros.ros.messages import from_time
from molmo2_ros.ros.pipeline import Pipeline
from molmo2_ros.ros.settings import Settings


def make_window(settings: Settings) -> FrameWindow:
    return FrameWindow(fps=settings.fps, max_seconds=settings.window_seconds, max_frames=settings.max_frames,
                       max_side=settings.max_side, jump_back_s=settings.jump_back_s, jump_ahead_s=settings.jump_ahead_s)


def make_propagator(settings: Settings) -> TrackPropagator:
    return TrackPropagator(
        enable=settings.tracking_enable, max_points=settings.tracking_max_points,
        max_age=settings.tracking_max_age, window=settings.tracking_window,
        flow_max_side=settings.tracking_max_side, buffer_mb=settings.tracking_buffer_mb)


def image_qos(settings: Settings) -> QoSProfile:
    """The camera's QoS (and the depth input's): keep last `image_depth`, reliability as set."""
    return QoSProfile(depth=settings.image_depth, history=HistoryPolicy.KEEP_LAST,
                      durability=DurabilityPolicy.VOLATILE,
                      reliability=ReliabilityPolicy.RELIABLE if settings.image_reliability == "reliable"
                      else ReliabilityPolicy.BEST_EFFORT)


class CameraIngest:
    """The camera subscription: feeds the pipeline's window, propagator and depth input,
    hands each frame's propagated objects to `on_tracked`, and counts what arrived and what
    was dropped (its diagnostics, and the reason of an empty window). `node` is the rclpy
    node the subscription belongs to (and logs)."""

    def __init__(self, node: Node, pipeline: Pipeline, on_tracked: Callable[[TrackedObjects, str], None]):
        self._node = node
        self._pipeline = pipeline
        self._on_tracked = on_tracked
        self._group = MutuallyExclusiveCallbackGroup()
        self._sub = None
        self._topic = ""
        self.frames_in = 0            # camera messages received since the last diagnostics
        self.frames_total = 0         # camera messages received in all
        self.frames_since_activation = 0
        self.frames_in_since = time.monotonic()
        self.bad_frames = 0
        self.too_large_frames = 0
        self.last_frame_error = ""        # since activation

    def start(self, settings: Settings, qos: QoSProfile, event_callbacks) -> tuple[type, str]:
        """Subscribe to the camera (activate); returns the message type and topic."""
        topic, kind = settings.image_topic, Image
        if settings.compressed:
            kind = CompressedImage
            topic = topic if topic.endswith("/compressed") else topic.rstrip("/") + "/compressed"
        self._sub = self._node.create_subscription(kind, topic, self.on_image, qos, callback_group=self._group,
                                                   event_callbacks=event_callbacks)
        self._topic = self._node.resolve_topic_name(topic)
        self.frames_since_activation = 0
        self.last_frame_error = ""
        return kind, topic

    def stop(self) -> None:
        if self._sub is not None:
            self._node.destroy_subscription(self._sub)
            self._sub = None

    def rate(self, now: float) -> float:
        """Camera messages per second since the last call."""
        rate = self.frames_in / max(now - self.frames_in_since, 1e-6)
        self.frames_in, self.frames_in_since = 0, now
        return rate

    def empty_window_reason(self) -> str:
        """Why a query found no frames, as far as the camera can tell."""
        reason = "no camera frames buffered yet"
        if self.last_frame_error:
            return reason + f" (last frame dropped: {self.last_frame_error})"
        if self.frames_since_activation == 0:
            return reason + f" (no frame has arrived on {self._topic} since activation)"
        return reason

    def diagnostics(self) -> dict[str, str]:
        return {"ingest_rate_hz": f"{self.rate(time.monotonic()):.2f}", "frames_received": str(self.frames_total),
                "frames_malformed": str(self.bad_frames), "frames_too_large": str(self.too_large_frames),
                "last_frame_error": self.last_frame_error}

    def on_image(self, msg) -> None:
        self.frames_in += 1
        self.frames_total += 1
        self.frames_since_activation += 1
        pipeline, log = self._pipeline, self._node.get_logger()
        window, propagator, settings = pipeline.window, pipeline.propagator, pipeline.settings
        if window is None or propagator is None or settings is None:
            return
        max_side, max_pixels = settings.max_side, settings.max_image_pixels
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
                self.too_large_frames += 1
            else:
                self.bad_frames += 1
            self.last_frame_error = str(exc)
            log.warning(f"dropped a camera frame: {exc}", throttle_duration_sec=2.0)
            return
        if decision.outcome is Ingest.REJECTED:
            self.last_frame_error = decision.reason
            log.warning(f"dropped a camera frame: {decision.reason}", throttle_duration_sec=2.0)
        elif decision.outcome is Ingest.RESET:
            log.warning(decision.reason)
        if pipeline.robot_frames is not None:
            pipeline.robot_frames.saw_camera(msg.header.frame_id)
        depth = pipeline.depth
        if depth is not None and decision.keep:
            depth.want(stamp_ns, msg.header.frame_id, rgb(max_side)[1])  # converted already
        if track:
            self._track(propagator, msg.header.frame_id, stamp_ns, image, source_size)

    def _track(self, propagator: TrackPropagator, frame_id: str, stamp_ns: int, image, source_size) -> None:
        """Carry the propagated objects onto this camera frame and publish them for it
        (once an answer has been anchored). Runs on the camera callback: flow for one
        frame only; latency compensation runs on the result path (Outputs.results)."""
        log = self._node.get_logger()
        try:
            warnings = propagator.add_frame(image, stamp_ns, source_size)
        except ValueError as exc:  # e.g. an image too small to track in; the window has it
            log.warning(f"tracking: frame not used: {exc}", throttle_duration_sec=2.0)
            return
        for warning in warnings:
            log.warning(f"tracking: {warning}", throttle_duration_sec=2.0)
        snap = propagator.current()
        if snap.answer_id and snap.stamp_ns == stamp_ns:
            depth = self._pipeline.depth
            if depth is not None:   # with 3D, maybe once the frame's depth image is in
                depth.tracked(snap, frame_id, source_size, self._on_tracked)
            else:
                self._on_tracked(snap, frame_id)
