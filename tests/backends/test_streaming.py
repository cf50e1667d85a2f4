"""Streaming through the torch backend with the shipped model: the tokens are the same with
and without a listener, the pieces make up the answer, and the points streamed from the
model's real answers (real piece boundaries) on shapes clips of 1-16 frames are a prefix
of the final result's, in order, with the same positions, stamps and ids.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

import molmo2_ros
from molmo2_ros.core.backend import Generation
from molmo2_ros.core.grounder import ground, sampling_fps
from molmo2_ros.core.grounding import Task
from molmo2_ros.core.prompts import build_prompt
from molmo2_ros.training.shapes_tasks import HELDOUT_SEED, make_example

sys.path.insert(0, str(Path(__file__).parents[1] / "core"))
from test_answer_stream import assert_final_prefix  # noqa: E402

ASSET = Path(molmo2_ros.__file__).parent / "assets" / "shapes-tiny"
# (shapes task kind, clip frames): pointing, counting and tracking, images and clips up to 16 frames
CASES = [("image_point", 1), ("image_count", 1), ("video_point", 2), ("video_count", 4),
         pytest.param("video_track", 8, marks=pytest.mark.slow),   # ~10 s a run on 2 shared cores
         ("video_track", 16), ("video_count", 16), ("video_point", 16)]


@pytest.fixture(scope="module")
def backend():
    import torch

    from molmo2_ros.backends.torch_backend import TorchBackend

    torch.set_num_threads(1)
    backend = TorchBackend(str(ASSET), device="cpu")
    yield backend
    backend.close()


class Replay:
    """Backend protocol over the model's own pieces, replayed in the order and sizes the
    backend streamed them (so ground() runs the final parse on the same answer)."""

    name, model_id, compiles_on_first_use = "replay", "replay", False

    def __init__(self, pieces):
        self.pieces = pieces

    def generate(self, frames, prompt, *, max_new_tokens, progress=None, should_stop=None, on_text=None):
        for piece in self.pieces:
            on_text(piece)
        last = self.pieces[-1]
        return Generation("".join(p.text for p in self.pieces), list(last.frame_times), last.is_video, 0.0, 0.0)


@pytest.mark.parametrize("kind,n_frames", CASES)
def test_streamed_points_of_real_answers_are_final(backend, kind, n_frames):
    example = make_example(kind, HELDOUT_SEED + 7 * n_frames, frames=(max(n_frames, 2),) * 2)
    if n_frames == 1:
        example = dataclasses.replace(example, frames=example.frames[:1])
    frames = example.frames
    prompt = build_prompt(example.task, example.query, video=len(frames) > 1, fps=sampling_fps(frames))
    plain = backend.generate(frames, prompt, max_new_tokens=512)
    pieces = []
    streamed = backend.generate(frames, prompt, max_new_tokens=512, on_text=pieces.append)
    assert streamed.token_ids == plain.token_ids and streamed.text == plain.text   # the answer is unchanged
    assert "".join(p.text for p in pieces) == plain.text and len(pieces) > 1
    assert all(list(p.frame_times) == plain.frame_times for p in pieces)

    released, snapshots = [], []
    final = ground(Replay(pieces), frames, example.query, example.task,
                   on_points=lambda new, partial: (released.extend(new), snapshots.append(partial)))
    n = assert_final_prefix(released, snapshots, final, example.task)
    total = sum(len(t.points) for t in final.tracks) if example.task is Task.TRACK else len(final.points)
    assert n == total, plain.text           # the model's well-formed answers stream every point
