import pytest

from molmo2_ros.core.answer_format import (
    NONE_ANSWER, ModelPoint, format_count_answer, format_point_answer, format_track_answer)


def test_count_answer_reproduces_the_official_example():
    points = [ModelPoint(56.0, 9, 486, 697), ModelPoint(13.5, 7, 451, 702), ModelPoint(13.5, 8, 120, 305)]
    assert format_count_answer(points, "robot gripper", video=True) == (
        'Counting the <points coords="13.5 1 120 305 2 451 702;56.0 3 486 697">robot gripper'
        '</points> shows a total of 3.')


def test_track_answer_reproduces_the_reference_examples():
    points = [ModelPoint(0.0, 1, 78, 278), ModelPoint(0.0, 2, 500, 500),
              ModelPoint(0.5, 2, 508, 503), ModelPoint(1.0, 1, 94, 292)]
    assert format_track_answer(points, "cup") == \
        '<tracks coords="0.0 1 078 278 2 500 500;0.5 2 508 503;1.0 1 094 292">cup</tracks>'
    paper = [ModelPoint(0.0, 1, 635, 522), ModelPoint(0.5, 1, 606, 490), ModelPoint(0.5, 2, 511, 124),
             ModelPoint(1.0, 2, 515, 164), ModelPoint(1.5, 2, 520, 168)]
    assert format_track_answer(paper, "x") == \
        '<tracks coords="0.0 1 635 522;0.5 1 606 490 2 511 124;1.0 2 515 164;1.5 2 520 168">x</tracks>'


def test_track_ids_are_renumbered_by_first_appearance_and_listed_by_id():
    # object 7 appears first (t=0); at t=1 object 3 first appears left of object 7
    points = [ModelPoint(1.0, 3, 100, 100), ModelPoint(1.0, 7, 900, 900), ModelPoint(0.0, 7, 800, 800)]
    assert format_track_answer(points, "a") == \
        '<tracks coords="0.0 1 800 800;1.0 1 900 900 2 100 100">a</tracks>'


def test_image_points_use_the_image_index_and_sort_by_x_then_y():
    points = [ModelPoint(1, 5, 300, 10), ModelPoint(1, 5, 20, 900), ModelPoint(1, 5, 20, 100)]
    assert format_point_answer(points, "cup", video=False) == \
        '<points coords="1 1 020 100 2 020 900 3 300 010">cup</points>'


def test_rounding_clipping_and_padding():
    points = [ModelPoint(0.04, 1, 7.6, 1002.0), ModelPoint(0.04, 1, -3, 49.5)]
    # round(49.5) is 50 (banker's rounding, as Python's round in the official renderer)
    assert format_point_answer(points, "p", video=True) == \
        '<points coords="0.0 1 000 050 2 008 1000">p</points>'


def test_html_v1_tab_separator():
    points = [ModelPoint(0.0, 1, 1, 2), ModelPoint(0.5, 1, 3, 4)]
    assert format_point_answer(points, "p", video=True, separator="\t") == \
        '<points coords="0.0 1 001 002\t0.5 2 003 004">p</points>'


def test_zero_points_is_there_are_none():
    assert format_point_answer([], "p", video=True) == NONE_ANSWER == "There are none."
    assert format_count_answer([], "p", video=False) == NONE_ANSWER
    assert format_track_answer([], "p") == NONE_ANSWER


@pytest.mark.parametrize("call, match", [
    (lambda: format_point_answer([ModelPoint(0, 1, 1, 1)], "a<b", video=True), "label"),
    (lambda: format_point_answer([ModelPoint(0, 1, 1, 1)], "a", video=False), "image index"),
    (lambda: format_point_answer([ModelPoint(1.5, 1, 1, 1)], "a", video=False), "image index"),
    (lambda: format_point_answer([ModelPoint(0, 1, float("nan"), 1)], "a", video=True), "finite"),
    (lambda: format_point_answer([ModelPoint(0, 1, 1, 1)], "a", video=True, separator=","), "separator"),
    (lambda: format_track_answer([ModelPoint(0, 1, 1, 1), ModelPoint(0, 1, 2, 2)], "a"), "twice"),
])
def test_bad_input_is_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
