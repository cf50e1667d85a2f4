"""Training a user can trust: a held-out split without shared frames, every saved
checkpoint evaluated on it through the inference path, the metrics log, the plot, the
best checkpoint marked and kept; Ctrl-C saves a checkpoint and says how to resume."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from molmo2_ros.training.checkpoints import checkpoints
from molmo2_ros.training.config import Data, TinyInit, TrainConfig, Validation
from molmo2_ros.training.dataset import read_manifest
from molmo2_ros.training.plot import plot
from molmo2_ros.training.run_log import read_log
from molmo2_ros.training.trainer import train
from molmo2_ros.training.validation import prepare

sys.path.insert(0, str(Path(__file__).parent))
from manifests import write_image_manifest  # noqa: E402

BIN = Path(sys.executable).parent


def config(tmp_path, manifest, **kw):
    base = dict(output_dir=str(tmp_path / "run"), tiny_init=TinyInit(seed=0), data=Data(manifest=str(manifest)),
                validation=Validation(fraction=0.25, max_new_tokens=12), steps=4, batch_size=2, lr=1e-3,
                warmup=1, save_every=2, keep_checkpoints=1, log_every=2, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_fraction_split_shares_no_frame(tmp_path):
    manifest = write_image_manifest(tmp_path, n_images=8, queries_per_image=2)
    messages = []
    train_examples, held = prepare(config(tmp_path, manifest), messages.append)
    assert len(held) == 4 and len(train_examples) == 12   # 0.25 of 16 lines, two images' lines
    rows = {r["_where"]: r for r in read_manifest(manifest)}
    held_images = {rows[e.source]["image"] for e in held}
    assert len(held_images) == 2
    assert not held_images & {rows[e.source]["image"] for e in train_examples}
    assert messages == ["validation: 4 line(s) held out (fraction 0.25), training on 12"]


def test_validated_run_logs_metrics_plots_and_keeps_the_best(tmp_path):
    manifest = write_image_manifest(tmp_path, n_images=4, queries_per_image=1)
    cfg = config(tmp_path, manifest)
    messages = []
    train(cfg, log=messages.append)
    steps, vals = read_log(cfg.out)
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and all("loss" in r and "lr" in r for r in steps)
    assert [v["step"] for v in vals] == [0, 2, 4]   # the start, then every saved checkpoint
    assert [v["checkpoint"] for v in vals] == ["init", "checkpoint-2", "checkpoint-4"]
    assert sum("validation at step" in m for m in messages) == 3
    best = json.loads((cfg.out / "best.json").read_text())
    top = max(vals[1:], key=lambda v: (v["val_f1"], -v["step"]))
    assert best == {"checkpoint": top["checkpoint"], "step": top["step"], "val_f1": top["val_f1"]}
    assert (cfg.out / "best").resolve() == (cfg.out / best["checkpoint"]).resolve()
    assert (cfg.out / best["checkpoint"] / "model.safetensors").is_file()   # kept despite keep_checkpoints 1
    assert checkpoints(cfg.out)[-1].name == "checkpoint-4"

    png = plot(cfg.out, cfg.out / "training.png", title="test run")
    image = cv2.imread(str(png))
    assert image.shape == (540, 960, 3) and (image < 250).any()
    # the trainer's stdout, saved as text, plots too (the shipped model's run has only that)
    log = tmp_path / "stdout.log"
    log.write_text("\n".join(["resumed ..."] + messages) + "\n")
    steps_from_text, vals_from_text = read_log(log)
    assert [r["step"] for r in steps_from_text] == [2, 4] and [v["step"] for v in vals_from_text] == [0, 2, 4]
    done = subprocess.run([str(BIN / "molmo2-train"), "plot", str(log)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and log.with_suffix(".png").is_file(), done.stderr


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path):
    write_image_manifest(tmp_path, n_images=2, queries_per_image=1)
    cfg_file = tmp_path / "train.json"
    cfg_file.write_text(json.dumps({"output_dir": "run", "tiny_init": {"seed": 0}, "data": {"manifest": "train.jsonl"},
                                    "steps": 100000, "batch_size": 1, "save_every": 100000, "threads": 1}))
    proc = subprocess.Popen([str(BIN / "molmo2-train"), "--config", str(cfg_file)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    metrics = tmp_path / "run" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 240
        while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"Resume with: molmo2-train --config {cfg_file}" in err
    saved = checkpoints(tmp_path / "run")
    assert len(saved) == 1 and f"saved {saved[0]} at step" in err
    step = int(saved[0].name.split("-")[1])
    assert step >= 2 and f"at step {step}/100000" in err


def test_a_split_that_leaves_nothing_to_train_on_says_why(tmp_path):
    manifest = write_image_manifest(tmp_path, n_images=1, queries_per_image=3)   # every line shares one frame
    with pytest.raises(ValueError, match="leaves no training line .* share frames"):
        prepare(config(tmp_path, manifest, validation=Validation(fraction=0.5)), lambda m: None)
