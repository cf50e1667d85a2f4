"""Every node parameter is in the README's table and in the shipped params file, with the
same default; nothing documented or shipped is unknown to the node."""
import re
from pathlib import Path

import yaml

from molmo2_ros.ros.settings import PARAMETERS

ROOT = Path(__file__).resolve().parents[2]


def readme_table() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("### Parameters"):]
    table = table[:table.index("\n\n", table.index("| name |"))]
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| \w+ \| `([^`]*)` \|", table, re.M)}


def test_readme_table_matches_the_node():
    documented = readme_table()
    assert set(documented) == set(PARAMETERS)
    for name, (default, _) in PARAMETERS.items():
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        assert documented[name].strip('"') == shown, (name, documented[name], default)


def test_params_file_matches_the_node():
    params = yaml.safe_load((ROOT / "config" / "molmo2_grounding.yaml").read_text())["/**"]["ros__parameters"]
    assert set(params) == set(PARAMETERS)
    for name, (default, _) in PARAMETERS.items():
        assert params[name] == default and type(params[name]) is type(default) or (
            isinstance(default, float) and isinstance(params[name], (int, float)) and params[name] == default), name
