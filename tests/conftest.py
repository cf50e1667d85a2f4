"""Shared fixtures: one tiny random Molmo2 per test session, and synthetic frames."""
from __future__ import annotations

import numpy as np
import pytest
from pathlib import Path

from molmo2_ros.core.grounding import Frame


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Molmo2 (model + processor) saved with save_pretrained, built once."""
    import torch

    torch.set_num_threads(1)
    from molmo2_ros.tiny_model import build_tiny_molmo2

    return build_tiny_molmo2(tmp_path_factory.mktemp("tiny_molmo2"), seed=0)


def make_frames(n: int = 3, size: tuple[int, int] = (160, 120), t0_ns: int = 1_700_000_000_000_000_000,
                period_ns: int = 500_000_000, seed: int = 0) -> list[Frame]:
    """`n` RGB frames of `size` (width, height) with a bright square moving left to right."""
    width, height = size
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
        x = int((i + 1) * width / (n + 1))
        image[height // 3: height // 3 + 16, max(0, x - 8): x + 8] = (250, 40, 40)
        frames.append(Frame(image=image, stamp_ns=t0_ns + i * period_ns, source_size=(width, height),
                            frame_id="camera"))
    return frames


@pytest.fixture
def synthetic_frames():
    return make_frames


def write_test_video(path, n_frames: int = 30, fps: int = 10, size: tuple[int, int] = (160, 120)):
    """An H.264 MP4 (PyAV) whose frame i is flat gray level 8*i with a moving bright square."""
    import av

    width, height = size
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(n_frames):
            image = np.full((height, width, 3), (8 * i) % 256, np.uint8)
            x = int((i + 1) * width / (n_frames + 1))
            image[10:26, max(0, x - 8): x + 8] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture
def test_video(tmp_path):
    return write_test_video(tmp_path / "clip.mp4")


@pytest.fixture(scope="session")
def session_test_video(tmp_path_factory):
    """write_test_video's clip, made once per session."""
    return write_test_video(tmp_path_factory.mktemp("video") / "clip.mp4")


def pytest_terminal_summary(terminalreporter):
    """Count the ROS 2 command-line and launch tests (tests/launch) apart: CI runs them all."""
    counts = {outcome: sum(1 for report in terminalreporter.stats.get(outcome, [])
                           if report.nodeid.startswith("tests/launch/"))
              for outcome in ("passed", "failed", "error", "skipped")}
    terminalreporter.write_line("ROS 2 tool tests (tests/launch): "
                                + ", ".join(f"{n} {outcome}" for outcome, n in counts.items()))


@pytest.fixture(scope="session")
def original_layout_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model written in the published checkpoints' original (remote-code) layout."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("original_layout", Path(__file__).with_name("original_layout.py"))
    helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helper)
    return helper.write_original_layout(tiny_model_dir, tmp_path_factory.mktemp("original_layout") / "model")
