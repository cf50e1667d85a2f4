"""Parameter validation at configure and the check of a goal's window: every value a
parameter's declaration allows can be used (the window, tracking and depth buffers it
feeds are built from the extremes), and hostile values are refused with a message naming
each one."""
import math

import pytest

from molmo2_ros.core.depth import DepthBuffer
from molmo2_ros.ros.ingest import make_propagator, make_window
from molmo2_ros.ros.settings import (DEFAULTS, PARAMETERS, camera_defaults, camera_key, camera_settings,
                                     check_goal_window, problems, resolve_window, validate)

FLOATS = [name for name, default in DEFAULTS.items() if isinstance(default, float)]
NUMBERS = [name for name, p in PARAMETERS.items() if p.lo is not None]
HOSTILE = [1e300, -1e300, 1e-300, math.nan, math.inf, -math.inf, 0, -1, 2**63, "x" * 10_000, [1, 2], None]


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
    ("query_period", 1e30, "query_period must be 0.01..3600 s, got 1e+30"),
    ("diagnostics_period", 0.0, "diagnostics_period must be 0.01..3600 s, got 0.0"),
    ("image_depth", 10**12, "image_depth must be 1..1000, got 1000000000000"),
    ("jump_ahead_s", 0.0, "jump_ahead_s must be 0.001..86400 s, got 0.0"),
    ("max_image_pixels", 0, "max_image_pixels must be 1..2147483647, got 0"),
    ("depth_patch", 4, "depth_patch must be 1..101, odd, got 4"),
    ("tracking_max_side", 10, "tracking_max_side must be 42..16384, or 0 for full size, got 10"),
    ("image_topic", " ", "image_topic must be not empty, got ' '"),
])
def test_absurd_values_are_refused(name, value, message):
    with pytest.raises(ValueError) as refused:
        validate(DEFAULTS | {name: value})
    assert str(refused.value) == message


@pytest.mark.parametrize("name", list(PARAMETERS))
def test_every_hostile_value_is_refused_naming_the_parameter_or_usable(name):
    """Each hostile value is either refused with a message that names the parameter, or
    allowed (0 where 0 means something, 1e-300 nowhere): then what it feeds is built."""
    for value in HOSTILE:
        found = problems(DEFAULTS | {name: value})
        if found:
            assert len(found) == 1 and found[0].startswith(f"{name} must be "), found
        else:
            build(validate(DEFAULTS | {name: value}))


@pytest.mark.parametrize("name", NUMBERS)
def test_the_extremes_a_declaration_allows_are_usable(name):
    """The bounds are what the window, tracking and depth buffers can hold (integer
    nanoseconds, buffer sizes): each extreme value builds them."""
    param = PARAMETERS[name]
    for value in (param.lo, param.hi):
        value = param.kind(value)
        if name == "depth_min":
            value = min(value, 999.0)
        if problems(DEFAULTS | {name: value}):   # an odd rule or the cross check
            continue
        build(validate(DEFAULTS | {name: value}))


def build(settings) -> None:
    """What configure and live changes make from settings (timers take periods in int64 ns)."""
    settings, _ = resolve_window(settings, None)
    make_window(settings)
    make_propagator(settings)
    DepthBuffer(tolerance_s=settings.depth_tolerance, max_bytes=round(settings.depth_buffer_mb * 2**20),
                recent_s=max(0.25, 4 * settings.depth_tolerance), max_wanted=settings.max_frames + 8)
    for period in (settings.query_period, settings.diagnostics_period):
        assert 0 < round(period * 1e9) < 2**63


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


def cameras(*names, **own):
    """Raw values with `cameras` = names and each camera's own parameters as declared at
    start (camera_defaults), then `own` (cameras.<name>.<field> written name__field)."""
    values = DEFAULTS | {"cameras": list(names)}
    values |= camera_defaults(names, values)
    return values | {camera_key(*key.split("__")): value for key, value in own.items()}


def test_cameras_each_get_the_nodes_settings_with_their_own_topics_and_qos():
    values = cameras("front", "wrist", front__image_topic="/front/image_raw", wrist__image_topic="/wrist/image",
                     wrist__compressed=True, wrist__image_reliability="reliable", front__depth_topic="/front/depth")
    assert values[camera_key("wrist", "image_depth")] == DEFAULTS["image_depth"]   # the node's value unless set
    settings = validate(values)
    assert settings.cameras == ("front", "wrist")
    each = camera_settings(settings, values)
    assert list(each) == ["front", "wrist"]
    assert (each["front"].image_topic, each["front"].compressed, each["front"].depth_topic) == \
        ("/front/image_raw", False, "/front/depth")
    assert (each["wrist"].image_topic, each["wrist"].compressed, each["wrist"].image_reliability,
            each["wrist"].depth_topic) == ("/wrist/image", True, "reliable", "")
    assert each["wrist"].max_frames == settings.max_frames
    assert camera_settings(validate(DEFAULTS), DEFAULTS) == {"": validate(DEFAULTS)}   # today's node


def test_bad_camera_sets_are_refused_listing_every_problem():
    values = cameras("front", "front", "9lives", "wrist", "rear", "top",
                     front__image_topic="/cam/image_raw", wrist__image_topic="/cam/image_raw",
                     rear__image_topic="/rear/image", rear__image_depth=0)
    with pytest.raises(ValueError) as refused:
        validate(values)
    found = str(refused.value).split("; ")
    assert found == [
        "camera name '9lives' is not a valid ROS name (letters, digits and _, starting with a letter)",
        "camera 'front' is listed 2 times in cameras",
        "cameras 'front' and 'wrist' both subscribe to /cam/image_raw",
        "cameras.rear.image_depth must be 1..1000, got 0",
        "camera 'top' has no image topic: set cameras.top.image_topic",
    ], found


def test_a_camera_without_an_image_topic_and_a_typed_list():
    with pytest.raises(ValueError, match="camera 'wrist' has no image topic: set cameras.wrist.image_topic"):
        validate(cameras("wrist"))
    with pytest.raises(ValueError, match=r"cameras must be a list of names, e.g. \[front, wrist\], got 'front'"):
        validate(DEFAULTS | {"cameras": "front"})


def test_a_live_change_of_one_cameras_topic_is_checked_against_the_others():
    values = cameras("front", "wrist", front__image_topic="/front/image", wrist__image_topic="/wrist/image")
    assert validate(values)
    change = {camera_key("wrist", "image_topic"): "/front/image"}
    assert problems(values | change, set(change)) == ["cameras 'front' and 'wrist' both subscribe to /front/image"]
    change = {camera_key("wrist", "image_reliability"): "sometimes"}
    assert problems(values | change, set(change)) == \
        ["cameras.wrist.image_reliability must be best_effort or reliable, got 'sometimes'"]
