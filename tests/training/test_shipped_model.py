"""The shipped shapes-world model grounds held-out clips end to end (processor,
generate, parser, mapping) through the torch backend, as the node would run it.

Thresholds: this sample measured image_point F1 0.94, image_count exact 0.70 (majority
0.30), and over 16-frame windows (the node's default) video_point F1 0.75, video_track F1
0.75, video_count exact 0.53 (majority 0.33); the larger held-out evaluation in README.md
(150-300 examples a group) measured 0.89, 0.67, 0.87, 0.69 and 0.63. Each threshold leaves
about two examples of slack for numeric differences between machines.
"""
from pathlib import Path

import pytest

import molmo2_ros
from molmo2_ros.backends.factory import make_backend
from molmo2_ros.training.evaluate import evaluate
from molmo2_ros.training.shapes_tasks import HELDOUT_SEED, heldout_examples

ASSET = Path(molmo2_ros.__file__).parent / "assets" / "shapes-tiny"
# (group, examples, metric, threshold); KIND@16f: clips of 16 frames, the node's default window
CHECKS = [
    ("image_point", 16, "f1", 0.8),
    ("image_count", 30, "exact", 0.6),
    ("video_point@16f", 24, "f1", 0.65),
    ("video_track@16f", 10, "f1", 0.55),
    ("video_count@16f", 30, "exact", 0.45),
]


def test_shipped_model_is_small_and_complete():
    files = {p.name: p.stat().st_size for p in ASSET.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= set(files)
    assert sum(files.values()) < 20 * 2**20


@pytest.fixture(scope="module")
def report():
    import torch

    torch.set_num_threads(1)
    backend = make_backend("torch", str(ASSET))
    # seeds past the ones the reported evaluation used
    examples = []
    for group, n, _, _ in CHECKS:
        kind, _, frames = group.partition("@")
        examples += heldout_examples({kind: n}, HELDOUT_SEED + 10**6, [16] if frames else None)
    try:
        return evaluate(backend, examples, max_new_tokens=512)
    finally:
        backend.close()


@pytest.mark.parametrize("group,n,metric,threshold", CHECKS)
def test_held_out_clips(report, group, n, metric, threshold):
    entry = report["groups"][group]
    value = entry["count"][metric] if metric == "exact" else entry["points"][metric]
    assert value >= threshold, (group, entry)
    if metric == "exact":
        assert value > entry["count"]["majority_exact"], entry   # better than always one answer
