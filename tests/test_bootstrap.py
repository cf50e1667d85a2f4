"""scripts/bootstrap.sh refuses a machine without its prerequisites with a clear message."""
import shutil
import subprocess
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
