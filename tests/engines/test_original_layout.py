"""The published checkpoints' original (remote-code) layout -- legacy vit_config keys, auto_map,
fused and renamed weights -- loads like this project's saved checkpoints, without
trust_remote_code: same weights, same logits, same greedy tokens, same exported engines."""
from __future__ import annotations

import json

import torch

PROMPT = "Point to the red square."


def test_original_layout_is_really_the_original(original_layout_dir):
    from safetensors import safe_open

    config = json.loads((original_layout_dir / "config.json").read_text())
    assert "vit_config" in config and "vision_config" not in config and "auto_map" in config
    assert "image_default_input_size" in config["vit_config"] and "vit_layers" in config["adapter_config"]
    with safe_open(str(original_layout_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    for key in ("model.transformer.wte.embedding", "model.transformer.wte.new_embedding",
                "model.transformer.blocks.0.self_attn.att_proj.weight", "model.transformer.blocks.0.mlp.ff_proj.weight",
                "model.vision_backbone.image_vit.transformer.resblocks.0.attention.wq.weight",
                "model.vision_backbone.image_pooling_2d.wq.weight", "model.vision_backbone.image_projector.w3.weight"):
        assert key in keys, key
    # the fused q/k/v holds all heads: q (heads x head_dim) + k and v (kv_heads x head_dim each)
    text = config["text_config"]
    with safe_open(str(original_layout_dir / "model.safetensors"), "pt") as f:
        fused = f.get_slice("model.transformer.blocks.0.self_attn.att_proj.weight").get_shape()
    assert fused[0] == (text["num_attention_heads"] + 2 * text["num_key_value_heads"]) * text["head_dim"]
    assert not any("q_proj" in k or "embed_tokens" in k or "language_model" in k for k in keys)


def test_torch_backend_loads_it_with_identical_weights_logits_and_tokens(original_layout_dir, tiny_model_dir,
                                                                         synthetic_frames):
    from molmo2_ros.backends.torch_backend import TorchBackend

    native = TorchBackend(str(tiny_model_dir), device="cpu")
    original = TorchBackend(str(original_layout_dir), device="cpu")
    ours, theirs = native.model.state_dict(), original.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    frames = synthetic_frames(3)
    inputs = native.prepare(frames, PROMPT).tensors
    with torch.no_grad():
        assert torch.equal(native.model(**inputs).logits, original.model(**inputs).logits)
    assert (original.generate(frames, PROMPT, max_new_tokens=32).token_ids
            == native.generate(frames, PROMPT, max_new_tokens=32).token_ids)


def test_export_of_the_original_layout_decodes_like_the_native_export(original_layout_dir, tiny_export_dir,
                                                                       tmp_path, synthetic_frames):
    from molmo2_ros.backends.onnxruntime_backend import OnnxRuntimeBackend
    from molmo2_ros.engines.cli import main

    out = tmp_path / "engines"
    assert main(["export", "--model", str(original_layout_dir), "--out", str(out), "--max-frames", "8",
                 "--max-prompt", "1024", "--max-new-tokens", "64"]) == 0
    frames = synthetic_frames(4)
    got = OnnxRuntimeBackend(out, device="cpu", threads=1).generate(frames, PROMPT, max_new_tokens=32)
    expected = OnnxRuntimeBackend(tiny_export_dir, device="cpu", threads=1).generate(frames, PROMPT, max_new_tokens=32)
    assert got.token_ids == expected.token_ids and len(got.token_ids) >= 16
