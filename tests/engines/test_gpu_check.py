"""The GPU check script runs end to end on the tiny model (CPU here), so the one GPU run
is known to work before it happens; its synthetic video matches the real processor."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_tiny_runs_every_section(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "molmo2_ros.engines.gpu_check", "--tiny",
                           "--work", str(tmp_path / "work"), "--decode-steps", "32", "--frames", "3"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report == json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    sections = report["sections"]
    for name in ("environment", "model", "hf_baseline", "reference", "export", "onnxruntime"):
        assert sections[name]["status"] == "ok", (name, sections[name])
    assert sections["hf_baseline"]["decode_tokens_per_s"] > 0
    ort = sections["onnxruntime"]
    assert ort["greedy_tokens_equal"] and ort["greedy_tokens_matching_prefix"] == 32
    assert ort["vision_max_rel_diff"] < 1e-4 and ort["prefill_argmax_equal"]
    assert sections["tensorrt"]["status"] in ("skipped", "ok")
    if sections["tensorrt"]["status"] == "skipped":
        assert "tensorrt" in sections["tensorrt"]["reason"].lower() or "cuda" in sections["tensorrt"]["reason"]


def test_budget_skips_sections_with_a_reason(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "molmo2_ros.engines.gpu_check", "--tiny", "--budget-s", "1",
                           "--work", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    report = json.loads(done.stdout)
    assert report["sections"]["model"]["status"] == "skipped"
    assert "left" in report["sections"]["model"]["reason"]


def test_synthetic_video_has_the_processor_structure(tiny_model_dir, synthetic_frames):
    """Pooling indices, grids and vision-token layout equal the real processor's for 3 frames."""
    from transformers import AutoConfig, AutoProcessor

    from molmo2_ros.engines.model_shapes import synthetic_video
    from molmo2_ros.backends.inputs import build_inputs

    config = AutoConfig.from_pretrained(str(tiny_model_dir))
    real = build_inputs(AutoProcessor.from_pretrained(str(tiny_model_dir)), synthetic_frames(3), "Point to it.",
                        return_tensors="np").tensors
    fake = synthetic_video(config, 3)
    np.testing.assert_array_equal(fake["video_token_pooling"], real["video_token_pooling"])
    np.testing.assert_array_equal(fake["video_grids"], real["video_grids"])
    assert fake["pixel_values_videos"].shape == real["pixel_values_videos"].shape
    real_ids, real_mm = real["input_ids"][0], real["mm_token_type_ids"][0]
    fake_ids, fake_mm = fake["input_ids"][0], fake["mm_token_type_ids"][0]
    assert list(fake_ids[fake_mm == 1]) == list(real_ids[real_mm == 1])


def test_cpu_vision_fallback_matches_reference(tiny_model_dir, tiny_export_dir):
    """Where onnxruntime has no CUDA provider, the GPU check still compares the vision
    graph on the CPU provider (first frame) with transformers."""
    from transformers import Molmo2ForConditionalGeneration

    from molmo2_ros.engines.gpu_check import reference, vision_parity_on_cpu
    from molmo2_ros.engines.model_shapes import synthetic_video

    model = Molmo2ForConditionalGeneration.from_pretrained(str(tiny_model_dir), attn_implementation="eager").eval()
    tensors = synthetic_video(model.config, 2)
    result = vision_parity_on_cpu(tiny_export_dir, tensors, reference(model, tensors, "cpu", 2))
    assert result["vision_ref_max_abs"] > 0
    assert result["vision_max_abs_diff"] <= 1e-4 * result["vision_ref_max_abs"]
