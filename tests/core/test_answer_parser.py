import random

import pytest

from molmo2_ros.core.answer_format import (
    ModelPoint, format_count_answer, format_point_answer, format_track_answer)
from molmo2_ros.core.answer_parser import ParsedAnswer, parse_answer


def xyt(points):
    return [(p.t, p.object_id, p.x, p.y) for p in points]


# --- the examples of molmo2-reference.md, verbatim -------------------------------------

def test_official_counting_example():
    a = parse_answer('Counting the <points coords="13.5 1 120 305 2 451 702;56.0 3 486 697">'
                     'robot gripper</points> shows a total of 3.')
    assert xyt(a.points) == [(13.5, 1, 120, 305), (13.5, 2, 451, 702), (56.0, 3, 486, 697)]
    assert {p.label for p in a.points} == {"robot gripper"}
    assert a.count == 3 and a.tracks == {} and a.warnings == [] and not a.truncated


def test_official_tracks_example():
    a = parse_answer('<tracks coords="0.0 1 078 278 2 500 500;0.5 2 508 503;1.0 1 094 292">cup</tracks>')
    assert {k: xyt(v) for k, v in a.tracks.items()} == {
        1: [(0.0, 1, 78, 278), (1.0, 1, 94, 292)],     # absent at 0.5 (occluded), not ended
        2: [(0.0, 2, 500, 500), (0.5, 2, 508, 503)]}
    assert len(a.points) == 4 and a.count is None and a.warnings == []


def test_paper_tracks_example_without_label_or_closing_tag():
    a = parse_answer('<tracks coords="0.0 1 635 522;0.5 1 606 490 2 511 124;1.0 2 515 164;1.5 2 520 168">')
    assert {k: xyt(v) for k, v in a.tracks.items()} == {
        1: [(0.0, 1, 635, 522), (0.5, 1, 606, 490)],
        2: [(0.5, 2, 511, 124), (1.0, 2, 515, 164), (1.5, 2, 520, 168)]}
    assert a.truncated and any("ends inside" in w for w in a.warnings)


def test_there_are_none_is_zero():
    # the official counting parser's non-raw regex never matched this; ours must
    for text in ["There are none.", "there are none", "  There are none.\n", "Sorry. There are none."]:
        a = parse_answer(text)
        assert a.count == 0 and a.points == [] and a.warnings == []


def test_bare_integer_count():
    assert parse_answer("7").count == 7
    assert parse_answer(" 12.\n").count == 12
    assert parse_answer("I see 7 of them").count is None


def test_total_and_count_then_point_forms():
    assert parse_answer("a total of 4").count == 4
    a = parse_answer('There are 2 <points coords="1 1 100 100 2 200 200">cups</points>.')
    assert a.count == 2 and len(a.points) == 2
    assert parse_answer("No tracks available.").count == 0


# --- forms and edge cases ---------------------------------------------------------------

def test_image_form():
    a = parse_answer('<points coords="1 1 020 100 2 020 900 3 300 010">cup</points>')
    assert xyt(a.points) == [(1, 1, 20, 100), (1, 2, 20, 900), (1, 3, 300, 10)]


def test_html_v1_tab_and_other_official_separators():
    for sep in ["\t", ";", ":", ","]:
        a = parse_answer(f'<points coords="0.0 1 001 002{sep}0.5 2 003 004">p</points>')
        assert xyt(a.points) == [(0.0, 1, 1, 2), (0.5, 2, 3, 4)], sep


def test_several_tags_and_text_around_them():
    a = parse_answer('Sure! <points coords="1 1 100 100">cup</points> and also '
                     '<points alt="plates" coords="1 1 500 500 2 600 600">plate</points> ok')
    assert [(p.label, p.object_id) for p in a.points] == [("cup", 1), ("plate", 1), ("plate", 2)]
    assert a.count is None  # digits inside tags are not counts


def test_unclosed_tag_does_not_swallow_the_next_one():
    a = parse_answer('<points coords="1 1 100 100">cup <points coords="1 1 500 500">plate</points> total of 2')
    assert [(p.label, p.x) for p in a.points] == [("cup", 100), ("plate", 500)]
    assert a.count == 2 and any("not closed" in w for w in a.warnings)


def test_self_closing_tag():
    a = parse_answer('<points coords="1 1 100 200"/> done')
    assert xyt(a.points) == [(1, 1, 100, 200)] and a.points[0].label == ""


def test_missing_zero_padding():
    a = parse_answer('<points coords="0.5 1 78 5 2 1000 0">x</points>')
    assert xyt(a.points) == [(0.5, 1, 78, 5), (0.5, 2, 1000, 0)] and a.warnings == []


def test_out_of_range_coordinates_are_clipped_and_flagged():
    a = parse_answer('<points coords="0.0 1 1200 -5 2 500 500">x</points>')
    assert xyt(a.points) == [(0.0, 1, 1000, 0), (0.0, 2, 500, 500)]
    assert any("clipped" in w for w in a.warnings)


def test_duplicated_indices_are_kept_and_flagged():
    a = parse_answer('<points coords="0.0 1 100 100 1 200 200">x</points>')
    assert xyt(a.points) == [(0.0, 1, 100, 100), (0.0, 1, 200, 200)]
    assert any("repeated" in w for w in a.warnings)
    t = parse_answer('<tracks coords="0.0 1 100 100 1 200 200;0.5 1 300 300">x</tracks>')
    assert len(t.tracks[1]) == 3 and any("repeated in one frame" in w for w in t.warnings)
    # the same id in different frames is what a track is: no warning
    assert parse_answer('<tracks coords="0.0 1 100 100;0.5 1 300 300">x</tracks>').warnings == []


def test_tracks_of_several_tags_with_clashing_ids_are_renumbered():
    a = parse_answer('<tracks coords="0.0 1 100 100">cup</tracks><tracks coords="0.0 1 900 900 2 5 5">plate</tracks>')
    assert {k: [(p.label, p.x) for p in v] for k, v in a.tracks.items()} == {
        1: [("cup", 100)], 2: [("plate", 5)], 3: [("plate", 900)]}  # the clashing 1 -> 3
    assert any("renumbered" in w for w in a.warnings)


def test_truncated_output_keeps_complete_points():
    a = parse_answer('Counting the <points coords="0.0 1 100 200 2 300 40')
    assert xyt(a.points) == [(0.0, 1, 100, 200)]  # "40" may have been "400": dropped
    assert a.truncated and a.count is None
    b = parse_answer('<points coords="0.0 1 100 200 2 300 400;0.5 ')
    assert xyt(b.points) == [(0.0, 1, 100, 200), (0.0, 2, 300, 400)] and b.truncated
    c = parse_answer('<points coords="0.0 1 100 200">cu')
    assert c.points[0].label == "cu" and c.truncated


def test_malformed_pieces_are_skipped_with_warnings():
    a = parse_answer('<points coords="x 1 1 1;0.5 1 abc 3 2 5 5;1.0 3 7 7 8">y</points>')
    assert xyt(a.points) == [(0.5, 2, 5, 5), (1.0, 3, 7, 7)]
    assert len(a.warnings) == 3
    assert parse_answer('<points>no coords</points>').warnings
    assert parse_answer('<points coords="">x</points>').warnings


@pytest.mark.parametrize("garbage", [
    None, 42, b"<points>", "", "<", "<points", "<points coords", '<points coords="', '<tracks coords="1',
    '<points coords="nan 1 inf inf">', '<points coords="1e5 1 1e5 1e5">x</points>',
    '</points>' * 3, '<points coords="0.0 1 1 1"<points coords="0.5 2 2 2">x</points>',
    "\x00\uffff" * 50, "total of " + "9" * 400, '<points coords="' + "1 " * 10000,
])
def test_parsing_never_raises(garbage):
    a = parse_answer(garbage)
    assert isinstance(a, ParsedAnswer)
    assert all(0 <= p.x <= 1000 and 0 <= p.y <= 1000 for p in a.points)


def test_fuzzed_fragments_never_raise():
    rng = random.Random(3)
    pieces = ['<points', '<tracks', ' coords="', '"', '>', '</points>', '</tracks>', '/>', ';', '\t',
              ' ', '0.5', '1', '078', '1000', '-3', 'cup', 'There are none.', 'total of 3', '<|im_end|>']
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 25)))
        a = parse_answer(text)
        assert isinstance(a.points, list) and isinstance(a.warnings, list)


# --- round trips of answers rendered by the formatter ------------------------------------

def _random_points(rng, video):
    times = sorted(rng.sample(range(0, 400), rng.randint(1, 6)))
    span = rng.choice([1000, 20])  # a small span makes ties in x (sorted by y then)
    points = []
    for k in times:
        t = k * 0.5 if video else k + 1
        for _ in range(rng.randint(1, 5)):
            points.append(ModelPoint(t, rng.randint(1, 99), rng.uniform(0, span), rng.uniform(0, span)))
    rng.shuffle(points)
    return points


def _expected_points(points):
    """Points as the model states them: rounded, sorted by time then x, y, numbered 1..N."""
    rounded = sorted((round(p.t, 1), round(p.x), round(p.y)) for p in points)
    return [(t, i, x, y) for i, (t, x, y) in enumerate(rounded, 1)]


@pytest.mark.parametrize("video", [True, False])
def test_round_trip_points(video):
    rng = random.Random(1234 if video else 4321)
    for _ in range(300):
        points = _random_points(rng, video)
        sep = rng.choice([";", "\t"])
        label = rng.choice(["cup", "red block", "robot gripper"])
        for text in (format_point_answer(points, label, video=video, separator=sep),
                     format_count_answer(points, label, video=video, separator=sep)):
            a = parse_answer(text)
            assert xyt(a.points) == _expected_points(points), text
            assert {p.label for p in a.points} == {label}
            assert a.warnings == [] and not a.truncated
        assert a.count == len(points)


def test_round_trip_tracks():
    rng = random.Random(99)
    for _ in range(300):
        n_objects, n_frames = rng.randint(1, 5), rng.randint(1, 12)
        source_ids = rng.sample(range(1, 50), n_objects)
        points = [ModelPoint(k * 0.5, obj, rng.randint(0, 1000), rng.randint(0, 1000))
                  for k in range(n_frames) for obj in source_ids if rng.random() < 0.7]
        text = format_track_answer(points, "cup", separator=rng.choice([";", "\t"]))
        a = parse_answer(text)
        if not points:
            assert a.count == 0 and a.tracks == {}
            continue
        assert a.warnings == []
        # each source object became exactly one parsed track with the same (t, x, y) path
        source_paths = sorted(sorted((p.t, p.x, p.y) for p in points if p.object_id == obj)
                              for obj in source_ids if any(p.object_id == obj for p in points))
        parsed_paths = sorted(sorted((p.t, p.x, p.y) for p in track) for track in a.tracks.values())
        assert parsed_paths == source_paths
        # ids are 1..K in order of first appearance (time, then x, y)
        firsts = sorted((track[0].t, track[0].x, track[0].y, object_id) for object_id, track in a.tracks.items())
        assert [object_id for *_, object_id in firsts] == list(range(1, len(a.tracks) + 1))


def test_round_trip_of_truncated_answers_keeps_only_correct_points():
    rng = random.Random(7)
    for _ in range(300):
        points = _random_points(rng, video=True)
        text = format_count_answer(points, "cup", video=True)
        full = xyt(parse_answer(text).points)
        cut = rng.randint(0, len(text) - 1)
        a = parse_answer(text[:cut])
        kept = xyt(a.points)
        assert kept == full[:len(kept)], (text[:cut], kept)
        if cut < len(text) - len("</points> shows a total of 9."):
            assert a.count is None


def test_tracks_frame_going_back_in_time_is_skipped():
    # tracks list frames in time order; an earlier time after a later one is malformed, and
    # keeping it would reorder a track's points after they were stated (and streamed)
    a = parse_answer('<tracks coords="0.5 1 100 100;0.0 1 120 120 2 300 300;1.0 1 130 130">cup</tracks>')
    assert {k: xyt(v) for k, v in a.tracks.items()} == {1: [(0.5, 1, 100, 100), (1.0, 1, 130, 130)]}
    assert any("out of time order" in w for w in a.warnings)
    # <points> keep every frame, in answer order
    b = parse_answer('<points coords="0.5 1 100 100;0.0 2 120 120">cup</points>')
    assert xyt(b.points) == [(0.5, 1, 100, 100), (0.0, 2, 120, 120)]
