"""scripts/bootstrap.sh refuses a machine without its prerequisites with a clear message."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOOTSTRAP = ROOT / "scripts" / "bootstrap.sh"


def run_with_tools(tmp_path, tools, **env):
    """Run the bootstrap with PATH holding only the given tools (a venv elsewhere)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("dirname",) + tuple(tools):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    full_env = {"PATH": str(bin_dir), "VENV": str(tmp_path / "venv"), **env}
    return subprocess.run(["/bin/bash", str(BOOTSTRAP)], env=full_env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("tools, missing", [
    ((), "cmake not found"),
    (("cmake",), "cc not found"),
    (("cmake", "cc"), "c++ not found"),
])
def test_missing_build_tool_is_named(tmp_path, tools, missing):
    result = run_with_tools(tmp_path, tools)
    assert result.returncode != 0
    assert missing in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "venv").exists()


def test_missing_python_is_named(tmp_path):
    result = run_with_tools(tmp_path, ("cmake", "cc", "c++"))
    assert result.returncode != 0
    assert "no Python found" in result.stderr and "3.11" in result.stderr


def test_wrong_python_version_is_refused(tmp_path):
    candidates = [*sorted(Path("/root/.pyenv/versions").glob("3.1[023]*/bin/python3")),
                  *(Path(p) for p in (shutil.which(f"python3.{m}") for m in (12, 13, 10)) if p)]
    other = next(iter(candidates), None)
    if other is None:
        pytest.skip("no Python other than 3.11 on this machine to offer the bootstrap")
    result = run_with_tools(tmp_path, ("cmake", "cc", "c++"), PYTHON=str(other))
    assert result.returncode != 0
    assert "need CPython 3.11" in result.stderr
    assert "Traceback" not in result.stderr


def test_editable_install_exposes_only_the_molmo2_ros_namespace(tmp_path):
    """From a folder outside the checkout, the bootstrap's venv imports molmo2_ros with its
    engines and training (from the checkout: edits apply) but no top-level `engines` or
    `training`: the editable install puts only molmo2_ros on sys.path, as colcon's does."""
    code = ("import pathlib, molmo2_ros.engines, molmo2_ros.training, molmo2_ros.msg\n"
            "for name in ('engines', 'training'):\n"
            "    try:\n"
            "        __import__(name)\n"
            "    except ModuleNotFoundError:\n"
            "        print(name, 'not found')\n"
            "for module in (molmo2_ros.engines, molmo2_ros.training):\n"
            "    print(pathlib.Path(module.__file__).resolve())\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["engines not found", "training not found",
                                          str(ROOT / "engines" / "__init__.py"),
                                          str(ROOT / "training" / "__init__.py")]
