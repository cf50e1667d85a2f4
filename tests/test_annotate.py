"""Drawing groundings on frames and writing PNG / MP4."""
import cv2
import numpy as np
import pytest

from molmo2_ros.annotate import annotate_frame, color_for, contact_sheet, write_annotation
from molmo2_ros.core.grounding import Frame, GroundedPoint, Grounding, Task, Track
from molmo2_ros.video_io import read_video

NS = 1_000_000_000


def frames(n=3, size=(200, 100), image_size=None):
    w, h = image_size or size
    return [Frame(np.zeros((h, w, 3), np.uint8), i * NS // 2, size) for i in range(n)]


def grounding_on(fs):
    p0 = GroundedPoint(fs[0].stamp_ns, 50.0, 40.0, 1, "cup")
    p1 = GroundedPoint(fs[1].stamp_ns, 120.0, 60.0, 1, "cup")
    p2 = GroundedPoint(fs[1].stamp_ns, 20.0, 80.0, 2, "cup")
    return Grounding(task=Task.TRACK, query="cup", points=[p0, p1, p2],
                     tracks=[Track(1, "cup", [p0, p1]), Track(2, "cup", [p2])], count=2)


def test_points_drawn_at_their_pixels_only_on_their_frame():
    fs = frames()
    g = grounding_on(fs)
    first, second = annotate_frame(fs[0], g, header=False), annotate_frame(fs[1], g, header=False)
    assert first[40, 50].tolist() == list(color_for(1))
    assert first[60, 120].tolist() == [0, 0, 0]          # p1 belongs to the second frame
    assert second[60, 120].tolist() == list(color_for(1))
    assert second[80, 20].tolist() == list(color_for(2))
    # track 1's path from p0 to p1 is drawn on the second frame (midpoint of the segment)
    assert np.allclose(second[50, 85], color_for(1), atol=30)  # anti-aliased line
    assert fs[1].image.max() == 0                         # the input frame is untouched


def test_points_scale_to_a_resized_frame_image():
    fs = frames(size=(200, 100), image_size=(100, 50))
    image = annotate_frame(fs[0], grounding_on(fs), header=False)
    assert image.shape == (50, 100, 3)
    assert image[20, 25].tolist() == list(color_for(1))


def test_header_is_drawn():
    fs = frames()
    g = grounding_on(fs)
    assert annotate_frame(fs[2], g, header=True)[:20].any()
    assert not annotate_frame(fs[2], Grounding(task=Task.POINT, query="x"), header=False).any()


def test_png_single_frame_and_contact_sheet(tmp_path):
    fs = frames(5)
    g = grounding_on(fs)
    one = cv2.imread(str(write_annotation(tmp_path / "one.png", fs[:1], g)))
    assert one.shape == (100, 200, 3)
    sheet = cv2.imread(str(write_annotation(tmp_path / "sheet.png", fs, g)))
    assert sheet.shape == (200, 800, 3)  # 4 columns x 2 rows
    assert contact_sheet([np.zeros((10, 10, 3), np.uint8)] * 2, columns=4).shape == (10, 20, 3)


def test_mp4_has_every_frame_at_the_frames_rate(tmp_path):
    fs = frames(4)
    path = write_annotation(tmp_path / "out.mp4", fs, grounding_on(fs))
    back = read_video(path, fps=100)
    assert len(back) == 4
    assert [f.stamp_ns for f in back] == [f.stamp_ns for f in fs]


def test_unknown_output_kind(tmp_path):
    with pytest.raises(ValueError, match=".png or .mp4"):
        write_annotation(tmp_path / "x.gif", frames(1), Grounding(task=Task.POINT, query="x"))
