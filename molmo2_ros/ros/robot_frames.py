"""The robot's frames: every 3D position also in `target_frame` (base_link, odom, map),
through tf2, at the stamp of the camera frame the point lies in, never at "latest" (a
point seen 3 s ago while the robot drove is where the robot was then).

tf2 listens on its own small node (`<node>_tf_listener`) spun by its own thread, like
the C++ TransformListener's dedicated thread: transforms keep arriving while configure
waits for them, and a lookup that waits for a late transform (at most
`transform_tolerance`) blocks only the thread that asked, never the arrival of /tf.

A missing or late transform never costs an answer: the point keeps its camera-frame
position, gets no target-frame one, and the answer's warnings say why (frame unknown,
not connected, transform late, frame too old); the log says so too, once per THROTTLE_S
for each kind of reason. Whether the target frame is reachable from each camera frame
seen is logged when that camera's first frame arrives and reported in /diagnostics.
"""
from __future__ import annotations

import re
import threading
import time

import rclpy
import yaml
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.time import Time
from tf2_ros import Buffer, TransformException, TransformListener

from molmo2_ros.core.grounding import Frame, Grounding
from molmo2_ros.core.propagation import TrackedObjects
from molmo2_ros.core.rigid_transform import RigidTransform, tracked_in_target, with_target_positions

# How long tf2 keeps transforms: answers refer to frames up to the window's length back
# (8 s by default) and may take tens of seconds on a CPU.
CACHE_S = 120.0
CONFIGURE_WAIT_S = 1.0   # at configure, how long to wait for the target frame to appear
THROTTLE_S = 5.0
POLL_S = 0.005


def extrapolation(error: str) -> str:
    """"future", "past" or "" for tf2's error text: extrapolation beyond the newest or
    before the oldest transform held (with one transform held, tf2 gives both times)."""
    if "into the future" in error:
        return "future"
    if "into the past" in error:
        return "past"
    only = re.search(r"extrapolation at time ([\d.]+), but only time ([\d.]+)", error)
    if only:
        return "future" if float(only.group(1)) > float(only.group(2)) else "past"
    return ""


def why_not(error: str, tolerance_s: float) -> str:
    """tf2's error text as the reason a point has no target-frame position: the kind,
    then tf2's own words in parentheses."""
    direction = extrapolation(error)
    if direction == "future":
        kind = f"transform late: none at the frame's stamp after waiting {tolerance_s:g} s"
    elif direction == "past":
        kind = "frame too old: its stamp is before the transforms tf2 still holds"
    elif "does not exist" in error:
        kind = "frame unknown: tf2 has received no transform to or from it"
    elif "not part of the same tree" in error or "connect" in error:
        kind = "frames not connected: no chain of transforms joins them"
    else:
        kind = "no transform"
    return f"{kind} ({' '.join(error.replace('(', '[').replace(')', ']').split())})"


class RobotFrames:
    """tf2 for `node`: a Buffer filled by a TransformListener on a private node; lookups
    of the transform from a camera frame into `target_frame` at a stamp."""

    def __init__(self, node, target_frame: str, tolerance_s: float):
        self.target_frame = target_frame
        self.tolerance_s = tolerance_s
        self._log = node.get_logger()
        self._node = rclpy.create_node(f"{node.get_name()}_tf_listener", namespace=node.get_namespace(),
                                       context=node.context, start_parameter_services=False)
        self._buffer = Buffer(cache_time=Duration(seconds=CACHE_S))
        self._listener = TransformListener(self._buffer, self._node)
        self._executor = SingleThreadedExecutor(context=node.context)
        self._executor.add_node(self._node)
        self._thread = threading.Thread(target=self._spin, name="tf_listener", daemon=True)
        self._thread.start()
        self._lock = threading.Lock()
        self._cameras: dict[str, str] = {}   # camera frame_id -> "yes" or why not
        self._late: set[str] = set()         # cameras whose last camera-rate lookup found the transform late
        self._warned: dict[str, float] = {}
        self.placed = 0            # points and tracked objects given a target-frame position
        self.unplaced = 0          # ... and those that had a camera-frame position but no transform
        self.last_error = ""

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except ExternalShutdownException:
            pass

    def close(self) -> None:
        self._executor.shutdown()
        self._thread.join(timeout=5.0)
        self._node.destroy_node()

    # --- reachability ---------------------------------------------------------------
    def frames(self) -> set[str]:
        """Every frame tf2 has heard of."""
        graph = yaml.safe_load(self._buffer.all_frames_as_yaml()) or {}
        return set(graph) | {edge["parent"] for edge in graph.values()}

    def report_at_configure(self) -> None:
        """Log whether the target frame is in the TF tree (waiting CONFIGURE_WAIT_S for it);
        which camera frames reach it is said when each camera's first frame arrives."""
        deadline = time.monotonic() + CONFIGURE_WAIT_S
        while self.target_frame not in self.frames() and time.monotonic() < deadline:
            time.sleep(0.05)
        known = sorted(self.frames())
        if self.target_frame in known:
            self._log.info(f"target_frame {self.target_frame!r} is in the TF tree (frames: {', '.join(known)}); "
                           "3D positions are also given in it")
        else:
            self._log.warning(
                f"target_frame {self.target_frame!r} is not in the TF tree yet (no transform to or from it "
                f"within {CONFIGURE_WAIT_S:g} s; frames known: {', '.join(known) or 'none'}): answers keep "
                "camera-frame positions, with a warning, until it is published (e.g. robot_state_publisher, "
                "a static_transform_publisher)")

    def reachable(self, camera_frame: str) -> str:
        """"yes", or why the target frame cannot be reached from `camera_frame` now."""
        ok, error = self._buffer.can_transform_core(self.target_frame, camera_frame, Time())
        return "yes" if ok else f"no: {why_not(error, self.tolerance_s)}"

    def saw_camera(self, camera_frame: str) -> None:
        """A camera frame arrived (ingest): the first from each camera says whether the
        target frame can be reached from it."""
        if camera_frame in self._cameras:
            return
        state = self.reachable(camera_frame)
        with self._lock:
            self._cameras[camera_frame] = state
        if state == "yes":
            self._log.info(f"target_frame {self.target_frame!r} is reachable from camera frame {camera_frame!r}")
        else:
            self._log.warning(f"target_frame {self.target_frame!r} is not reachable from camera frame "
                              f"{camera_frame!r} ({state}); answers keep camera-frame positions until it is")

    # --- lookups --------------------------------------------------------------------
    def transform_at(self, camera_frame: str, stamp_ns: int,
                     wait: bool = True) -> tuple[RigidTransform | None, str]:
        """The transform from `camera_frame` into the target frame at `stamp_ns`, waiting up
        to the tolerance (with `wait`) for one not yet arrived (not for one that is too old);
        or why not."""
        if not camera_frame:
            return None, "frame unknown: the camera frame has no frame_id"
        stamp = Time(nanoseconds=stamp_ns)
        deadline = time.monotonic() + (self.tolerance_s if wait else 0.0)
        while True:
            ok, error = self._buffer.can_transform_core(self.target_frame, camera_frame, stamp)
            if ok or extrapolation(error) == "past" or time.monotonic() >= deadline:
                break
            time.sleep(POLL_S)
        if ok:
            try:
                msg = self._buffer.lookup_transform_core(self.target_frame, camera_frame, stamp)
            except TransformException as exc:
                ok, error = False, str(exc)
        if not ok:
            return None, why_not(error, self.tolerance_s if wait else 0.0)
        t, r = msg.transform.translation, msg.transform.rotation
        return RigidTransform((t.x, t.y, t.z), (r.x, r.y, r.z, r.w)), ""

    def place(self, grounding: Grounding, frames: list[Frame]) -> Grounding:
        """The answer with target-frame positions, each point's at its own frame's stamp."""
        frame_ids = {f.stamp_ns: f.frame_id for f in frames}
        placed = with_target_positions(grounding, self.target_frame,
                                       lambda stamp_ns: frame_ids.get(stamp_ns, grounding.frame_id),
                                       self.transform_at)
        points = [p for p in placed.points if p.position is not None]   # a track's points are among them
        self._count(sum(p.target_position is not None for p in points),
                    sum(p.target_position is None for p in points))
        for warning in placed.warnings[len(grounding.warnings):]:
            self._warn(warning)
        return placed

    def place_tracked(self, snap: TrackedObjects, camera_frame: str) -> TrackedObjects:
        """Camera-rate objects with target-frame positions (the transform at their frame's
        stamp). This runs on the camera callback: once a camera's transform was late, the
        next frames do not wait for it (a stopped transform would cost every frame the
        tolerance) until one is found again."""
        wait = camera_frame not in self._late
        placed, why = tracked_in_target(snap, self.target_frame, camera_frame,
                                        lambda frame, stamp: self.transform_at(frame, stamp, wait))
        if why.startswith("transform late"):
            self._late.add(camera_frame)
        elif not why:
            self._late.discard(camera_frame)
        with_position = [o for o in placed.objects if o.position is not None]
        self._count(len(with_position) if not why else 0, len(with_position) if why else 0)
        if why:
            self._warn(f"tracked objects without a position in {self.target_frame}: {why}")
        return placed

    def _count(self, placed: int, unplaced: int) -> None:
        with self._lock:
            self.placed += placed
            self.unplaced += unplaced

    def _warn(self, text: str) -> None:
        """Log at most once per THROTTLE_S for each kind of warning (the text without its
        numbers and parenthesised details), so one kind never hides another."""
        self.last_error = text
        kind = re.sub(r"\([^)]*\)|[\d.]+", "", text)
        now = time.monotonic()
        if now - self._warned.get(kind, float("-inf")) >= THROTTLE_S:
            self._warned[kind] = now
            self._log.warning(f"target_frame: {text}")

    def diagnostics(self) -> dict[str, str]:
        with self._lock:
            cameras = list(self._cameras)
        reach = {camera: self.reachable(camera) for camera in cameras}
        with self._lock:
            self._cameras.update(reach)
            return {"target_frame": self.target_frame,
                    "target_frame_reachable": "; ".join(f"from {c}: {r}" for c, r in reach.items())
                                              or "no camera frame yet",
                    "target_positions": str(self.placed), "target_positions_missing": str(self.unplaced),
                    "target_last_error": self.last_error}

