"""The frame window: sampling by source stamp, bounds, bad stamps, snapshots."""
import numpy as np
import pytest

from molmo2_ros.core.frame_window import FrameWindow, Ingest, fit_to_max_side

NS = 1_000_000_000
T0 = 1_700_000_000 * NS  # an absolute ROS time


def rgb(width=64, height=48, value=0):
    return np.full((height, width, 3), value, np.uint8)


def camera(window, seconds, hz=30.0, start_ns=T0, **kw):
    """Feed a camera stream; return the decisions."""
    n = int(seconds * hz)
    return [window.add(start_ns + round(i * NS / hz), rgb(value=i % 256), **kw) for i in range(n)]


def test_samples_camera_rate_down_to_model_fps_by_source_stamp():
    window = FrameWindow(fps=2.0, max_seconds=100, max_frames=100)
    decisions = camera(window, seconds=10, hz=30)
    kept = window.select()
    assert sum(d.outcome is Ingest.ACCEPTED for d in decisions) == len(kept)
    assert len(kept) == 20 + 1  # 0.0 .. 9.97 s: one per 0.5 s slot, both ends
    gaps = np.diff([f.stamp_ns for f in kept]) / NS
    assert np.all(np.abs(gaps - 0.5) <= 1 / 30 + 1e-9), gaps
    assert all(d.outcome is Ingest.SKIPPED for d in decisions if not d.keep)


def test_jittery_camera_keeps_the_model_rate():
    rng = np.random.default_rng(0)
    window = FrameWindow(fps=2.0, max_seconds=100, max_frames=100)
    stamps = T0 + np.cumsum(rng.uniform(0.02, 0.047, 600) * NS).astype(np.int64)
    for s in stamps:
        window.add(int(s), rgb())
    duration = (stamps[-1] - stamps[0]) / NS
    assert abs(len(window) - duration * 2.0) <= 2


def test_bounded_by_count_and_by_seconds():
    by_count = FrameWindow(fps=10, max_seconds=100, max_frames=5)
    camera(by_count, seconds=3, hz=30)
    assert len(by_count) == 5
    by_seconds = FrameWindow(fps=2, max_seconds=2.0, max_frames=100)
    camera(by_seconds, seconds=10, hz=30)
    frames = by_seconds.select()
    assert (frames[-1].stamp_ns - frames[0].stamp_ns) <= 2 * NS
    assert len(frames) == 5  # 2 s at 2 fps, both ends included


def test_resized_on_ingest_keeping_source_size_stamp_and_frame_id():
    window = FrameWindow(max_side=320)
    window.add(T0, rgb(1920, 1080), frame_id="cam_optical")
    frame = window.select()[0]
    assert frame.image.shape == (180, 320, 3)
    assert frame.source_size == (1920, 1080)
    assert frame.stamp_ns == T0 and frame.frame_id == "cam_optical"
    assert not frame.image.flags.writeable
    assert fit_to_max_side(rgb(100, 50), 320).shape == (50, 100, 3)  # small stays as is


def test_duplicate_and_out_of_order_stamps_are_rejected_with_a_reason():
    window = FrameWindow(fps=2, jump_back_s=1.0)
    window.add(T0, rgb(value=1))
    window.add(T0 + NS, rgb(value=2))
    dup = window.add(T0 + NS, rgb(value=3))
    older = window.add(T0 + NS // 2, rgb(value=4))
    assert dup.outcome is Ingest.REJECTED and "duplicate" in dup.reason
    assert older.outcome is Ingest.REJECTED and "out-of-order" in older.reason
    assert [int(f.image[0, 0, 0]) for f in window.select()] == [1, 2]  # nothing lost
    assert window.stats().rejected == 2


def test_time_jump_back_resets_the_window_and_keeps_the_new_frame():
    window = FrameWindow(fps=2, jump_back_s=1.0)
    camera(window, seconds=5)
    jump = window.add(T0 - 10 * NS, rgb(value=99))
    assert jump.outcome is Ingest.RESET and "jumped back" in jump.reason
    frames = window.select()
    assert [f.stamp_ns for f in frames] == [T0 - 10 * NS]
    window.add(T0 - 10 * NS + NS, rgb())  # the replay continues normally
    assert len(window) == 2 and window.stats().resets == 1


def test_one_stamp_far_ahead_is_rejected_and_does_not_wipe_the_window():
    window = FrameWindow(fps=2, max_seconds=100, jump_back_s=1.0, jump_ahead_s=10.0)
    camera(window, seconds=3)
    kept = [f.stamp_ns for f in window.select()]
    glitch = window.add(T0 + 3600 * NS, rgb(value=99))
    assert glitch.outcome is Ingest.REJECTED and "ahead of the newest" in glitch.reason
    camera(window, seconds=2, start_ns=T0 + 3 * NS)  # the stream goes on: no jump back
    assert window.stats().resets == 0 and window.stats().rejected == 1
    assert [f.stamp_ns for f in window.select()][:len(kept)] == kept
    # Within jump_ahead_s a gap is no glitch (a camera paused for 9 s).
    assert window.add(T0 + 14 * NS, rgb()).outcome is Ingest.ACCEPTED


def test_a_jump_ahead_confirmed_by_the_next_frame_is_taken():
    window = FrameWindow(fps=2, max_seconds=8, jump_ahead_s=10.0)
    camera(window, seconds=3)
    first = window.add(T0 + 60 * NS, rgb())
    second = window.add(T0 + 60 * NS + NS // 2, rgb())  # the new timeline goes on
    assert first.outcome is Ingest.REJECTED and second.outcome is Ingest.ACCEPTED
    assert [f.stamp_ns for f in window.select()] == [T0 + 60 * NS + NS // 2]  # the old ones aged out
    # Two glitches far apart confirm nothing.
    window.add(T0 + 600 * NS, rgb())
    assert window.add(T0 + 6000 * NS, rgb()).outcome is Ingest.REJECTED


def test_select_newest_frames_or_seconds_as_a_snapshot():
    window = FrameWindow(fps=2, max_seconds=100, max_frames=100)
    camera(window, seconds=10)
    newest3 = window.select(max_frames=3)
    assert [f.stamp_ns for f in newest3] == [f.stamp_ns for f in window.select()[-3:]]
    last2s = window.select(seconds=2.0)
    assert last2s[-1].stamp_ns - last2s[0].stamp_ns <= 2 * NS and len(last2s) == 5
    snapshot = window.select()
    camera(window, seconds=5, start_ns=T0 + 20 * NS)
    assert len(snapshot) == 21 and snapshot[-1].stamp_ns < T0 + 10 * NS


def test_lazy_conversion_runs_only_for_kept_frames_and_failures_change_nothing():
    window = FrameWindow(fps=2)
    calls = []

    def convert(i):
        def run():
            calls.append(i)
            return rgb(), (64, 48)
        return run

    for i in range(30):
        window.add(T0 + i * NS // 30, convert(i))
    assert calls == [0, 14, 29]  # 0 s, then the frames due at ~0.5 s and ~1.0 s

    def broken():
        raise ValueError("bad step")

    with pytest.raises(ValueError, match="bad step"):
        window.add(T0 + 5 * NS, broken)
    with pytest.raises(ValueError, match="RGB uint8"):
        window.add(T0 + 6 * NS, np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="zero size"):
        window.add(T0 + 7 * NS, np.zeros((0, 4, 3), np.uint8))
    assert len(window) == 3
    assert window.add(T0 + 8 * NS, rgb()).outcome is Ingest.ACCEPTED


def test_memory_is_bounded_under_a_4k_flood():
    window = FrameWindow(fps=2, max_seconds=10, max_frames=8, max_side=640)
    frame4k = rgb(3840, 2160)
    for i in range(30 * 20):  # 20 s of 30 Hz 4K
        window.add(T0 + i * NS // 30, frame4k)
    stats = window.stats()
    assert stats.frames == 8 and stats.offered == 600
    assert stats.bytes == 8 * 360 * 640 * 3


def test_invalid_settings_are_refused():
    for kwargs in ({"fps": 0}, {"max_seconds": -1}, {"max_frames": 0}, {"max_side": -5}):
        with pytest.raises(ValueError):
            FrameWindow(**kwargs)
