"""One ONNX export of the tiny Molmo2 per test session, made through the real CLI."""
from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def tiny_export_dir(tiny_model_dir, tmp_path_factory):
    from molmo2_ros.engines.cli import main

    out = tmp_path_factory.mktemp("tiny_engines") / "engines"
    assert main(["export", "--model", str(tiny_model_dir), "--out", str(out), "--max-frames", "8",
                 "--max-prompt", "1024", "--max-new-tokens", "64"]) == 0
    return out


@pytest.fixture
def engine_copy(tiny_export_dir, tmp_path):
    """A private copy of the export folder that a test may damage."""
    return shutil.copytree(tiny_export_dir, tmp_path / "engines")
