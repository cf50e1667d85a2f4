"""Parameter changes on a running molmo2_grounding (`ros2 param set`).

A change is validated exactly as configure validates it (settings.validate): a bad value
is refused with that message and the old value stays. A parameter the node reads only at
start, at configure or at activate is refused once that moment has passed, with the
commands that apply it; every other parameter applies at once (GroundingNode._apply).
"""
from __future__ import annotations

from molmo2_ros.ros.settings import PARAMETERS, validate

AT_START = {"autostart", "queue_size"}  # queue_size sizes the executor's thread pool
AT_CONFIGURE = {"model", "backend", "engine_dir", "force_engine_update", "device", "dtype", "warmup",
                "camera_info_topic"} | {name for name in PARAMETERS if name.startswith(("depth_", "server_"))}
AT_ACTIVATE = {"image_topic", "compressed", "image_reliability", "image_depth"}
LIVE = set(PARAMETERS) - AT_START - AT_CONFIGURE - AT_ACTIVATE
WINDOW = {"fps", "window_seconds", "max_frames", "max_side", "jump_back_s", "jump_ahead_s"}  # rebuild the window
TRACKING = {name for name in PARAMETERS if name.startswith("tracking_")}  # rebuild the propagator
DEFAULTS = {name: default for name, (default, _) in PARAMETERS.items()}


def refusal(changes: dict, node: str, state: str) -> str | None:
    """Why the `changes` (parameter name -> new value) cannot be applied to the node named
    `node` in lifecycle `state` ("unconfigured", "inactive" or "active"); None if they can."""
    for name in changes:
        if name in AT_START:
            return f"{name} is read when the node starts: restart it with -p {name}:=<value>"
        if name in AT_CONFIGURE and state != "unconfigured":
            return (f"{name} applies at configure: ros2 lifecycle set {node} cleanup, set {name}, "
                    f"then ros2 lifecycle set {node} configure (and activate)")
        if name in AT_ACTIVATE and state == "active":
            return (f"{name} applies at activate: ros2 lifecycle set {node} deactivate, set {name}, "
                    f"then ros2 lifecycle set {node} activate")
    try:  # the defaults are valid, so every error names one of the changes
        validate({**DEFAULTS, **changes})
    except ValueError as exc:
        return str(exc)
    return None
