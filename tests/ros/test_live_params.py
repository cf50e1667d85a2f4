"""Which parameter changes a running node takes (live_params.refusal): every parameter is
in exactly one class, each refusal says how to apply the value, and a bad value is refused
with configure's own message. (Through `ros2 param set` on a real node: tests/launch.)"""
import pytest

from molmo2_ros.ros import live_params
from molmo2_ros.ros.settings import PARAMETERS, validate

NODE = "/robot1/molmo2_grounding"


def test_every_parameter_has_one_class():
    classes = (live_params.AT_START, live_params.AT_CONFIGURE, live_params.AT_ACTIVATE, live_params.LIVE)
    assert set().union(*classes) == set(PARAMETERS)
    assert sum(len(c) for c in classes) == len(PARAMETERS)
    assert live_params.WINDOW | live_params.TRACKING <= live_params.LIVE


@pytest.mark.parametrize("state", ["unconfigured", "inactive", "active"])
def test_refusals_say_how_to_apply(state):
    assert "restart it with -p queue_size:=" in live_params.refusal({"queue_size": 4}, NODE, state)
    model = live_params.refusal({"model": "/m"}, NODE, state)
    image = live_params.refusal({"image_topic": "/c"}, NODE, state)
    assert model == (None if state == "unconfigured" else
                     f"model applies at configure: ros2 lifecycle set {NODE} cleanup, set model, "
                     f"then ros2 lifecycle set {NODE} configure (and activate)")
    assert image == (None if state != "active" else
                     f"image_topic applies at activate: ros2 lifecycle set {NODE} deactivate, set "
                     f"image_topic, then ros2 lifecycle set {NODE} activate")
    assert live_params.refusal({"max_frames": 4, "query": "red circle"}, NODE, state) is None


def test_bad_values_are_refused_with_the_configure_message():
    assert live_params.refusal({"fps": -0.5}, NODE, "active") == "fps must be > 0, or 0 for the model's window, got -0.5"
    assert live_params.refusal({"fps": 0.0}, NODE, "active") is None   # 0: the model's window
    assert live_params.refusal({"query_task": "dance"}, NODE, "active").startswith("query_task: unknown task")
    assert live_params.refusal({"max_frames": "4"}, NODE, "active") == "max_frames must be a int, got '4'"
    with pytest.raises(ValueError) as error:  # at configure (values from the start): all named at once
        validate(live_params.DEFAULTS | {"fps": -1.0, "image_reliability": "sometimes"})
    assert str(error.value) == ("image_reliability must be best_effort or reliable, got 'sometimes'; "
                                "fps must be > 0, or 0 for the model's window, got -1.0")
