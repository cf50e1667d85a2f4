"""The node's camera ingest: every camera message is decoded (once per size it is needed
at), offered to its camera's frame window, which keeps frames at the model's sampling
rate, and, kept or not, given to that camera's track propagator, whose objects are then
published for that frame. Runs on the camera's callback; it never waits for inference
nor for another camera.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from molmo2_ros.core.frame_window import FrameWindow, Ingest
from molmo2_ros.core.image_conversion import ImageTooLarge, compressed_to_rgb, image_to_rgb
from molmo2_ros.core.propagation import TrackedObjects, TrackPropagator
from molmo2_ros.ros.messages import from_time
from molmo2_ros.ros.pipeline import Camera, Pipeline
from molmo2_ros.ros.settings import Settings, subscribed_topic


def make_window(settings: Settings) -> FrameWindow:
    return FrameWindow(fps=settings.fps, max_seconds=settings.window_seconds, max_frames=settings.max_frames,
                       max_side=settings.max_side, jump_back_s=settings.jump_back_s, jump_ahead_s=settings.jump_ahead_s)


def make_propagator(settings: Settings) -> TrackPropagator:
    return TrackPropagator(
        enable=settings.tracking_enable, max_points=settings.tracking_max_points,
        max_age=settings.tracking_max_age, window=settings.tracking_window,
        flow_max_side=settings.tracking_max_side, buffer_mb=settings.tracking_buffer_mb)


def buffer_bounds(settings: Settings) -> dict[str, float]:
    """The most host memory (MiB) one camera's buffers hold: the window (max_frames frames of
    at most max_side x max_side, or max_image_pixels, RGB), the tracking buffer and the
    depth buffer (their own bounds)."""
    pixels = settings.max_side ** 2 if settings.max_side else settings.max_image_pixels
    bounds = {"window": settings.max_frames * pixels * 3 / 2**20}
    if settings.tracking_enable:
        bounds["tracking"] = settings.tracking_buffer_mb
    if settings.depth_topic:
        bounds["depth"] = settings.depth_buffer_mb
    return bounds


def image_qos(settings: Settings) -> QoSProfile:
    """The camera's QoS (and the depth input's): keep last `image_depth`, reliability as set."""
    return QoSProfile(depth=settings.image_depth, history=HistoryPolicy.KEEP_LAST,
                      durability=DurabilityPolicy.VOLATILE,
                      reliability=ReliabilityPolicy.RELIABLE if settings.image_reliability == "reliable"
                      else ReliabilityPolicy.BEST_EFFORT)


@dataclass
class Counts:
    """What one camera sent: for its diagnostics and the reason of an empty window."""

    topic: str = ""
    frames_in: int = 0                # camera messages received since the last diagnostics
    frames_total: int = 0             # camera messages received in all
    frames_since_activation: int = 0
    frames_in_since: float = field(default_factory=time.monotonic)
    activated_at: float = 0.0         # monotonic time of the subscription
    last_frame_at: float = 0.0        # monotonic time of the newest message (0: none since activation)
    bad_frames: int = 0
    too_large_frames: int = 0
    last_frame_error: str = ""        # since activation


class CameraIngest:
    """The camera subscriptions, one per camera of the pipeline, each in its own callback
    group (one camera's callback never waits for another's): each feeds its camera's window,
    propagator and depth input, hands each frame's propagated objects to `on_tracked`, and
    counts what arrived and what was dropped (its diagnostics, and the reason of an empty
    window). `node` is the rclpy node the subscriptions belong to (and logs)."""

    def __init__(self, node: Node, pipeline: Pipeline, on_tracked: Callable[[Camera, TrackedObjects, str], None]):
        self._node = node
        self._pipeline = pipeline
        self._on_tracked = on_tracked
        self._subs = []
        self._counts: dict[str, Counts] = {}

    def start(self, event_callbacks) -> list[str]:
        """Subscribe to every camera (activate); returns each subscription in words."""
        said = []
        for camera in self._pipeline.cameras.values():
            s = camera.settings
            kind = CompressedImage if s.compressed else Image
            topic = subscribed_topic(s.image_topic, s.compressed)
            self._subs.append(self._node.create_subscription(
                kind, topic, lambda msg, camera=camera: self.on_image(camera, msg), image_qos(s),
                callback_group=MutuallyExclusiveCallbackGroup(), event_callbacks=event_callbacks))
            counts = self._counts.setdefault(camera.name, Counts())
            counts.topic = self._node.resolve_topic_name(topic)
            counts.frames_since_activation, counts.last_frame_error = 0, ""
            counts.activated_at, counts.last_frame_at = time.monotonic(), 0.0
            who = f"{camera.label}: " if camera.name else ""
            said.append(f"{who}{kind.__name__} on {counts.topic} ({s.image_reliability}, depth {s.image_depth})")
        return said

    def stop(self) -> None:
        for sub in self._subs:
            self._node.destroy_subscription(sub)
        self._subs = []

    def empty_window_reason(self, camera: Camera) -> str:
        """Why a query found no frames of `camera`, as far as the camera can tell."""
        counts = self._counts.get(camera.name, Counts())
        reason = f"no frames of {camera.label} buffered yet" if camera.name else "no camera frames buffered yet"
        if counts.last_frame_error:
            return reason + f" (last frame dropped: {counts.last_frame_error})"
        if counts.frames_since_activation == 0:
            return reason + f" (no frame has arrived on {counts.topic} since activation)"
        return reason

    def stopped(self, camera: Camera) -> str:
        """Why `camera` counts as stopped (silent for longer than camera_timeout since its
        last message or since activation), or ""."""
        timeout, counts = camera.settings.camera_timeout, self._counts.get(camera.name)
        if not timeout or counts is None:
            return ""
        silent = time.monotonic() - (counts.last_frame_at or counts.activated_at)
        if silent <= timeout:
            return ""
        since = "its last frame" if counts.last_frame_at else "activation"
        return (f"{camera.label} stopped: nothing on {counts.topic} for {silent:.1f} s since {since} "
                f"(camera_timeout {timeout:g} s)")

    def diagnostics(self, camera: Camera) -> dict[str, str]:
        counts, now = self._counts.get(camera.name, Counts()), time.monotonic()
        rate = counts.frames_in / max(now - counts.frames_in_since, 1e-6)
        counts.frames_in, counts.frames_in_since = 0, now
        return {"ingest_rate_hz": f"{rate:.2f}", "frames_received": str(counts.frames_total),
                "frames_malformed": str(counts.bad_frames), "frames_too_large": str(counts.too_large_frames),
                "last_frame_error": counts.last_frame_error, "stopped": self.stopped(camera)}

    def on_image(self, camera: Camera, msg) -> None:
        counts = self._counts[camera.name]
        counts.frames_in += 1
        counts.frames_total += 1
        counts.frames_since_activation += 1
        counts.last_frame_at = time.monotonic()
        log = self._node.get_logger()
        window, propagator, settings = camera.window, camera.propagator, camera.settings
        max_side, max_pixels = settings.max_side, settings.max_image_pixels
        convert = compressed_to_rgb if isinstance(msg, CompressedImage) else image_to_rgb
        converted = {}

        def rgb(side: int):
            """(RGB, source size) shrunk to `side`, converted once per size."""
            if side not in converted:
                converted[side] = convert(msg, side, max_pixels)
            return converted[side]

        said = f"{camera.label}: " if camera.name else ""
        try:
            stamp_ns = from_time(msg.header.stamp)
            decision = window.add(stamp_ns, lambda: rgb(max_side), frame_id=msg.header.frame_id)
            # Tracking takes every frame, kept by the window or not (not an out-of-order
            # or duplicate one), so tracks move at camera rate.
            track = propagator.enable and decision.outcome is not Ingest.REJECTED
            image, source_size = rgb(propagator.flow_max_side) if track else (None, None)
        except ValueError as exc:
            if isinstance(exc, ImageTooLarge):
                counts.too_large_frames += 1
            else:
                counts.bad_frames += 1
            counts.last_frame_error = str(exc)
            log.warning(f"{said}dropped a camera frame: {exc}", throttle_duration_sec=2.0)
            return
        if decision.outcome is Ingest.REJECTED:
            counts.last_frame_error = decision.reason
            log.warning(f"{said}dropped a camera frame: {decision.reason}", throttle_duration_sec=2.0)
        elif decision.outcome is Ingest.RESET:
            log.warning(said + decision.reason)
        robot_frames = self._pipeline.robot_frames
        if robot_frames is not None:
            robot_frames.saw_camera(msg.header.frame_id)
        if camera.depth is not None and decision.keep:
            camera.depth.want(stamp_ns, msg.header.frame_id, rgb(max_side)[1])  # converted already
        if track:
            self._track(camera, msg.header.frame_id, stamp_ns, image, source_size)

    def _track(self, camera: Camera, frame_id: str, stamp_ns: int, image, source_size) -> None:
        """Carry the propagated objects onto this camera frame and publish them for it
        (once an answer has been anchored). Runs on the camera callback: flow for one
        frame only; latency compensation runs on the result path (Outputs.results)."""
        log, propagator = self._node.get_logger(), camera.propagator
        try:
            warnings = propagator.add_frame(image, stamp_ns, source_size)
        except ValueError as exc:  # e.g. an image too small to track in; the window has it
            log.warning(f"tracking: frame not used: {exc}", throttle_duration_sec=2.0)
            return
        for warning in warnings:
            log.warning(f"tracking: {warning}", throttle_duration_sec=2.0)
        snap = propagator.current()
        if snap.answer_id and snap.stamp_ns == stamp_ns:
            if camera.depth is not None:   # with 3D, maybe once the frame's depth image is in
                camera.depth.tracked(snap, frame_id, source_size,
                                     lambda snap, frame_id: self._on_tracked(camera, snap, frame_id))
            else:
                self._on_tracked(camera, snap, frame_id)
