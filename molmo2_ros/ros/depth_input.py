"""The node's optional depth input: a registered depth image topic and the colour
camera's CameraInfo in, 3D positions on answers' points and camera-rate tracks out.

Subscriptions run in their own callback group and only convert and buffer (a zero-copy
view of an Image; a CompressedImage is decoded there), so the camera callback never
waits on them, nor they on inference. The math, the buffer's sync
and memory policy and every reason a point gets no position: molmo2_ros.core.depth.

Every message is checked before use, as camera frames are: a bad stamp, a depth image
over max_image_pixels or depth_buffer_mb (refused before decoding), a CameraInfo with
NaN/inf/zero intrinsics or a distortion that does not fit its model are dropped, counted
(/diagnostics) and logged at most once per THROTTLE_S for each kind; a refused CameraInfo
stops 3D until a good one comes (3D from an older calibration would be silently wrong).

Start-up self-checks (depth units against values, frame_ids, camera info size) are
logged once each and kept for /diagnostics, so a misconfigured camera shows at start.
"""
from __future__ import annotations

import re
import threading
import time
from collections import deque
from dataclasses import replace

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from molmo2_ros.core.depth import (NS, CameraModel, DepthBuffer, DepthLookup, depth_from_compressed,
                                   depth_from_image, locate, same_aspect, units_problem, with_positions)
from molmo2_ros.core.grounding import Frame, Grounding
from molmo2_ros.core.image_conversion import ImageTooLarge
from molmo2_ros.core.propagation import TrackedObjects
from molmo2_ros.ros.messages import from_time

THROTTLE_S = 5.0
WANTED_SLACK = 8   # window frames kept during one answer: 4 s at 2 fps


def depth_topics(settings) -> tuple[str, str]:
    """(depth topic as subscribed, camera info topic). Compressed depth follows
    image_transport: `<depth_topic>/compressedDepth`. Camera info defaults to the colour
    camera's: `camera_info` beside `image_topic`."""
    depth = settings.depth_topic
    if settings.depth_compressed and not depth.endswith(("/compressedDepth", "/compressed")):
        depth = depth.rstrip("/") + "/compressedDepth"
    info = settings.camera_info_topic
    if not info:
        base = settings.image_topic.rstrip("/").rpartition("/")[0]
        info = f"{base}/camera_info" if base else "camera_info"
    return depth, info


class DepthInput:
    def __init__(self, node, settings):
        s = settings
        self._node = node
        self._compressed = s.depth_compressed
        self.depth_topic, self.info_topic = depth_topics(s)
        # Camera-rate lookups need the depth images near the newest colour frame; the
        # frames the window kept need theirs for as long as answers may refer to them:
        # the window's max_frames, and WANTED_SLACK more kept while an answer is computed.
        self._max_pixels = s.max_image_pixels
        self.buffer = DepthBuffer(tolerance_s=s.depth_tolerance, max_bytes=round(s.depth_buffer_mb * 2**20),
                                  recent_s=max(0.25, 4 * s.depth_tolerance), max_wanted=s.max_frames + WANTED_SLACK,
                                  jump_back_s=s.jump_back_s, jump_ahead_s=s.jump_ahead_s)
        self.lookup = DepthLookup(patch=s.depth_patch, min_m=s.depth_min, max_m=s.depth_max)
        self.camera: CameraModel | None = None   # from the newest CameraInfo, None while it is refused
        self.camera_error = ""                   # why the newest CameraInfo was refused
        self.camera_refused = 0
        self._colour: tuple[str, tuple[int, int]] | None = None   # newest kept frame's frame_id, size
        self._group = MutuallyExclusiveCallbackGroup()
        self._subs = []
        self.malformed = 0
        self.too_large = 0
        self.last_error = ""                     # about the newest depth message; "" once one is fine
        self._warned: dict[str, float] = {}   # kind of warning -> when it was last logged
        self._tracked_lock = threading.Lock()
        self._waiting: deque = deque()        # camera-rate objects waiting for their frame's depth image
        # Start-up self-checks (see `_self_check`): what each found, and whether the depth
        # units could be judged yet (not before a depth image with valid pixels).
        self.self_checks: dict[str, str] = {}
        self._units_judged = False
        self._depth_size: tuple[int, int] | None = None

    # --- subscriptions ----------------------------------------------------------------
    def start(self, qos, event_callbacks) -> None:
        kind = CompressedImage if self._compressed else Image
        self._subs = [
            self._node.create_subscription(kind, self.depth_topic, self._on_depth, qos,
                                           callback_group=self._group, event_callbacks=event_callbacks),
            self._node.create_subscription(CameraInfo, self.info_topic, self._on_info, qos,
                                           callback_group=self._group, event_callbacks=event_callbacks)]
        resolve = self._node.resolve_topic_name
        self._node.get_logger().info(f"depth: {kind.__name__} on {resolve(self.depth_topic)}, camera info on "
                                     f"{resolve(self.info_topic)}")

    def stop(self) -> None:
        for sub in self._subs:
            self._node.destroy_subscription(sub)
        self._subs = []
        self.buffer.reset()
        self._colour = None
        with self._tracked_lock:
            self._waiting.clear()

    def _warn(self, text: str) -> None:
        """Log, at most once per THROTTLE_S for each kind of warning (the text without
        its numbers and parenthesised details), so one kind never hides another."""
        kind = re.sub(r"\([^)]*\)|[\d.]+", "", text)
        now = time.monotonic()
        if now - self._warned.get(kind, float("-inf")) >= THROTTLE_S:
            self._warned[kind] = now
            self._node.get_logger().warning(f"depth: {text}")

    def follow(self, settings) -> None:
        """Live parameters the depth input shares with the camera (max_image_pixels,
        jump_back_s, jump_ahead_s) changed: depth follows them."""
        self._max_pixels = settings.max_image_pixels
        self.buffer.jump_back_ns = round(settings.jump_back_s * NS)
        self.buffer.jump_ahead_ns = round(settings.jump_ahead_s * NS)

    def _on_depth(self, msg) -> None:
        stamp_ns = None
        try:
            stamp_ns = from_time(msg.header.stamp)
            convert = depth_from_compressed if self._compressed else depth_from_image
            image = convert(msg, stamp_ns, max_pixels=self._max_pixels, max_bytes=self.buffer.max_bytes)
        except ValueError as exc:
            if isinstance(exc, ImageTooLarge):
                self.too_large += 1
                self.buffer.refuse(stamp_ns, f"refused as too large ({exc})")
            else:
                self.malformed += 1
                self.buffer.refuse(stamp_ns, f"dropped as malformed ({exc})")
            self.last_error = str(exc)
            self._warn(f"depth image dropped: {exc}")
            return
        warning = self.buffer.add(image)
        self.last_error = warning
        if warning:
            self._warn(warning)
        height, width = image.pixels.shape
        self._depth_size = (width, height)
        if not self._units_judged:
            problem = units_problem(image)
            self._units_judged = problem is not None
            if problem:
                self._self_check("depth_units", f"{problem} (else every depth is out of depth_min..depth_max "
                                                "or wrong by a factor of 1000)")
        with self._tracked_lock:
            self._release_tracked_locked()
        colour = self._colour
        if colour is not None:  # refused at lookup; said here already, once in a while
            frame_id, size = colour
            if image.frame_id != frame_id:
                self._refuse("depth_frame_id", f"depth frame_id {image.frame_id!r} is not the colour camera's "
                             f"{frame_id!r} (depth must be registered to the colour camera)")
            elif not same_aspect((width, height), size):
                self._refuse("depth_size", f"depth size {width}x{height} has another aspect ratio than the "
                             f"colour image {size[0]}x{size[1]} (not registered to it?)")

    def _refuse(self, check: str, why: str) -> None:
        self.last_error = why
        self._self_check(check, f"{why}: points get no 3D position")
        self._warn(f"{why}: points get no 3D position")

    def _self_check(self, check: str, finding: str) -> None:
        """A start-up self-check that failed: logged once and kept for /diagnostics
        (depth_self_checks), so a misconfigured camera is seen at start, not guessed from
        far-off or missing 3D positions."""
        if check not in self.self_checks:
            self.self_checks[check] = finding
            self._node.get_logger().warning(f"depth self-check: {finding}")

    def _on_info(self, msg: CameraInfo) -> None:
        try:
            from_time(msg.header.stamp)
            self.camera, self.camera_error = CameraModel.from_camera_info(msg), ""
        except (ValueError, IndexError) as exc:
            self.camera, self.camera_error = None, str(exc)
            self.camera_refused += 1
            self._warn(f"camera info refused: {exc}: points get no 3D position until a usable one arrives")
            return
        if self._colour is not None:
            self._check_camera_info(self.camera, *self._colour)

    def _no_camera(self) -> str:
        """Why there is no camera model."""
        return f"camera info refused ({self.camera_error})" if self.camera_error else "no camera info received"

    def _check_camera_info(self, camera: CameraModel, frame_id: str, size: tuple[int, int]) -> None:
        """The camera info against the colour images (and the depth images) it describes."""
        if camera.frame_id and camera.frame_id != frame_id:
            self._self_check("camera_info_frame_id", f"camera info frame_id {camera.frame_id!r} is not the "
                             f"colour camera's {frame_id!r}: points get no 3D position")
        info_size = (camera.width, camera.height)
        if info_size in (size, self._depth_size):
            return
        sizes = f"the colour image's {size[0]}x{size[1]}" + (
            f" nor the depth image's {self._depth_size[0]}x{self._depth_size[1]}" if self._depth_size else "")
        if same_aspect(info_size, size):
            self._self_check("camera_info_size", f"camera info size {info_size[0]}x{info_size[1]} is neither "
                             f"{sizes}: it is scaled to the colour image; check it is this camera's calibration")
        else:
            self._self_check("camera_info_size", f"camera info size {info_size[0]}x{info_size[1]} is neither "
                             f"{sizes} and has another aspect ratio: points get no 3D position")

    # --- lookups ----------------------------------------------------------------------
    def want(self, stamp_ns: int, frame_id: str, source_size: tuple[int, int]) -> None:
        """The window kept this colour frame: answers may refer to it."""
        self._colour = (frame_id, source_size)
        self.buffer.want(stamp_ns)

    def place(self, grounding: Grounding, frames: list[Frame]) -> Grounding:
        """The answer with 3D positions; why a point has none goes to its warnings and,
        throttled, to the log."""
        by_stamp = {f.stamp_ns: f for f in frames}
        newest = frames[-1]

        def find(x, y, stamp_ns):
            frame = by_stamp.get(stamp_ns, newest)
            return locate(x, y, stamp_ns, frame.frame_id, frame.source_size, self.camera, self.buffer, self.lookup,
                          self._no_camera())

        placed = with_positions(grounding, find)
        for warning in placed.warnings[len(grounding.warnings):]:
            self._warn(warning)
        return placed

    def tracked(self, snap: TrackedObjects, frame_id: str, source_size: tuple[int, int], publish) -> None:
        """One camera frame's objects with 3D, handed to `publish(snap, frame_id)`.

        The camera callback may run before the depth callback has taken the depth image
        sent with (or before) that frame: the two are separate subscriptions. While the
        depth stream is live (its newest image within the buffer's recent span) but has
        nothing at or after the frame's stamp yet, the objects wait for it: the depth
        callback publishes them once such an image is in, else the next camera frame
        does, without waiting more. So they are at most one camera frame late, in order."""
        with self._tracked_lock:
            while self._waiting:
                self._publish_tracked(*self._waiting.popleft())
            self._waiting.append((snap, frame_id, source_size, publish))
            self._release_tracked_locked()

    def _release_tracked_locked(self) -> None:
        newest = self.buffer.newest_stamp()
        while self._waiting:
            stamp_ns = self._waiting[0][0].stamp_ns
            if newest is not None and stamp_ns - self.buffer.recent_ns <= newest < stamp_ns:
                return   # its depth image may still come
            self._publish_tracked(*self._waiting.popleft())

    def _publish_tracked(self, snap: TrackedObjects, frame_id: str, source_size: tuple[int, int], publish) -> None:
        publish(self._place_tracked(snap, frame_id, source_size), frame_id)

    def _place_tracked(self, snap: TrackedObjects, frame_id: str, source_size: tuple[int, int]) -> TrackedObjects:
        """Camera-rate objects with 3D from the depth image nearest to their frame (none
        for lost objects: their x/y are not where they are now)."""
        objects = []
        for o in snap.objects:
            position = None
            if not o.lost:
                position, why = locate(o.x, o.y, snap.stamp_ns, frame_id, source_size, self.camera,
                                       self.buffer, self.lookup, self._no_camera())
                if position is None:
                    self._warn(f"tracked object {o.object_id} ({o.label!r}) without a position: {why}")
            objects.append(replace(o, position=position))
        return replace(snap, objects=tuple(objects))

    def diagnostics(self) -> dict[str, str]:
        frames, nbytes = self.buffer.stats()
        return {"depth_frames": str(frames), "depth_bytes": str(nbytes),
                "depth_received": str(self.buffer.received), "depth_malformed": str(self.malformed),
                "depth_too_large": str(self.too_large), "depth_refused": str(self.buffer.refused),
                "camera_info": "yes" if self.camera is not None else "refused" if self.camera_error else "no",
                "camera_info_refused": str(self.camera_refused), "camera_info_error": self.camera_error,
                "depth_last_error": self.last_error,
                "depth_self_checks": "; ".join(self.self_checks.values()) or "ok"}
