"""LoRA training starts from the published checkpoints' original layout exactly as from the
native layout (transformers converts it at load; no trust_remote_code)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from molmo2_ros.training.config import Data, Lora, TrainConfig
from molmo2_ros.training.trainer import train


def _lora_run(tmp_path, model_dir, name):
    cfg = TrainConfig(output_dir=str(tmp_path / name), model=str(model_dir),
                      data=Data(shapes={"mix": {"image_point": 1.0}, "seed": 0}), lora=Lora(r=4, alpha=8),
                      steps=2, batch_size=2, lr=1e-2, warmup=1, save_every=2, log_every=1, threads=1, seed=0)
    return load_file(str(train(cfg, log=lambda m: None) / "model.safetensors"))


@pytest.mark.slow   # two short LoRA runs: ~1-3 min on 2 shared cores
def test_lora_from_the_original_layout_equals_lora_from_the_native_layout(tmp_path, tiny_model_dir,
                                                                          original_layout_dir):
    native = _lora_run(tmp_path, tiny_model_dir, "native")
    original = _lora_run(tmp_path, original_layout_dir, "original")
    assert native.keys() == original.keys()
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    trained = [k for k in native if not torch.equal(native[k], start[k])]
    assert any("transformer.blocks" in k for k in trained)   # LoRA (merged) moved the LM's weights
    assert all(torch.equal(native[k], original[k]) for k in native)
