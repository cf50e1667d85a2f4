"""Parameter changes on a running molmo2_grounding (`ros2 param set`).

A change is validated as configure validates it (settings.validate), together with the
node's current values, so a condition between two parameters is checked against the
partner's value as it is now: a bad value is refused with that message and the old value
stays. A parameter the node reads only at start, at configure or at activate (its
declaration's `applies`) is refused once that moment has passed, with the commands that
apply it; every other parameter applies at once (GroundingNode._apply).
"""
from __future__ import annotations

from molmo2_ros.ros.settings import PARAMETERS, Applies, Rebuilds, declaration, problems


def named(applies: Applies) -> set[str]:
    return {name for name, p in PARAMETERS.items() if p.applies is applies}


def rebuilt(names: set[str]) -> set[Rebuilds]:
    """What a live change of `names` rebuilds."""
    return {rebuilt for name in names for rebuilt in declaration(name).rebuilds}


def refusal(changes: dict, current: dict, node: str, state: str) -> str | None:
    """Why the `changes` (parameter name -> new value) cannot be applied to the node named
    `node` in lifecycle `state` ("unconfigured", "inactive" or "active"), whose parameters
    are `current` now; None if they can."""
    for name in changes:
        applies = declaration(name).applies
        if applies is Applies.START:
            return f"{name} is read when the node starts: restart it with -p {name}:=<value>"
        if applies is Applies.CONFIGURE and state != "unconfigured":
            return (f"{name} applies at configure: ros2 lifecycle set {node} cleanup, set {name}, "
                    f"then ros2 lifecycle set {node} configure (and activate)")
        if applies is Applies.ACTIVATE and state == "active":
            return (f"{name} applies at activate: ros2 lifecycle set {node} deactivate, set {name}, "
                    f"then ros2 lifecycle set {node} activate")
    found = problems({**current, **changes}, set(changes))
    return "; ".join(found) if found else None
