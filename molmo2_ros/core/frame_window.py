"""The frame window: the recent camera frames a query is answered over.

Frames arrive at camera rate; the window keeps one every 1/fps seconds of *source
stamp* time (the model's sampling rate, default 2 fps), each resized on ingest so its
longer side is at most `max_side`, with its original size, stamp and frame_id. It is
bounded by seconds and by count, so its memory never grows with the input rate.

Stamps must increase. A duplicate or slightly older stamp is rejected with a reason; a
stamp older than the newest by more than `jump_back_s` means time jumped backwards
(bag replay restarting, sim time reset): the window is cleared and starts over. A stamp
newer than the newest by more than `jump_ahead_s` is rejected too, unless the frame
right after it confirms the jump (a stamp after it, within `jump_ahead_s`): one frame
stamped far in the future must not make every following frame look like a jump back.

`select()` returns a snapshot list of immutable Frames, so inference working on it never
races the ingest thread.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable
from dataclasses import dataclass
from enum import Enum

import cv2
import numpy as np

from molmo2_ros.core.grounding import Frame, NS



def fit_to_max_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink `image` (any channel count/dtype cv2 resizes) so max(h, w) <= max_side,
    keeping the aspect ratio; returned unchanged when it already fits or max_side <= 0."""
    height, width = image.shape[:2]
    longest = max(height, width)
    if max_side <= 0 or longest <= max_side:
        return image
    scale = max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


class Ingest(str, Enum):
    """What the window did with an offered frame."""

    ACCEPTED = "accepted"
    SKIPPED = "skipped"      # arrived before the next sampling slot (normal at camera rate)
    REJECTED = "rejected"    # duplicate or out-of-order stamp; `reason` says which
    RESET = "reset"          # time jumped backwards: window cleared, this frame kept


@dataclass(frozen=True)
class Decision:
    outcome: Ingest
    reason: str = ""

    @property
    def keep(self) -> bool:
        """Whether the frame goes into the window (so it is worth converting)."""
        return self.outcome in (Ingest.ACCEPTED, Ingest.RESET)


@dataclass(frozen=True)
class WindowStats:
    frames: int
    max_frames: int
    span_s: float          # newest stamp - oldest stamp
    bytes: int             # image memory held
    offered: int           # frames offered in total
    accepted: int
    rejected: int
    resets: int


class FrameWindow:
    """Thread-safe rolling window of sampled frames (see the module docstring)."""

    def __init__(self, fps: float = 2.0, max_seconds: float = 10.0, max_frames: int = 16,
                 max_side: int = 1024, jump_back_s: float = 1.0, jump_ahead_s: float = 10.0):
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        if max_side < 0:
            raise ValueError(f"max_side must be >= 0 (0 = keep the source size), got {max_side}")
        if jump_back_s < 0:
            raise ValueError(f"jump_back_s must be >= 0, got {jump_back_s}")
        if jump_ahead_s <= 0:
            raise ValueError(f"jump_ahead_s must be > 0, got {jump_ahead_s}")
        self.fps = fps
        self.max_seconds = max_seconds
        self.max_frames = max_frames
        self.max_side = max_side
        self._period_ns = round(NS / fps)
        # A frame may arrive this much before its slot and still take it: camera jitter
        # must not make a 30 Hz stream skip a whole sampling period.
        self._slack_ns = self._period_ns // 10
        self._jump_back_ns = round(jump_back_s * NS)
        self._jump_ahead_ns = round(jump_ahead_s * NS)
        self._lock = threading.Lock()
        self._frames: deque[Frame] = deque(maxlen=max_frames)
        self._newest_ns: int | None = None   # newest stamp offered (kept or not)
        self._next_due_ns: int | None = None
        self._ahead_ns: int | None = None    # the previous frame, if rejected as far ahead
        self._offered = self._accepted = self._rejected = self._resets = 0

    def add(self, stamp_ns: int, image: np.ndarray | Callable[[], tuple[np.ndarray, tuple[int, int]]],
            frame_id: str = "", source_size: tuple[int, int] | None = None) -> Decision:
        """Offer a frame: an RGB uint8 HxWx3 array, or a callable returning
        `(rgb, source_size)` that is only called when the frame is kept (so skipped
        frames are never decoded). `source_size` (width, height) is the camera image's
        size when the array was already shrunk; default: the array's own size.

        Call from one ingest thread. If `image` is invalid or the callable raises, the
        error propagates and the window is left unchanged (apart from the counters).
        """
        with self._lock:
            decision = self._decide(stamp_ns)
            self._offered += 1
            if decision.outcome is Ingest.REJECTED:
                self._rejected += 1
            if decision.outcome is Ingest.SKIPPED:
                self._newest_ns = stamp_ns
            if not decision.keep:
                return decision
        if callable(image):
            image, source_size = image()
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"frame must be RGB uint8 HxWx3, got {image.dtype} {image.shape}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"frame has zero size {image.shape[1]}x{image.shape[0]}")
        if source_size is None:
            source_size = (image.shape[1], image.shape[0])
        # Resize outside the lock: queries can snapshot the window meanwhile.
        stored = np.ascontiguousarray(fit_to_max_side(image, self.max_side))
        stored.flags.writeable = False
        frame = Frame(image=stored, stamp_ns=stamp_ns,
                      source_size=(int(source_size[0]), int(source_size[1])), frame_id=frame_id)
        with self._lock:
            if decision.outcome is Ingest.RESET:
                self._frames.clear()
                self._next_due_ns = None
                self._resets += 1
            self._accepted += 1
            self._newest_ns = stamp_ns
            self._frames.append(frame)
            # The next slot is one period on; after a gap in the stream, one period
            # from this frame (minus the slack, so the gap does not shift every slot).
            self._next_due_ns = stamp_ns + self._period_ns if self._next_due_ns is None \
                else max(self._next_due_ns + self._period_ns,
                         stamp_ns + self._period_ns - self._slack_ns)
            oldest_allowed = stamp_ns - round(self.max_seconds * NS)
            while self._frames and self._frames[0].stamp_ns < oldest_allowed:
                self._frames.popleft()
        return decision

    def _decide(self, stamp_ns: int) -> Decision:
        newest = self._newest_ns
        ahead_of, self._ahead_ns = self._ahead_ns, None
        if newest is not None:
            if stamp_ns == newest:
                return Decision(Ingest.REJECTED, f"duplicate stamp {_fmt(stamp_ns)}")
            if stamp_ns < newest:
                behind = newest - stamp_ns
                if behind > self._jump_back_ns:
                    return Decision(Ingest.RESET, (
                        f"time jumped back {behind / NS:.3f} s (from {_fmt(newest)} to "
                        f"{_fmt(stamp_ns)}): bag replay or sim time reset? window cleared"))
                return Decision(Ingest.REJECTED, (
                    f"out-of-order stamp {_fmt(stamp_ns)}, {behind / NS:.3f} s older than "
                    f"the newest {_fmt(newest)}"))
            ahead = stamp_ns - newest
            confirmed = ahead_of is not None and 0 < stamp_ns - ahead_of <= self._jump_ahead_ns
            if ahead > self._jump_ahead_ns and not confirmed:
                self._ahead_ns = stamp_ns
                return Decision(Ingest.REJECTED, (
                    f"stamp {_fmt(stamp_ns)} is {ahead / NS:.3f} s ahead of the newest "
                    f"{_fmt(newest)} (more than jump_ahead_s): rejected unless the next frame "
                    "confirms the jump"))
        if self._next_due_ns is not None and stamp_ns < self._next_due_ns - self._slack_ns:
            return Decision(Ingest.SKIPPED)
        return Decision(Ingest.ACCEPTED)

    def select(self, max_frames: int = 0, seconds: float = 0.0) -> list[Frame]:
        """The newest `max_frames` frames within the last `seconds` before the newest
        frame (0 = no limit beyond the window's own), oldest first."""
        with self._lock:
            frames = list(self._frames)
        if seconds > 0 and frames:
            oldest_allowed = frames[-1].stamp_ns - round(seconds * NS)
            frames = [f for f in frames if f.stamp_ns >= oldest_allowed]
        if max_frames > 0:
            frames = frames[-max_frames:]
        return frames

    def reset(self) -> None:
        """Forget all frames and stamps (e.g. when the node is deactivated)."""
        with self._lock:
            self._frames.clear()
            self._newest_ns = self._next_due_ns = self._ahead_ns = None

    def stats(self) -> WindowStats:
        with self._lock:
            frames = list(self._frames)
            return WindowStats(
                frames=len(frames), max_frames=self.max_frames,
                span_s=(frames[-1].stamp_ns - frames[0].stamp_ns) / NS if frames else 0.0,
                bytes=sum(f.image.nbytes for f in frames),
                offered=self._offered, accepted=self._accepted,
                rejected=self._rejected, resets=self._resets)

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)


def _fmt(stamp_ns: int) -> str:
    return f"{stamp_ns // NS}.{stamp_ns % NS:09d}"
