"""What a user meets when something is wrong: a manifest is checked in full before the
model loads (every bad line as file:line: reason, no traceback), config paths are relative
to the config file, and `molmo2-eval --out` prints a summary, not the whole report."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from molmo2_ros.training.config import load_config
from molmo2_ros.training.dataset import ManifestError, load_all

BIN = Path(sys.executable).parent


def bad_manifest(folder: Path) -> Path:
    cv2.imwrite(str(folder / "ok.png"), np.zeros((32, 48, 3), np.uint8))
    lines = [
        {"image": "ok.png", "task": "point", "query": "cup", "points": [{"id": 1, "x": 3, "y": 4}]},
        {"image": "ok.png", "query": "cup"},                                        # 2: no task
        {"image": "gone.png", "task": "point", "query": "cup"},                     # 3: missing image
        "not json",                                                                 # 4
        {"image": "ok.png", "task": "dance", "query": "cup"},                       # 5: unknown task
        {"image": "ok.png", "task": "count", "query": "cup", "points": [{"id": 1}]},   # 6: bad point
    ]
    path = folder / "data.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_every_bad_line_is_listed(tmp_path):
    path = bad_manifest(tmp_path)
    with pytest.raises(ManifestError) as info:
        load_all(path)
    message = str(info.value)
    assert message.startswith(f"5 bad line(s) in {path}:")
    assert f"{path}:2: no 'task'" in message
    assert f"{path}:3: image {tmp_path / 'gone.png'} does not exist" in message
    assert f"{path}:4: not JSON" in message
    assert f"{path}:5: unknown task 'dance'" in message
    assert f"{path}:6: bad point" in message
    assert f"{path}:1:" not in message


def test_molmo2_train_checks_the_manifest_before_loading_the_model(tmp_path):
    path = bad_manifest(tmp_path)
    config = tmp_path / "train.yaml"
    # the model does not exist either: the manifest's errors must come first
    config.write_text(f"output_dir: run\nmodel: {tmp_path / 'no-such-model'}\ndata: {{manifest: data.jsonl}}\n")
    run = subprocess.run([str(BIN / "molmo2-train"), "--config", str(config)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert f"{path}:2: no 'task'" in run.stderr and f"{path}:3: image" in run.stderr
    assert "no-such-model" not in run.stderr


def test_config_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "start").mkdir()
    config = tmp_path / "cfg" / "train.yaml"
    config.write_text("output_dir: runs/a\nmodel: start\ndata: {manifest: data/train.jsonl}\n"
                      "validation: {recordings: [bags/val]}\n")
    monkeypatch.chdir(tmp_path)
    c = load_config(config)
    assert c.output_dir == str(tmp_path / "cfg" / "runs" / "a")
    assert c.data.manifest == str(tmp_path / "cfg" / "data" / "train.jsonl")
    assert c.model == str(tmp_path / "cfg" / "start")
    assert c.validation.recordings == [str(tmp_path / "cfg" / "bags" / "val")]
    config.write_text("output_dir: /abs/run\nmodel: allenai/Molmo2-4B\ndata: {manifest: t.jsonl}\n")
    c = load_config(config)
    assert c.output_dir == "/abs/run" and c.model == "allenai/Molmo2-4B"   # a hub id stays one


def test_validation_settings_are_checked(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("output_dir: run\nmodel: m\ndata: {manifest: t.jsonl}\nvalidation: {}\n")
    with pytest.raises(ValueError, match="validation needs exactly one of"):
        load_config(config)
    config.write_text("output_dir: run\nmodel: m\ndata: {manifest: t.jsonl}\nvalidation: {fraction: 1.5}\n")
    with pytest.raises(ValueError, match="fraction must be between 0 and 1"):
        load_config(config)
    config.write_text("output_dir: run\nmodel: m\ndata: {manifest: t.jsonl}\nweights_dtype: bf16\n")
    with pytest.raises(ValueError, match="weights_dtype bf16 is for LoRA"):
        load_config(config)
