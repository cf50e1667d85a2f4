"""Target-frame positions (molmo2_ros.core.rigid_transform): the transform math, each point
at its own frame's stamp, and points without a transform kept with the reason."""
import math

import numpy as np
import pytest

from molmo2_ros.core.grounding import GroundedPoint, Grounding, Task, Track
from molmo2_ros.core.propagation import TrackedObject, TrackedObjects
from molmo2_ros.core.rigid_transform import RigidTransform, tracked_in_target, with_target_positions

# 90 degrees about z, then 1 m along x: (1, 0, 0) -> (0, 1, 0) + (1, 0, 0)
QUARTER_TURN = RigidTransform((1.0, 0.0, 0.0), (0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)))


def test_apply_rotates_then_translates():
    np.testing.assert_allclose(QUARTER_TURN.apply((1.0, 0.0, 0.0)), (1.0, 1.0, 0.0), atol=1e-12)
    np.testing.assert_allclose(QUARTER_TURN.apply((0.0, 2.0, 3.0)), (-1.0, 0.0, 3.0), atol=1e-12)


def test_an_unnormalised_quaternion_is_normalised():
    doubled = RigidTransform((0.0, 0.0, 0.0), tuple(2 * v for v in QUARTER_TURN.rotation))
    np.testing.assert_allclose(doubled.apply((1.0, 0.0, 0.0)), (0.0, 1.0, 0.0), atol=1e-12)


def test_the_optical_frame_convention_maps_forward_to_x():
    """camera_optical -> camera_link (REP 103): z forward becomes x, x right becomes -y."""
    optical_to_link = RigidTransform((0.0, 0.0, 0.0), (-0.5, 0.5, -0.5, 0.5))
    np.testing.assert_allclose(optical_to_link.apply((0.0, 0.0, 2.0)), (2.0, 0.0, 0.0), atol=1e-12)
    np.testing.assert_allclose(optical_to_link.apply((1.0, 0.0, 0.0)), (0.0, -1.0, 0.0), atol=1e-12)


def point(stamp_ns, position=(0.0, 0.0, 1.0), object_id=1):
    return GroundedPoint(stamp_ns=stamp_ns, x=10.0, y=20.0, object_id=object_id, label="cup", position=position)


def test_each_point_is_transformed_at_its_own_frame_stamp():
    """A base moving 1 m/s along x: each point moves by its own stamp, not the newest one."""
    asked = []

    def transform_at(frame_id, stamp_ns):
        asked.append((frame_id, stamp_ns))
        return RigidTransform((stamp_ns / 1e9, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)), ""

    points = [point(1_000_000_000), point(3_000_000_000, object_id=2)]
    g = Grounding(task=Task.TRACK, query="cup", points=points, tracks=[Track(1, "cup", points[:1])],
                  frame_id="cam", frame_stamps_ns=[1_000_000_000, 3_000_000_000])
    placed = with_target_positions(g, "odom", lambda stamp: {1_000_000_000: "cam", 3_000_000_000: "cam2"}[stamp],
                                   transform_at)
    assert [p.target_position for p in placed.points] == [(1.0, 0.0, 1.0), (3.0, 0.0, 1.0)]
    assert placed.tracks[0].points[0].target_position == (1.0, 0.0, 1.0)
    assert [p.position for p in placed.points] == [(0.0, 0.0, 1.0)] * 2     # camera frame kept
    assert placed.target_frame == "odom" and placed.warnings == []
    assert sorted(asked) == [("cam", 1_000_000_000), ("cam2", 3_000_000_000)]   # once per frame


def test_points_without_a_transform_keep_their_camera_position_and_say_why():
    def transform_at(frame_id, stamp_ns):
        if stamp_ns == 2:
            return None, "transform late: none at the frame's stamp after waiting 0.1 s (tf2: future)"
        return RigidTransform((0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)), ""

    g = Grounding(task=Task.POINT, query="cup", points=[point(1), point(2), point(2, object_id=2),
                                                         point(1, position=None)],
                  warnings=["parser: clipped"], frame_id="cam", frame_stamps_ns=[1, 2])
    placed = with_target_positions(g, "base_link", lambda stamp: "cam", transform_at)
    assert [p.target_position for p in placed.points] == [(0.0, 0.0, 1.0), None, None, None]
    assert placed.points[1].position == (0.0, 0.0, 1.0)
    assert placed.warnings == ["parser: clipped", "base_link: 2 points without a position in base_link: transform "
                               "late: none at the frame's stamp after waiting 0.1 s (tf2: future)"]


def test_tracked_objects_get_the_transform_at_their_camera_frame():
    objects = (TrackedObject(1, "cup", 1.0, 2.0, 0, 0.1, 0.9, False, position=(0.0, 0.0, 2.0)),
               TrackedObject(2, "cup", 1.0, 2.0, 0, 0.1, 0.0, True))
    snap = TrackedObjects(5, "cup", "q1", objects)
    placed, why = tracked_in_target(snap, "map", "cam",
                                    lambda f, s: (RigidTransform((s, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)), ""))
    assert why == "" and placed.target_frame == "map"
    assert [o.target_position for o in placed.objects] == [(5.0, 0.0, 2.0), None]
    missing, why = tracked_in_target(snap, "map", "cam", lambda f, s: (None, "frame unknown (x)"))
    assert why == "frame unknown (x)" and missing.objects[0].target_position is None


@pytest.mark.parametrize("rotation", [(0.0, 0.0, 0.0, 1.0), (0.1, -0.7, 0.3, 0.6)])
def test_the_rotation_matrix_is_orthonormal(rotation):
    m = RigidTransform((0.0, 0.0, 0.0), rotation).matrix()
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(m) == pytest.approx(1.0)
