"""The fine-tuning recipe of docs/training.md, measured: the shipped model on recordings of
the shapes scene seen through the node's default window (16 frames at 2 fps; the model
was trained on 3-4), annotated as a careful reviewer would, converted with `molmo2-train
convert --annotations`; validation on a second recording. LoRA at lr 1e-3 fits the training
windows within 60 steps (loss more than halved) and every checkpoint is scored on the
held-out recording; the held-out F1 it reached is reported in docs/training.md (it did not
carry over to the new recording in 60 steps: 0.115 -> best 0.143). Slow (tens of minutes
on a busy 2-core CPU)."""
import json
import sys
from pathlib import Path

import pytest

from molmo2_ros.backends.default_model import default_model
from molmo2_ros.sim.shapes_world import make_clip
from molmo2_ros.training.config import Data, Lora, TrainConfig, Validation
from molmo2_ros.training.convert import convert
from molmo2_ros.training.run_log import read_log
from molmo2_ros.training.trainer import train

sys.path.insert(0, str(Path(__file__).parent))
from manifests import scene_annotations, write_scene_recording  # noqa: E402

OBJECTS = [("red", "circle"), ("blue", "square"), ("yellow", "triangle"), ("green", "circle")]


def field_recordings(folder: Path) -> Path:
    """train/val recordings of the publisher's scene (320x240, 10 Hz) -> one manifest."""
    lines = []
    for name, seed, seconds in (("train", 1, 40), ("val", 2, 20)):
        clip = make_clip(seed, n_frames=seconds * 10, fps=10, size=(320, 240), objects=OBJECTS,
                         speed_range=(0.05, 0.15), start_ns=1_700_000_000 * 10**9 + seed * 10**12)
        write_scene_recording(folder / f"{name}_bag", clip)
        notes = folder / f"{name}_notes.jsonl"
        notes.write_text("".join(json.dumps(x) + "\n" for x in scene_annotations(clip, frames=16)))
        report = convert(folder / f"{name}_bag", "/camera/image_raw", folder / f"{name}.jsonl", annotations=notes)
        assert not report.dropped
        lines += (folder / f"{name}.jsonl").read_text().splitlines()
    manifest = folder / "all.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.mark.slow
def test_lora_recipe_fits_a_small_field_dataset_and_scores_each_checkpoint(tmp_path):
    model, is_random = default_model()
    assert not is_random, "the shipped model is missing"
    manifest = field_recordings(tmp_path / "data")
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), model=model, data=Data(manifest=str(manifest)),
                      validation=Validation(recordings=[str(tmp_path / "data" / "val_bag")], max_new_tokens=128),
                      lora=Lora(r=16, alpha=32), lr=1e-3, warmup=5, steps=60, batch_size=4, save_every=20,
                      log_every=10, threads=1)
    train(cfg)
    steps, vals = read_log(cfg.out)
    assert steps[-1]["loss"] < 0.5 * steps[0]["loss"], (steps[0], steps[-1])
    assert [v["step"] for v in vals] == [0, 20, 40, 60] and all(v["val_n"] == 28 for v in vals[1:])
    best = json.loads((cfg.out / "best.json").read_text())
    assert best["val_f1"] == max(v["val_f1"] for v in vals[1:])
