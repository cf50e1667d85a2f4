"""The memory plan counts what the real model holds: the published Molmo2 dimensions built by
transformers on the meta device (no memory), parameter by parameter; and the KV-cache bytes the
engine runners really allocate."""
from __future__ import annotations

import pytest

from molmo2_ros.backends import memory_plan


def _meta_counts(config_dict: dict) -> dict[str, int]:
    import torch
    from transformers import Molmo2Config, Molmo2ForConditionalGeneration

    with torch.device("meta"):
        model = Molmo2ForConditionalGeneration(Molmo2Config(**config_dict))
    counts = {"lm": 0, "vision": 0}
    for name, p in model.named_parameters():
        vision = name.startswith(("model.vision_tower", "model.multi_modal_projector"))
        counts["vision" if vision else "lm"] += p.numel()
    return counts


@pytest.mark.parametrize("name", ["Molmo2-4B", pytest.param("Molmo2-8B", marks=pytest.mark.slow)])
def test_fp16_weights_match_the_real_parameter_shapes(name):
    config = memory_plan.PUBLISHED[name]
    real = _meta_counts(config)
    plan = memory_plan.estimate(config, "fp16", memory_plan.Window(frames=16))
    assert plan["weights_lm"] == 2 * real["lm"]
    assert plan["weights_vision"] == 2 * real["vision"]
    if name == "Molmo2-4B":   # the published 4B: 4.85 B parameters
        assert real["lm"] + real["vision"] == 4_850_869_200


def test_quantized_weights_shrink_and_the_window_grows_the_cache():
    config = memory_plan.PUBLISHED["Molmo2-4B"]
    window = memory_plan.Window(frames=16)
    lm = {w: memory_plan.estimate(config, w, window)["weights_lm"] for w in ("fp16", "int8", "int4")}
    assert lm["int4"] < 0.3 * lm["fp16"] and 0.5 * lm["fp16"] < lm["int8"] < 0.53 * lm["fp16"]
    short, long = (memory_plan.estimate(config, "fp16", memory_plan.Window(frames=f)) for f in (4, 64))
    # 81 pooled patches + 6 tokens around each frame, 2 bytes x 2 (k, v) x 36 layers x 8 heads x 128
    assert long["kv_cache"] - short["kv_cache"] == 60 * 87 * 2 * 2 * 36 * 8 * 128
    plan = memory_plan.describe("Molmo2-4B", config, "fp16", window)
    assert plan["devices"]["Orin Nano 8GB"] == "no" and plan["devices"]["Thor 128GB"] == "fits"
    assert memory_plan.describe("Molmo2-4B", config, "int4", window)["devices"]["Orin Nano 8GB"] == "fits"


def test_kv_estimate_equals_what_the_onnxruntime_runner_allocates(tiny_export_dir):
    import json

    from molmo2_ros.backends.onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(tiny_export_dir, device="cpu")
    allocated = sum(t.numel() * t.element_size() for t in backend.runner.cache.past)
    config = json.loads((tiny_export_dir / "config.json").read_text())
    window = memory_plan.Window(frames=2, max_new_tokens=backend.runner.capacity - memory_plan.prompt_tokens(config, 2))
    assert memory_plan.estimate(config, "fp32", window)["kv_cache"] == allocated
    level, line = memory_plan.plan_for_backend(backend, frames=2, max_new_tokens=16)
    assert level == "info" and "memory plan" in line and "fp32 weights, 2 frames" in line


def test_the_node_estimate_for_a_torch_backend(tiny_model_dir):
    """What the node logs at configure (molmo2_ros/ros/node.py calls plan_for_backend)."""
    from molmo2_ros.backends.torch_backend import TorchBackend

    level, line = memory_plan.plan_for_backend(TorchBackend(str(tiny_model_dir), device="cpu"), frames=8,
                                               max_new_tokens=64)
    assert level == "info" and "fp32 weights, 8 frames" in line and "total ~" in line


def test_plan_cli_prints_every_model_weight_format_and_device(capsys):
    import json

    from molmo2_ros.engines.cli import main

    assert main(["plan", "--frames", "8"]) == 0
    table = capsys.readouterr().out
    for text in ("Molmo2-4B", "Molmo2-8B", "int4", "Orin Nano 8GB", "Orin NX 16GB", "AGX Orin 32GB",
                 "AGX Orin 64GB", "Thor 128GB", "24GB desktop GPU"):
        assert text in table
    assert main(["plan", "--json", "--model", "Molmo2-4B", "--weights", "fp16"]) == 0
    (plan,) = json.loads(capsys.readouterr().out)
    assert plan["weights_lm"] == round(memory_plan.estimate(memory_plan.PUBLISHED["Molmo2-4B"], "fp16",
                                                              memory_plan.Window(frames=16))["weights_lm"] / 1e9, 3)
