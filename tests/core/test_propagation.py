"""TrackPropagator on shapes-world video with known motion.

The "model answers" are Groundings built from the true object centres of the frame the
answer is for (plus noise; answer-local object ids shuffled and object order reversed
every other answer, so only position and label can carry identity) and handed to the
propagator 0.8 s after that frame, as a real answer would arrive. The model is not
under test here; propagation, latency compensation and id association are.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from molmo2_ros.core.grounding import GroundedPoint, Grounding, Task, Track
from molmo2_ros.core.propagation import TrackedObjects, TrackPropagator
from molmo2_ros.sim.shapes_world import make_clip

FPS = 30
LATENCY_FRAMES = 24          # answers arrive 0.8 s after their frame
ANSWER_EVERY = 30            # one answer per second
START_NS = 1_700_000_000 * 1_000_000_000
NOISE_PX = 1.0               # sigma of the simulated model's point noise
# Stated accuracy: every propagated point within this many source pixels of the truth.
MAX_ERROR_PX = 4.0
QUERY = "track the red circles and the blue square"


@pytest.fixture(scope="module")
def clip():
    # Two objects share a label, so association must go by position, not label alone.
    c = make_clip(seed=16, n_frames=6 * FPS, fps=FPS, size=(320, 240),
                  objects=[("red", "circle"), ("red", "circle"), ("blue", "square")],
                  speed_range=(0.1, 0.2), size_range=(0.06, 0.12), start_ns=START_NS)
    assert all(o.visible_fraction == 1.0 for objs in c.objects for o in objs), \
        "scenario precondition: no occlusion"
    return c


def answer_for(clip, i: int, rng) -> Grounding:
    """What a perfect-but-noisy model answers about frame i: a track per object whose
    newest point is at frame i, with answer-local ids and an order that mean nothing
    across answers."""
    ids = rng.permutation(len(clip.objects[i])) + 1
    tracks = []
    for local_id, o in zip(ids, clip.objects[i]):
        x, y = np.array([o.cx, o.cy]) + rng.normal(0, NOISE_PX, 2)
        older = clip.objects[max(0, i - 15)][o.object_id - 1]
        tracks.append(Track(int(local_id), o.label, [
            GroundedPoint(clip.stamps_ns[max(0, i - 15)], older.cx, older.cy, int(local_id), o.label),
            GroundedPoint(clip.stamps_ns[i], float(x), float(y), int(local_id), o.label),
        ]))
    if (i // ANSWER_EVERY) % 2:
        tracks.reverse()     # every other answer lists the objects the other way round
    return Grounding(Task.TRACK, QUERY, tracks=tracks,
                     frame_stamps_ns=[clip.stamps_ns[max(0, i - 15)], clip.stamps_ns[i]])


def run(clip, propagator: TrackPropagator, shrink: int = 1):
    """Play the clip (frames shrunk by the caller `shrink` times, as a node may do);
    answers for frames 0, 30, 60, ... arrive 24 frames later.

    Returns, per frame after the first answer arrived, the published snapshot, and per
    answer (arrival frame, the answer, snapshot right after anchoring)."""
    rng = np.random.default_rng(0)
    snapshots: dict[int, TrackedObjects] = {}
    answers = []
    for i, (frame, stamp) in enumerate(zip(clip.frames, clip.stamps_ns)):
        if shrink > 1:
            w, h = clip.size
            frame = cv2.resize(frame, (w // shrink, h // shrink), interpolation=cv2.INTER_AREA)
        assert propagator.add_frame(frame, stamp, source_size=clip.size) == []
        asked = i - LATENCY_FRAMES
        if asked >= 0 and asked % ANSWER_EVERY == 0:
            g = answer_for(clip, asked, rng)
            assert propagator.anchor(g) == []
            answers.append((i, g, propagator.current()))
        if answers:
            snapshots[i] = propagator.current()
    return snapshots, answers


def truth_of(clip, i: int, x: float, y: float):
    """The true object nearest to (x, y) in frame i and the distance to its centre."""
    d = [np.hypot(o.cx - x, o.cy - y) for o in clip.objects[i]]
    k = int(np.argmin(d))
    return clip.objects[i][k].object_id, float(d[k])


@pytest.mark.parametrize("flow_max_side, shrink", [(0, 1), (160, 1), (0, 2)],
                         ids=["full-res", "downscaled-2x", "caller-shrunk-2x"])
def test_points_follow_known_motion_and_ids_stay_stable(clip, flow_max_side, shrink):
    snapshots, answers = run(clip, TrackPropagator(flow_max_side=flow_max_side), shrink)
    assert len(answers) >= 5

    # ids: the same three ids throughout, each always on the same true object.
    id_to_truth: dict[int, int] = {}
    errors = []
    for i, snap in snapshots.items():
        assert snap.stamp_ns == clip.stamps_ns[i]
        assert snap.query == QUERY
        assert len(snap.objects) == 3
        for o in snap.objects:
            assert not o.lost, f"frame {i}: object {o.object_id} lost"
            truth_id, err = truth_of(clip, i, o.x, o.y)
            assert id_to_truth.setdefault(o.object_id, truth_id) == truth_id, \
                f"frame {i}: id {o.object_id} jumped to another object"
            errors.append(err)
            assert 0 < o.confidence <= 1
            assert o.age_s == pytest.approx((snap.stamp_ns - o.anchor_stamp_ns) / 1e9)
    assert len(id_to_truth) == 3 and len(set(id_to_truth.values())) == 3
    # 3 s of motion or more, answers every second, every point within the stated error.
    assert len(snapshots) >= 3 * FPS
    assert max(errors) <= MAX_ERROR_PX, f"max error {max(errors):.2f} px"


def test_latency_compensation_beats_the_stale_answer(clip):
    _, answers = run(clip, TrackPropagator())
    compensated, stale = [], []
    for arrival, g, snap in answers:
        asked = arrival - LATENCY_FRAMES
        assert snap.stamp_ns == clip.stamps_ns[arrival]
        now = {truth_of(clip, arrival, o.x, o.y)[0]: o for o in snap.objects}
        assert len(now) == 3
        for track in g.tracks:
            p = track.points[-1]
            truth_id, _ = truth_of(clip, asked, p.x, p.y)
            t = clip.state(arrival, truth_id)
            o = now[truth_id]
            assert o.anchor_stamp_ns == p.stamp_ns
            assert o.age_s == pytest.approx(LATENCY_FRAMES / FPS)
            compensated.append(float(np.hypot(t.cx - o.x, t.cy - o.y)))
            # Uncompensated: the answer's point used as if it were the current position.
            stale.append(float(np.hypot(t.cx - p.x, t.cy - p.y)))
    print(f"at answer time: compensated mean {np.mean(compensated):.2f} px, "
          f"stale mean {np.mean(stale):.2f} px")
    assert max(compensated) <= MAX_ERROR_PX
    assert np.mean(compensated) < np.mean(stale) / 4


# ---------------------------------------------------------------- behaviour at the edges

@pytest.fixture(scope="module")
def small():
    """One red circle moving steadily; 40 frames at 30 fps, 160x120."""
    return make_clip(seed=2, n_frames=40, fps=FPS, size=(160, 120), objects=[("red", "circle")],
                     speed_range=(0.3, 0.3), size_range=(0.12, 0.12), start_ns=START_NS)


def point_answer(clip, i, query="point to the red circle", dx=0.0, dy=0.0, score=float("nan"),
                 label="red circle"):
    o = clip.objects[i][0]
    return Grounding(Task.POINT, query, points=[
        GroundedPoint(clip.stamps_ns[i], o.cx + dx, o.cy + dy, 1, label, score)])


def feed(prop, clip, frames):
    for i in frames:
        assert prop.add_frame(clip.frames[i], clip.stamps_ns[i]) == []


def test_vanished_object_is_lost_at_its_last_good_position_until_reanchored(small):
    prop = TrackPropagator()
    feed(prop, small, range(0, 16))
    assert prop.anchor(point_answer(small, 5)) == []
    before = prop.current().objects[0]
    assert not before.lost
    blank = np.full_like(small.frames[0], 200)
    assert prop.add_frame(blank, small.stamps_ns[16]) == []
    (gone,) = prop.current().objects
    assert gone.lost and gone.confidence == 0.0
    assert (gone.x, gone.y) == (before.x, before.y)
    feed(prop, small, range(17, 33))            # the object is back: still not invented
    (still,) = prop.current().objects
    assert still.lost and (still.x, still.y) == (before.x, before.y)
    # Re-anchored far beyond the association radius of its last good position: a lost
    # object still hands its id on to the same-label object nobody else claims.
    o = small.objects[30][0]
    assert np.hypot(o.cx - before.x, o.cy - before.y) > 0.1 * np.hypot(160, 120)
    assert prop.anchor(point_answer(small, 30)) == []
    (back,) = prop.current().objects
    assert not back.lost and back.object_id == before.object_id
    assert truth_of(small, 32, back.x, back.y)[1] <= MAX_ERROR_PX


def test_association_needs_the_same_label(small):
    prop = TrackPropagator()
    feed(prop, small, range(0, 8))
    assert prop.anchor(point_answer(small, 5, query="q")) == []
    (circle,) = prop.current().objects
    # Same place, another label: a different object, and the circle is kept.
    assert prop.anchor(point_answer(small, 7, query="q", label="red ball")) == []
    objs = {o.label: o for o in prop.current().objects}
    assert set(objs) == {"red circle", "red ball"}
    assert objs["red circle"].object_id == circle.object_id
    assert objs["red ball"].object_id != circle.object_id


def test_answer_older_than_the_window_is_lost_not_invented(small):
    prop = TrackPropagator(window=0.2)
    feed(prop, small, range(0, 20))
    g = point_answer(small, 0)
    (warning,) = prop.anchor(g)
    assert "outside the propagation buffer" in warning
    (o,) = prop.current().objects
    assert o.lost and o.confidence == 0.0
    assert (o.x, o.y) == pytest.approx((g.points[0].x, g.points[0].y), abs=1e-3)


def test_point_on_flat_background_is_lost(small):
    prop = TrackPropagator()
    feed(prop, small, range(0, 3))
    far = np.array([[x, y] for x in (20, 80, 140) for y in (20, 100)], float)
    o = small.objects[2][0]
    x, y = far[np.argmax(np.hypot(far[:, 0] - o.cx, far[:, 1] - o.cy))]
    g = Grounding(Task.POINT, "q", points=[GroundedPoint(small.stamps_ns[2], x, y, 1, "spot")])
    (warning,) = prop.anchor(g)
    assert "no image texture" in warning
    assert prop.current().objects[0].lost


def test_bad_input_raises_and_loses_nothing(small):
    prop = TrackPropagator()
    feed(prop, small, range(0, 10))
    assert prop.anchor(point_answer(small, 5)) == []
    state = (prop.buffered(), prop.current())
    frame, stamp = small.frames[10], small.stamps_ns[10]
    with pytest.raises(ValueError, match="uint8"):
        prop.add_frame(frame.astype(np.float32), stamp)
    with pytest.raises(ValueError, match="shape"):
        prop.add_frame(frame[:, :, :2], stamp)
    with pytest.raises(ValueError, match="too small"):
        prop.add_frame(frame[:20, :20], stamp)
    with pytest.raises(ValueError, match="integer nanoseconds"):
        prop.add_frame(frame, stamp / 1e9)
    with pytest.raises(ValueError, match=">= 0"):
        prop.add_frame(frame, -1)
    with pytest.raises(ValueError, match="source_size"):
        prop.add_frame(frame, stamp, source_size=(0, 120))
    with pytest.raises(TypeError, match="Grounding"):
        prop.anchor({"points": []})
    assert (prop.buffered(), prop.current()) == state
    feed(prop, small, range(10, 14))
    (o,) = prop.current().objects
    assert not o.lost and truth_of(small, 13, o.x, o.y)[1] <= MAX_ERROR_PX


@pytest.mark.parametrize("kwargs", [
    {"max_points": 0}, {"max_age": 0}, {"window": -1}, {"flow_max_side": 10},
    {"buffer_mb": 0}, {"fb_max_px": 0}, {"min_ncc": 2}, {"association_radius": 0}])
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        TrackPropagator(**kwargs)


def test_duplicate_backward_and_resized_frames(small):
    prop = TrackPropagator()
    feed(prop, small, range(0, 10))
    assert prop.anchor(point_answer(small, 8)) == []
    n = prop.buffered()
    (w,) = prop.add_frame(small.frames[9], small.stamps_ns[9])
    assert "duplicate" in w and prop.buffered() == n and len(prop.current().objects) == 1
    (w,) = prop.add_frame(small.frames[3], small.stamps_ns[3])
    assert "time jumped back" in w
    assert prop.buffered()[0] == 1 and prop.current().objects == ()
    assert prop.current().stamp_ns == small.stamps_ns[3]
    (w,) = prop.add_frame(np.ascontiguousarray(small.frames[4][:100, :150]), small.stamps_ns[4])
    assert "size changed" in w and prop.buffered()[0] == 1


def test_buffer_is_bounded_by_window_and_memory(small):
    by_time = TrackPropagator(window=0.3)
    feed(by_time, small, range(40))
    assert by_time.buffered()[0] == 10             # 0.3 s at 30 fps, both ends included
    one = TrackPropagator()
    feed(one, small, [0])
    (n, frame_bytes) = one.buffered()
    assert n == 1 and 160 * 120 <= frame_bytes < 1.5 * 160 * 120   # gray + its pyramid
    by_memory = TrackPropagator(window=10.0, buffer_mb=5.5 * frame_bytes / 2**20)
    feed(by_memory, small, range(40))
    assert by_memory.buffered() == (5, 5 * frame_bytes)


def test_confidence_decays_with_age_and_old_objects_are_dropped(small):
    prop = TrackPropagator(max_age=0.5)
    feed(prop, small, range(0, 6))
    assert prop.anchor(point_answer(small, 0, score=0.9)) == []
    confidences = []
    for i in range(6, 16):
        feed(prop, small, [i])
        (o,) = prop.current().objects
        confidences.append(o.confidence)
    assert confidences == sorted(confidences, reverse=True) and confidences[0] < 0.9
    feed(prop, small, [16])                       # age 16/30 s > 0.5 s
    assert prop.current().objects == ()


def test_max_points_keeps_the_best_scored_newest_points(small):
    prop = TrackPropagator(max_points=2)
    feed(prop, small, range(0, 8))
    o5, o7 = small.objects[5][0], small.objects[7][0]
    g = Grounding(Task.POINT, "q", points=[
        GroundedPoint(small.stamps_ns[5], o5.cx, o5.cy, 1, "red circle", 0.9),
        GroundedPoint(small.stamps_ns[7], o7.cx, o7.cy, 1, "red circle", 0.9),  # newer: used
        GroundedPoint(small.stamps_ns[7], 10.0, 10.0, 2, "thing", 0.2),
        GroundedPoint(small.stamps_ns[7], o7.cx, o7.cy, 3, "circle", 0.6),
    ])
    assert prop.anchor(g) == []
    objs = prop.current().objects
    assert sorted(o.label for o in objs) == ["circle", "red circle"]
    assert all(o.anchor_stamp_ns == small.stamps_ns[7] for o in objs)


def test_new_query_replaces_the_old_objects(small):
    prop = TrackPropagator()
    feed(prop, small, range(0, 8))
    assert prop.anchor(point_answer(small, 6, query="a")) == []
    (a,) = prop.current().objects
    assert prop.anchor(point_answer(small, 7, query="b", label="circle")) == []
    snap = prop.current()
    assert snap.query == "b" and [o.label for o in snap.objects] == ["circle"]
    assert snap.objects[0].object_id != a.object_id


def test_answer_id_changes_with_the_objects_it_names(small):
    prop = TrackPropagator()
    feed(prop, small, range(0, 8))
    assert prop.current().answer_id == ""
    prop.anchor(point_answer(small, 6, query="a"), "goal-1")
    assert prop.current().answer_id == "goal-1"
    # the same query answered with no point keeps the objects, and so the id they came from
    prop.anchor(Grounding(Task.POINT, "a", points=[]), "goal-2")
    snap = prop.current()
    assert snap.answer_id == "goal-1" and len(snap.objects) == 1
    # a new query with no point clears them: the empty set is the new answer's
    prop.anchor(Grounding(Task.POINT, "b", points=[]), "goal-3")
    assert prop.current().answer_id == "goal-3" and prop.current().objects == ()
    prop.reset()
    assert prop.current() == TrackedObjects(0, "b", "", ())


def test_disabled_propagator_does_nothing(small):
    prop = TrackPropagator(enable=False)
    assert prop.add_frame(small.frames[0], small.stamps_ns[0]) == []
    assert prop.anchor(point_answer(small, 0)) == []
    assert prop.buffered() == (0, 0)
    assert prop.current() == TrackedObjects(0, "", "", ())


def test_gray_rgb_and_rgba_frames_track_alike(small):
    results = []
    for convert in (lambda f: f, lambda f: cv2.cvtColor(f, cv2.COLOR_RGB2GRAY),
                    lambda f: cv2.cvtColor(f, cv2.COLOR_RGB2RGBA)):
        prop = TrackPropagator()
        for i in range(12):
            prop.add_frame(convert(small.frames[i]), small.stamps_ns[i])
        prop.anchor(point_answer(small, 4))
        results.append(prop.current().objects)
    assert results[0] == results[1] == results[2] and not results[0][0].lost


def test_object_hidden_behind_a_textured_occluder_is_lost_not_left_on_the_occluder():
    """The circle slides behind a static textured bar: flow alone would stay on the bar's
    texture; the correlation check with the anchor patch must mark it lost instead."""
    c = make_clip(seed=0, n_frames=30, fps=FPS, size=(320, 120), objects=[("red", "circle")],
                  speed_range=(0.4, 0.4), size_range=(0.07, 0.07), n_occluders=1)
    visible = [o[0].visible_fraction for o in c.objects]
    assert visible[0] == 1.0 and min(visible) == 0.0, "scenario precondition"
    texture = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (120, 320, 3), np.uint8),
                               (0, 0), 1.5)
    x0, y0, x1, y1 = c.occluders[0]
    prop = TrackPropagator()
    lost_at = None
    for i, (frame, stamp) in enumerate(zip(c.frames, c.stamps_ns)):
        frame = frame.copy()
        frame[y0:y1 + 1, x0:x1 + 1] = texture[y0:y1 + 1, x0:x1 + 1]
        prop.add_frame(frame, stamp)
        if i == 2:
            assert prop.anchor(point_answer(c, 0)) == []
        if i >= 2:
            (o,) = prop.current().objects
            if o.lost:
                lost_at = i if lost_at is None else lost_at
            else:
                assert truth_of(c, i, o.x, o.y)[1] <= MAX_ERROR_PX, f"frame {i}: off the object"
    assert lost_at is not None and visible[lost_at] < 0.5


@pytest.mark.parametrize("checks", [
    {"min_ncc": -1.0},                       # forward-backward check alone
    {"fb_max_px": 1e9},                      # correlation check alone
    {}])                                     # both (the default)
def test_each_check_catches_a_scene_cut(checks):
    """After a cut to unrelated texture, LK still 'finds' the point somewhere; each
    check must reject that in most cases, and both together in all cases."""

    def texture(seed):
        t = cv2.GaussianBlur(np.random.default_rng(seed).integers(0, 256, (120, 160), np.uint8),
                             (0, 0), 2.0)
        return cv2.normalize(t, None, 0, 255, cv2.NORM_MINMAX)

    lost = 0
    for seed in range(20):
        prop = TrackPropagator(**checks)
        prop.add_frame(texture(100), START_NS)
        prop.anchor(Grounding(Task.POINT, "q", points=[GroundedPoint(START_NS, 80, 60, 1, "x")]))
        prop.add_frame(texture(100), START_NS + 33_000_000)       # still: not lost
        assert not prop.current().objects[0].lost
        prop.add_frame(texture(seed), START_NS + 66_000_000)      # the cut
        lost += prop.current().objects[0].lost
    assert lost == 20 if not checks else lost >= 15


def test_camera_frames_are_not_held_up_by_compensation_and_are_caught_up(small):
    """Frames that arrive (on another thread) while an answer is being compensated
    are taken at once and the answer's objects are carried onto them too."""
    import threading

    class CameraDuringCompensation(TrackPropagator):
        def _compensate(self, *args):
            new = super()._compensate(*args)
            camera = threading.Thread(target=feed, args=(self, small, range(10, 14)))
            camera.start()
            camera.join(timeout=10)
            assert not camera.is_alive(), "add_frame blocked during compensation"
            return new

    prop = CameraDuringCompensation()
    feed(prop, small, range(0, 10))
    assert prop.anchor(point_answer(small, 2)) == []
    snap = prop.current()
    assert snap.stamp_ns == small.stamps_ns[13]
    (o,) = snap.objects
    assert not o.lost and truth_of(small, 13, o.x, o.y)[1] <= MAX_ERROR_PX


def test_answer_compensated_across_a_reset_is_not_used(small):
    class ResetDuringCompensation(TrackPropagator):
        def _compensate(self, *args):
            new = super()._compensate(*args)
            self.reset()
            self.add_frame(small.frames[0], small.stamps_ns[0])
            return new

    prop = ResetDuringCompensation()
    feed(prop, small, range(0, 10))
    (w,) = prop.anchor(point_answer(small, 2))
    assert "reset" in w and prop.current().objects == ()


def test_large_uniform_object_is_followed_on_a_coarser_pyramid_level():
    """The centre of a big flat square has no gradient within a flow window at full
    resolution; the point must still be followed (on a coarser level), not lost."""
    c = make_clip(seed=5, n_frames=40, fps=FPS, size=(320, 240), objects=[("blue", "square")],
                  speed_range=(0.3, 0.3), size_range=(0.16, 0.16), start_ns=START_NS)
    assert c.objects[0][0].size > 21, "precondition: even a 2x window fits inside the square"
    prop = TrackPropagator(flow_max_side=0)
    feed(prop, c, range(0, 10))
    assert prop.anchor(point_answer(c, 0, label="blue square")) == []
    for i in range(10, 40):
        feed(prop, c, [i])
        (o,) = prop.current().objects
        assert not o.lost and truth_of(c, i, o.x, o.y)[1] <= MAX_ERROR_PX, f"frame {i}"
