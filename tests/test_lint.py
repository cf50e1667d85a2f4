"""The linter passes on the whole repository (ruff, configured in ruff.toml: pycodestyle
and pyflakes, lines up to 120 characters): the suite, and so CI, fails on a violation."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run([str(ruff), "check", "--no-cache", "--output-format", "concise", str(ROOT)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_fails_on_a_violation(tmp_path):
    """The gate can fail: a file with an unused import and a long line is reported."""
    (tmp_path / "bad.py").write_text("import os\n" + "x = '" + "a" * 130 + "'\n")
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run([str(ruff), "check", "--no-cache", "--config", str(ROOT / "ruff.toml"),
                             "--output-format", "concise", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "F401" in result.stdout and "E501" in result.stdout, result.stdout
