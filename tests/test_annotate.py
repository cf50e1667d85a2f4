"""Drawing groundings on frames and writing PNG / MP4."""
import cv2
import numpy as np
import pytest

from molmo2_ros.annotate import annotate_frame, color_for, contact_sheet, layout_labels, write_annotation
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


def crowded(size=(320, 240), n=12):
    """A count answer with `n` points bunched together and against the edges, on one frame."""
    w, h = size
    frame = Frame(np.full((h, w, 3), 200, np.uint8), 0, size)
    spots = [(w / 2 + 5 * (i % 4), h / 2 + 5 * (i // 4)) for i in range(n - 4)]
    spots += [(1, 1), (w - 1, 1), (1, h - 1), (w - 1, h - 1)]
    points = [GroundedPoint(0, x, y, i + 1, "red circle") for i, (x, y) in enumerate(spots)]
    return frame, Grounding(task=Task.COUNT, query="red circle", points=points, count=n)


@pytest.mark.parametrize("size", [(320, 240), (200, 100), (1280, 720)])
def test_labels_lie_inside_the_image_and_never_overlap(size):
    frame, g = crowded(size)
    here = [(p, round(p.x), round(p.y)) for p in g.points]
    labels = layout_labels(size, g, here)
    assert labels[0].text.startswith("count: red circle") and labels[0].box[:2] == (0, 0)
    assert len(labels) >= 5          # the header and the points with room beside them
    for i, a in enumerate(labels):
        x0, y0, x1, y1 = a.box
        assert 0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1], a
        for b in labels[i + 1:]:
            assert x1 <= b.box[0] or b.box[2] <= x0 or y1 <= b.box[1] or b.box[3] <= y0, (a, b)


def test_labels_are_legible_at_the_demos_tile_size_and_scale_with_it():
    small, big = (layout_labels(size, crowded(size)[1], [])[0] for size in [(320, 240), (1280, 960)])
    height = small.box[3] - small.box[1]
    assert 12 <= height <= 30                                 # text >= 9 px high, with its padding
    assert big.box[3] - big.box[1] > 2 * height


def test_a_long_header_is_shortened_to_its_tile():
    g = Grounding(task=Task.POINT, query="the small red circle behind the blue square on the left " * 3)
    (header,) = layout_labels((160, 120), g, [])
    assert header.text.startswith("point: the") and header.text.endswith("...")
    assert header.box[2] <= 160


def test_a_points_label_names_its_object_and_its_label_only_where_it_differs_from_the_query():
    g = Grounding(task=Task.POINT, query="shapes", points=[GroundedPoint(0, 50, 50, 1, "shapes"),
                                                          GroundedPoint(0, 150, 50, 2, "blue square")])
    texts = [lb.text for lb in layout_labels((320, 240), g, [(p, round(p.x), round(p.y)) for p in g.points])]
    assert texts == ["point: shapes", "1", "2 blue square"]


def test_the_drawn_image_shows_each_label_on_its_box():
    frame, g = crowded()
    image = annotate_frame(frame, g)
    labels = layout_labels((320, 240), g, [(p, round(p.x), round(p.y)) for p in g.points])
    for label in labels:
        x0, y0, x1, y1 = label.box
        patch = image[y0:y1, x0:x1].reshape(-1, 3)
        assert image[y0, x0].tolist() == list(label.background), label      # the box's corner
        text = ~np.all(patch == label.background, axis=1)
        assert 0.03 < text.mean() < 0.6, label                               # and text on it
