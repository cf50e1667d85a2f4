"""Every node parameter is documented and shipped as it is declared (settings.PARAMETERS,
one declaration each): its README row shows its type, default, allowed values and when a
change applies; the shipped params file has its default; the node refuses a live change
exactly when the declaration says it applies later. Nothing documented or shipped is
unknown to the node."""
import re
from pathlib import Path

import pytest
import yaml

from molmo2_ros.ros import live_params
from molmo2_ros.ros.settings import DEFAULTS, PARAMETERS, Applies

ROOT = Path(__file__).resolve().parents[2]
TYPES = {bool: "bool", int: "int", float: "double", str: "string", tuple: "string[]"}
ROW = re.compile(r"^\| `(\w+)` \| ([\w\[\]]+) \| `([^`]*)` \| (`[^`]*`|any) \| (\w+) \| .+ \|$", re.M)
NODE = "/molmo2_grounding"


def readme_rows() -> dict[str, tuple[str, str, str, str]]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("### Parameters"):]
    table = table[:table.index("\n\n", table.index("| name |"))]
    return {m.group(1): m.group(2, 3, 4, 5) for m in ROW.finditer(table)}


def params_file() -> dict:
    return yaml.safe_load((ROOT / "config" / "molmo2_grounding.yaml").read_text())["/**"]["ros__parameters"]


def test_nothing_documented_or_shipped_is_unknown():
    assert set(readme_rows()) == set(PARAMETERS)
    assert set(params_file()) == set(PARAMETERS)


@pytest.mark.parametrize("name", list(PARAMETERS))
def test_declaration_readme_yaml_and_live_phase_agree(name):
    param = PARAMETERS[name]
    kind, default, allowed, applies = readme_rows()[name]
    assert kind == TYPES[param.kind]
    shown = {bool: lambda v: str(v).lower(), tuple: lambda v: str(list(v))}.get(param.kind, str)(param.default)
    assert default.strip('"') == shown
    assert allowed == (f"`{param.constraint()}`" if param.constraint() else "any")
    assert applies == param.applies.value
    shipped = params_file()[name]
    as_shipped = list(param.default) if param.kind is tuple else param.default
    assert shipped == as_shipped and (type(shipped) is type(as_shipped) or param.kind is float)
    assert param.problem(name, param.default) is None
    # The live phase: refused after the moment it applies, with how to apply it; else taken.
    changed = {name: not param.default} if param.kind is bool else {name: param.default}
    for state, refused in (("unconfigured", param.applies is Applies.START),
                           ("inactive", param.applies in (Applies.START, Applies.CONFIGURE)),
                           ("active", param.applies is not Applies.LIVE)):
        reason = live_params.refusal(changed, DEFAULTS, NODE, state)
        assert (reason is not None) == refused, (state, reason)
        if refused:
            assert name in reason and ("restart" in reason or "ros2 lifecycle set" in reason)
