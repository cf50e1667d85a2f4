import math

import numpy as np
import pytest

from molmo2_ros.core.answer_format import ModelPoint
from molmo2_ros.core.answer_parser import parse_answer
from molmo2_ros.core.grounding import Frame
from molmo2_ros.core.mapping import map_points, map_tracks, match_frame, to_source_pixels

T0 = 1_700_000_000_123_456_789  # an absolute ROS stamp, ns
HALF_S = 500_000_000


def frame(stamp_ns, source_size, view=(64, 48)):
    # the model's view is a downscaled image; only source_size matters for pixels
    return Frame(image=np.zeros((view[1], view[0], 3), np.uint8), stamp_ns=stamp_ns,
                 source_size=source_size, frame_id="camera")


SD, HD = (640, 480), (1920, 1080)
FRAMES = [frame(T0, SD), frame(T0 + HALF_S, HD, view=(96, 54)), frame(T0 + 2 * HALF_S, SD)]
TIMES = [0.0, 0.5, 1.0]  # presented as the processor would: relative seconds, one decimal


def expected(frame_index, x, y):
    """The definition: x_px = x/1000*W, y_px = y/1000*H of that frame's source size."""
    width, height = FRAMES[frame_index].source_size
    return FRAMES[frame_index].stamp_ns, x / 1000 * width, y / 1000 * height


def test_known_answer_on_640x480_and_1920x1080_frames():
    answer = parse_answer('<points coords="0.0 1 500 500;0.5 2 250 750 3 1000 000;1.0 4 078 999">cup</points>')
    grounded, warnings = map_points(answer.points, FRAMES, TIMES)
    assert warnings == []
    got = [(g.stamp_ns, g.x, g.y, g.object_id, g.label) for g in grounded]
    assert got == [
        (*expected(0, 500, 500), 1, "cup"),
        (*expected(1, 250, 750), 2, "cup"),
        (*expected(1, 1000, 0), 3, "cup"),
        (*expected(2, 78, 999), 4, "cup"),
    ]
    # spelled out once, so a wrong definition cannot hide behind the helper
    assert got[0][:3] == (T0, 320.0, 240.0)
    assert got[1][:3] == (T0 + HALF_S, 480.0, 810.0)
    assert got[2][:3] == (T0 + HALF_S, 1920.0, 0.0)
    assert all(math.isnan(g.score) for g in grounded)


@pytest.mark.parametrize("source_size", [SD, HD, (1, 1), (3, 1000)])
def test_pixel_centres_survive_the_model_rounding(source_size):
    width, height = source_size
    for column in range(0, width, max(1, width // 37)):
        for row in range(0, height, max(1, height // 29)):
            # the reference's forward map of a pixel centre: round(1000 * x / width)
            x, y = round(1000 * (column + 0.5) / width), round(1000 * (row + 0.5) / height)
            x_px, y_px = to_source_pixels(x, y, source_size)
            # off by at most the 0.5-unit rounding of the 0..1000 grid
            assert abs(x_px - (column + 0.5)) <= 0.5 * width / 1000 + 1e-9
            assert abs(y_px - (row + 0.5)) <= 0.5 * height / 1000 + 1e-9


def test_time_maps_to_the_nearest_presented_frame_time():
    assert match_frame(0.0, TIMES) == (0, True)
    assert match_frame(0.7, TIMES) == (1, True)      # 0.2 from 0.5 <= half interval 0.25
    assert match_frame(0.25, TIMES) == (0, True)     # a tie goes to the earlier frame
    assert match_frame(1.3, TIMES) == (2, False)     # 0.3 past the last frame
    assert match_frame(-4.0, TIMES) == (0, False)


def test_irregular_frame_times_use_the_median_interval():
    times = [0.0, 0.6, 1.1, 1.5]  # gaps 0.6, 0.5, 0.4 -> median 0.5 -> tolerance 0.25
    assert match_frame(0.2, times) == (0, True)
    assert match_frame(1.3, times) == (2, True)      # 0.2 from 1.1 and 1.5: the earlier
    assert match_frame(1.8, times) == (3, False)


def test_unmatched_time_warns_once_and_maps_to_the_nearest_frame():
    points = [ModelPoint(2.0, 1, 100, 100), ModelPoint(2.0, 2, 200, 200), ModelPoint(0.5, 3, 0, 0)]
    grounded, warnings = map_points(points, FRAMES, TIMES)
    assert [g.stamp_ns for g in grounded] == [FRAMES[2].stamp_ns] * 2 + [FRAMES[1].stamp_ns]
    assert len(warnings) == 1 and "model time 2" in warnings[0]


def test_image_input_index_is_one_based():
    image = [frame(T0, HD)]
    grounded, warnings = map_points([ModelPoint(1, 1, 500, 250)], image, [1.0])
    assert (grounded[0].stamp_ns, grounded[0].x, grounded[0].y) == (T0, 1920 * 0.5, 1080 * 0.25)
    assert warnings == []
    _, warnings = map_points([ModelPoint(3, 1, 500, 250)], image, [1.0])
    assert "model time 3" in warnings[0]


def test_tracks_are_grounded_per_id_in_stamp_order():
    answer = parse_answer('<tracks coords="0.0 1 500 500 2 100 100;0.5 2 250 250;1.0 1 000 1000">cup</tracks>')
    tracks, warnings = map_tracks(answer.tracks, FRAMES, TIMES)
    assert warnings == []
    assert [(t.id, t.label) for t in tracks] == [(1, "cup"), (2, "cup")]
    assert [(g.stamp_ns, g.x, g.y) for g in tracks[0].points] == [expected(0, 500, 500), expected(2, 0, 1000)]
    assert [(g.stamp_ns, g.x, g.y) for g in tracks[1].points] == [expected(0, 100, 100), expected(1, 250, 250)]
    assert all(g.object_id == t.id for t in tracks for g in t.points)


def test_frame_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 frame times for 3 frames"):
        map_points([], FRAMES, [0.0, 0.5])
    with pytest.raises(ValueError, match="no frames"):
        match_frame(0.0, [])
