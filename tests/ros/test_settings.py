"""Parameter validation at configure and the check of a goal's window: non-finite and
absurd numbers are refused with a message naming each bad value."""
import math

import pytest

from molmo2_ros.ros.settings import PARAMETERS, check_goal_window, validate

DEFAULTS = {name: default for name, (default, _) in PARAMETERS.items()}
FLOATS = [name for name, default in DEFAULTS.items() if isinstance(default, float)]


def test_defaults_are_valid():
    settings = validate(DEFAULTS)
    assert settings.max_image_pixels == 7680 * 4320 and settings.jump_ahead_s == 10.0


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_every_float_parameter_must_be_finite(bad):
    with pytest.raises(ValueError) as refused:
        validate(DEFAULTS | {name: bad for name in FLOATS})
    for name in FLOATS:
        assert f"{name} must be a finite number, got {bad}" in str(refused.value)


@pytest.mark.parametrize("name,value,message", [
    ("query_period", 1e30, "query_period must be in (0, 3600] s"),
    ("diagnostics_period", 0.0, "diagnostics_period must be in (0, 3600] s"),
    ("image_depth", 10**12, "image_depth must be 1..1000"),
    ("jump_ahead_s", 0.0, "jump_ahead_s must be > 0"),
    ("max_image_pixels", 0, "max_image_pixels must be >= 1"),
])
def test_absurd_values_are_refused(name, value, message):
    with pytest.raises(ValueError) as refused:
        validate(DEFAULTS | {name: value})
    assert message in str(refused.value)


def test_goal_window_must_fit_the_node_window():
    settings = validate(DEFAULTS | {"window_seconds": 8.0, "max_frames": 16})
    check_goal_window(0.0, 0, settings)         # the node's window
    check_goal_window(8.0, 16, settings)
    check_goal_window(2.5, 4, settings)
    for seconds in (math.inf, math.nan, -1.0, 1e30, 9.0):
        with pytest.raises(ValueError) as refused:
            check_goal_window(seconds, 0, settings)
        assert str(refused.value).endswith(f"up to the node's window_seconds 8, got {seconds}")
    with pytest.raises(ValueError, match="max_frames must be 0 .* up to the node's max_frames 16, got 4294967295"):
        check_goal_window(0.0, 2**32 - 1, settings)
