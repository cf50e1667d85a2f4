"""The standard messages beside ours (molmo2_ros.ros.standard_messages) field by field, and
the target-frame positions in our messages and markers (molmo2_ros.ros.messages). Over
DDS between processes: tests/ros/test_robot_frames_node.py."""
import math

from visualization_msgs.msg import Marker

from molmo2_ros.core.grounding import GroundedPoint, Grounding, Task, Track
from molmo2_ros.core.propagation import TrackedObject, TrackedObjects
from molmo2_ros.ros.messages import (from_time, grounding_from_msg, grounding_markers, grounding_to_msg,
                                     tracked_to_msg)
from molmo2_ros.ros.standard_messages import (detections_2d, detections_3d, tf_frame_name, tracked_poses,
                                              tracked_transforms)

S = 1_000_000_000


def answer(target_frame="base_link") -> Grounding:
    points = [GroundedPoint(S, 80.0, 60.0, 1, "red square", position=(0.1, 0.2, 1.5),
                            target_position=(1.6, -0.1, 0.3) if target_frame else None),
              GroundedPoint(2 * S, 40.0, 90.0, 2, "red square", score=0.25, position=(0.3, 0.4, 2.0)),
              GroundedPoint(2 * S, 10.0, 10.0, 3, "red square")]
    return Grounding(task=Task.POINT, query="red square", points=points, frame_id="cam_optical",
                     target_frame=target_frame, frame_stamps_ns=[S, 2 * S])


def test_detection2d_per_point_with_label_id_centre_and_source_header():
    array = detections_2d(answer())
    assert array.header.frame_id == "cam_optical" and from_time(array.header.stamp) == 2 * S
    assert [(d.id, d.bbox.center.position.x, d.bbox.center.position.y) for d in array.detections] == [
        ("1", 80.0, 60.0), ("2", 40.0, 90.0), ("3", 10.0, 10.0)]
    assert [from_time(d.header.stamp) for d in array.detections] == [S, 2 * S, 2 * S]
    assert {d.header.frame_id for d in array.detections} == {"cam_optical"}
    assert [d.results[0].hypothesis.class_id for d in array.detections] == ["red square"] * 3
    # the model gives no score (NaN): 1.0, so a score threshold keeps the point
    assert [d.results[0].hypothesis.score for d in array.detections] == [1.0, 0.25, 1.0]
    assert all(d.bbox.size_x == 0 and d.bbox.size_y == 0 for d in array.detections)


def test_detection3d_in_the_target_frame_only_for_points_with_a_position_there():
    array = detections_3d(answer())
    assert array.header.frame_id == "base_link"
    assert [d.id for d in array.detections] == ["1"]   # 2 has no base_link position, 3 no 3D at all
    d = array.detections[0]
    assert d.header.frame_id == "base_link" and from_time(d.header.stamp) == S
    p = d.bbox.center.position
    assert (p.x, p.y, p.z) == (1.6, -0.1, 0.3) and d.bbox.center.orientation.w == 1.0
    assert d.results[0].pose.pose.position == d.bbox.center.position
    camera = detections_3d(answer(target_frame=""))   # no target frame: the camera's optical frame
    assert camera.header.frame_id == "cam_optical" and [d.id for d in camera.detections] == ["1", "2"]
    assert camera.detections[1].bbox.center.position.z == 2.0


def tracked(target_frame="odom") -> TrackedObjects:
    return TrackedObjects(7 * S, "cup", "q1", (
        TrackedObject(1, "Red Cup!", 1.0, 2.0, S, 6.0, 0.9, False, (0.0, 0.0, 2.0),
                      (3.0, 1.0, 0.5) if target_frame else None),
        TrackedObject(2, "cup", 1.0, 2.0, S, 6.0, 0.0, True, (0.0, 0.0, 1.0), (1.0, 1.0, 1.0)),
        TrackedObject(3, "cup", 5.0, 6.0, S, 6.0, 0.8, False)), target_frame)


def test_tracked_poses_in_the_target_frame_without_lost_objects():
    poses = tracked_poses(tracked(), "cam_optical")
    assert poses.header.frame_id == "odom" and from_time(poses.header.stamp) == 7 * S
    assert [(p.position.x, p.position.y, p.position.z) for p in poses.poses] == [(3.0, 1.0, 0.5)]
    camera = tracked_poses(tracked(target_frame=""), "cam_optical")
    assert camera.header.frame_id == "cam_optical"
    assert [p.position.z for p in camera.poses] == [2.0]


def test_tf_frames_of_tracked_objects_with_stable_names_not_for_lost_ones():
    assert tf_frame_name("molmo2_grounding", "Red Cup!", 2) == "molmo2_grounding_red_cup_2"
    assert tf_frame_name("n", "", 1) == "n_object_1"
    transforms = tracked_transforms(tracked(), "cam_optical", "molmo2_grounding")
    assert [t.child_frame_id for t in transforms] == ["molmo2_grounding_red_cup_1"]
    t = transforms[0]
    assert t.header.frame_id == "cam_optical" and from_time(t.header.stamp) == 7 * S
    assert (t.transform.translation.x, t.transform.translation.y, t.transform.translation.z) == (0.0, 0.0, 2.0)
    assert t.transform.rotation.w == 1.0


def test_our_messages_carry_the_target_position_as_a_point_stamped():
    msg = grounding_to_msg(answer(), "q1")
    first, second = msg.points[0], msg.points[1]
    assert first.has_target_position and first.target_position.header.frame_id == "base_link"
    assert from_time(first.target_position.header.stamp) == S
    assert (first.target_position.point.x, first.target_position.point.z) == (1.6, 0.3)
    assert first.has_position and first.position.z == 1.5   # the camera-frame position stays
    assert not second.has_target_position and math.isnan(second.target_position.point.x)
    back = grounding_from_msg(msg)
    assert back.target_frame == "base_link" and back.points[0].target_position == answer().points[0].target_position
    objects = tracked_to_msg(tracked(), "cam_optical").objects
    assert objects[0].has_target_position and objects[0].target_position.header.frame_id == "odom"
    assert objects[0].target_position.point.x == 3.0 and not objects[2].has_target_position


def test_markers_in_the_target_frame_where_known():
    g = answer()
    g.tracks = [Track(1, "red square", [g.points[0], g.points[1]])]
    markers = grounding_markers(g, (160, 120)).markers
    spheres = [m for m in markers if m.type == Marker.SPHERE]
    assert [m.header.frame_id for m in spheres] == ["cam_optical"]   # the track's latest point has no base_link one
    line = next(m for m in markers if m.type == Marker.LINE_STRIP)
    assert line.header.frame_id == "cam_optical"    # not every point of the track has a base_link position
    g.tracks = []
    spheres = [m for m in grounding_markers(g, (160, 120)).markers if m.type == Marker.SPHERE]
    assert [m.header.frame_id for m in spheres] == ["base_link", "cam_optical", "cam_optical"]
    assert (spheres[0].pose.position.x, spheres[0].pose.position.z) == (1.6, 0.3)
    assert spheres[1].pose.position.z == 2.0 and spheres[2].pose.position.z == 1.0   # 3D; the image plane
