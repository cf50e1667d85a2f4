"""Write a Molmo2 checkpoint in the original (remote-code) layout of the published
allenai/Molmo2-* folders from one saved by this project (save_pretrained).

Measured with transformers 5.23: save_pretrained already writes the weights in the original
names and fusions (it reverses conversion_mapping's `molmo2` / `Molmo2TextModel` entries):
fused `att_proj` (q, k, v) and `ff_proj` (up, then gate), `wte.embedding` +
`wte.new_embedding`, `transformer.blocks.*`, `vision_backbone.image_vit.*`. What differs
from a published folder is the config: `vit_config` (image_default_input_size,
image_patch_size, image_num_pos) instead of `vision_config`, `vit_layers` counted from the
end of the hub's ViT, and `auto_map` to the remote code. This helper writes that config and
refuses a weights file that is not in the original layout.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

ORIGINAL_KEYS = ("model.transformer.wte.embedding", "model.transformer.wte.new_embedding",
                 "model.transformer.blocks.0.self_attn.att_proj.weight",
                 "model.transformer.blocks.0.mlp.ff_proj.weight",
                 "model.vision_backbone.image_vit.transformer.resblocks.0.attention.wq.weight",
                 "model.vision_backbone.image_pooling_2d.wq.weight", "model.vision_backbone.image_projector.w3.weight")


def original_config(config: dict) -> dict:
    config = json.loads(json.dumps(config))
    vision = config.pop("vision_config")
    layers = vision["num_hidden_layers"]
    for new, old in (("image_size", "image_default_input_size"), ("patch_size", "image_patch_size"),
                     ("num_position_embeddings", "image_num_pos")):
        vision[old] = vision.pop(new)
    config["vit_config"] = vision
    adapter = config["adapter_config"]
    adapter["vit_layers"] = [layer - layers if layer >= 0 else layer for layer in adapter.pop("vision_feature_layer")]
    config["auto_map"] = {"AutoConfig": "configuration_molmo2.Molmo2Config",
                          "AutoModelForImageTextToText": "modeling_molmo2.Molmo2ForConditionalGeneration"}
    return config


def write_original_layout(saved_dir: Path, out_dir: Path) -> Path:
    from safetensors import safe_open

    with safe_open(str(saved_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    missing = [k for k in ORIGINAL_KEYS if k not in keys]
    if missing:
        raise ValueError(f"{saved_dir} weights are not in the original layout (missing {missing})")
    shutil.copytree(saved_dir, out_dir)
    config = json.loads((saved_dir / "config.json").read_text())
    (out_dir / "config.json").write_text(json.dumps(original_config(config), indent=2))
    return out_dir
