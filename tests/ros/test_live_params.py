"""Which parameter changes a running node takes (live_params.refusal): each refusal says
how to apply the value, a bad value is refused with configure's own message, and a change
is checked against the node's current values, not the defaults. (Through `ros2 param set`
on a real node: tests/launch.)"""
import pytest

from molmo2_ros.ros import live_params
from molmo2_ros.ros.settings import DEFAULTS, Applies, Rebuilds, validate

NODE = "/robot1/molmo2_grounding"


def test_window_and_tracking_changes_apply_live():
    for name in ("fps", "window_seconds", "max_frames", "max_side"):
        assert live_params.rebuilt({name}) == {Rebuilds.WINDOW}
    for name in ("jump_back_s", "jump_ahead_s"):   # the depth buffer's stamp checks follow them
        assert live_params.rebuilt({name}) == {Rebuilds.WINDOW, Rebuilds.DEPTH_BOUNDS}
    assert live_params.rebuilt({"tracking_max_age", "query"}) == {Rebuilds.TRACKING, Rebuilds.QUERY}
    assert all(name.startswith("tracking_") for name in live_params.named(Applies.LIVE)
               if live_params.rebuilt({name}) == {Rebuilds.TRACKING})


@pytest.mark.parametrize("state", ["unconfigured", "inactive", "active"])
def test_refusals_say_how_to_apply(state):
    assert "restart it with -p queue_size:=" in live_params.refusal({"queue_size": 4}, DEFAULTS, NODE, state)
    model = live_params.refusal({"model": "/m"}, DEFAULTS, NODE, state)
    image = live_params.refusal({"image_topic": "/c"}, DEFAULTS, NODE, state)
    assert model == (None if state == "unconfigured" else
                     f"model applies at configure: ros2 lifecycle set {NODE} cleanup, set model, "
                     f"then ros2 lifecycle set {NODE} configure (and activate)")
    assert image == (None if state != "active" else
                     f"image_topic applies at activate: ros2 lifecycle set {NODE} deactivate, set "
                     f"image_topic, then ros2 lifecycle set {NODE} activate")
    assert live_params.refusal({"max_frames": 4, "query": "red circle"}, DEFAULTS, NODE, state) is None


def test_bad_values_are_refused_with_the_configure_message():
    refuse = lambda changes: live_params.refusal(changes, DEFAULTS, NODE, "active")  # noqa: E731
    assert refuse({"fps": -0.5}) == "fps must be 0.01..120, or 0 for the model's window, got -0.5"
    assert refuse({"fps": 0.0}) is None   # 0: the model's window
    assert refuse({"query_task": "dance"}) == "query_task must be point, count, track or ask, got 'dance'"
    assert refuse({"max_frames": "4"}) == "max_frames must be an integer, got '4'"
    with pytest.raises(ValueError) as error:  # at configure (values from the start): all named at once
        validate(DEFAULTS | {"fps": -1.0, "image_reliability": "sometimes"})
    assert str(error.value) == ("image_reliability must be best_effort or reliable, got 'sometimes'; "
                                "fps must be 0.01..120, or 0 for the model's window, got -1.0")


def test_a_change_is_checked_against_the_current_values():
    """Unconfigured, depth_max set to 30 and then depth_min to 25: valid against the
    current depth_max (the defaults' 20 would refuse it), and the reverse is refused."""
    current = DEFAULTS | {"depth_max": 30.0}
    assert live_params.refusal({"depth_min": 25.0}, current, NODE, "unconfigured") is None
    assert live_params.refusal({"depth_min": 35.0}, current, NODE, "unconfigured") == (
        "need depth_min < depth_max, got depth_min 35.0 and depth_max 30.0")


def test_another_parameters_bad_value_does_not_block_a_change():
    """A node whose configure failed on one value still takes the fix of another."""
    current = DEFAULTS | {"depth_patch": 4}
    assert live_params.refusal({"max_frames": 8}, current, NODE, "unconfigured") is None
    assert live_params.refusal({"depth_patch": 5}, current, NODE, "unconfigured") is None
