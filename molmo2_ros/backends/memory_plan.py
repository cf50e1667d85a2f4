"""How much accelerator memory a Molmo2 model needs for a query window, and which devices hold it.

Counted from the model's configuration (the published dimensions below, or any checkpoint's
config.json): weights of the language model (quantisable: decoder projections, embedding
table, lm_head) and of the vision tower + adapter (kept in fp16), the KV cache the engines
preallocate (prompt + answer tokens), the prefill's transient activations as the exported
graphs compute them (eager attention: fp32 scores of one layer at a time) and the vision
tower's activations for one window. `molmo2-engines plan` prints it per model, weight
format and device; the node logs it at configure.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

GB = 1e9
# Published dimensions (config.json of allenai/Molmo2-4B and -8B as transformers 5.23 loads them:
# ViT trimmed to 25 of 27 layers, features from layers 24 and 18). 4B: Qwen3-4B-Instruct-2507;
# 8B: Qwen3-8B (hidden 4096, MLP 12288); the 8B adapter width is taken equal to its text MLP, as in the 4B.
_VISION = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=25, num_attention_heads=16,
               num_key_value_heads=16, head_dim=72, image_size=[378, 378], patch_size=14)


def _molmo2(hidden: int, mlp: int) -> dict:
    return {
        "vision_config": dict(_VISION),
        "adapter_config": dict(vision_feature_layer=[24, 18], hidden_size=1152, num_attention_heads=16,
                               num_key_value_heads=16, head_dim=72, intermediate_size=mlp, text_hidden_size=hidden),
        "text_config": dict(hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=36, num_attention_heads=32,
                            num_key_value_heads=8, head_dim=128, vocab_size=151936, additional_vocab_size=128,
                            max_position_embeddings=36864, qk_norm_type="qwen3",
                            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    }


PUBLISHED = {"Molmo2-4B": _molmo2(2560, 9728), "Molmo2-8B": _molmo2(4096, 12288)}
# weight-only formats: bits per integer and the default block of one scale (engines.quantize)
INTEGER_BITS = {"int8": 8, "int4": 4}
DEFAULT_BLOCK_SIZE = {"int8": 128, "int4": 32}
DENSE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
# What a loaded backend holds beyond weights and KV cache, independent of the model's size:
# sessions, thread pool, allocator arenas, processor and tokenizer. ONNX Runtime CPU: measured
# 45-55 MB on the medium model in fp32, INT8 and INT4 alike (docs/engines.md), with weight
# pre-packing off (the backend's default; on, INT4 measured 25 MB more, fp32 the same). TensorRT:
# not measured here (no GPU); its execution contexts' activation memory is the plan's activations.
RUNTIME_BYTES = {"onnxruntime": 50e6, "tensorrt": 0.0}
# (name, memory in GB, GB kept for the OS, ROS and the CUDA context). Jetson memory is shared with the CPU.
DEVICES = (("Orin Nano 8GB", 8, 2.5), ("Orin NX 16GB", 16, 3.0), ("24GB desktop GPU", 24, 1.0),
           ("AGX Orin 32GB", 32, 3.0), ("AGX Orin 64GB", 64, 3.0), ("Thor 128GB", 128, 4.0))
VIDEO_POOL = 3          # 3x3 pooling of a frame's patches (Molmo2VideoProcessor)
TOKENS_AROUND_FRAME = 6  # <frame_start>, <frame_end> and ~4 timestamp text tokens
PROMPT_TEXT_TOKENS = 48


@dataclass(frozen=True)
class Window:
    frames: int = 16
    max_new_tokens: int = 256


def parameter_counts(config: dict) -> dict[str, int]:
    """Parameters of the language model's quantisable weights, its norms, and the vision side."""
    t, v, a = config["text_config"], config["vision_config"], config["adapter_config"]
    hidden, heads, kv, hd, mlp = (t["hidden_size"], t["num_attention_heads"], t["num_key_value_heads"],
                                  t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"],
                                  t["intermediate_size"])
    per_layer = hidden * hd * (2 * heads + 2 * kv) + 3 * hidden * mlp
    qk_norm = 2 * hd if t.get("qk_norm_type", "qwen3") == "qwen3" else hd * (heads + kv)
    vocab = t["vocab_size"]
    lm_linear = t["num_hidden_layers"] * per_layer + (vocab + t.get("additional_vocab_size", 0)) * hidden
    lm_linear += 0 if t.get("tie_word_embeddings") else vocab * hidden
    lm_norms = t["num_hidden_layers"] * (qk_norm + 2 * hidden) + hidden
    width, vmlp = v["hidden_size"], v["intermediate_size"]
    size = v["image_size"][0] if isinstance(v["image_size"], list) else v["image_size"]
    patches = (size // v["patch_size"]) ** 2
    vit = (patches * width + (v["patch_size"] ** 2 * v.get("num_channels", 3) + 1) * width
           + v["num_hidden_layers"] * (4 * (width * width + width) + 2 * width * vmlp + vmlp + width + 4 * width))
    pool_in = width * len(a["vision_feature_layer"])
    pool_width = a["num_attention_heads"] * a["head_dim"]
    adapter = (3 * (pool_in * pool_width + pool_width) + pool_width * a["hidden_size"] + a["hidden_size"]
               + 2 * a["hidden_size"] * a["intermediate_size"] + a["intermediate_size"] * t["hidden_size"])
    return {"lm_linear": lm_linear, "lm_norms": lm_norms, "vision": vit + adapter}


def prompt_tokens(config: dict, frames: int) -> int:
    v = config["vision_config"]
    size = v["image_size"][0] if isinstance(v["image_size"], list) else v["image_size"]
    per_frame = math.ceil(size // v["patch_size"] / VIDEO_POOL) ** 2 + TOKENS_AROUND_FRAME
    return frames * per_frame + PROMPT_TEXT_TOKENS


def weight_bytes(weights: str, dense: int, block_size: int | None = None) -> float:
    """Bytes per quantisable LM weight: `dense` for fp32/fp16/bf16; for int8/int4 the integer
    plus one scale (in the graphs' float type, `dense` bytes) per block."""
    if weights in DENSE_BYTES:
        return float(DENSE_BYTES[weights])
    return INTEGER_BITS[weights] / 8 + dense / (block_size or DEFAULT_BLOCK_SIZE[weights])


def lm_weight_bytes(config: dict, weights: str, dense: int, block_size: int | None = None) -> float:
    """The language model's weights once: quantisable weights in `weights`, norms in `dense`."""
    counts = parameter_counts(config)
    return counts["lm_linear"] * weight_bytes(weights, dense, block_size) + counts["lm_norms"] * dense


def kv_cache_bytes(config: dict, capacity: int, dense: int) -> int:
    """The cache the runners preallocate: key and value per layer, [kv_heads, capacity, head_dim]."""
    t = config["text_config"]
    hd = t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"]
    return 2 * t["num_hidden_layers"] * t["num_key_value_heads"] * hd * capacity * dense


def estimate(config: dict, weights: str, window: Window, *, activation_bytes: int = 2,
             dense: int | None = None) -> dict[str, float]:
    """Bytes by part for `weights` in fp32/fp16/bf16/int8/int4 (the LM's) over `window`; `dense`
    is the bytes of everything else (vision, norms, scales, KV cache): default fp32 with fp32
    weights, else fp16."""
    t, v = config["text_config"], config["vision_config"]
    counts = parameter_counts(config)
    dense = dense or (4 if weights == "fp32" else 2)
    seq = prompt_tokens(config, window.frames)
    capacity = seq + window.max_new_tokens
    kv_cache = kv_cache_bytes(config, capacity, dense)
    # one layer's prefill at a time: fp32 scores + their cast, q/k/v/MLP intermediates, residual stream
    prefill = (t["num_attention_heads"] * seq * seq * (4 + activation_bytes)
               + seq * (3 * t["intermediate_size"] + 6 * t["hidden_size"]) * dense
               + t["vocab_size"] * 4)
    size = v["image_size"][0] if isinstance(v["image_size"], list) else v["image_size"]
    patches = (size // v["patch_size"]) ** 2
    vision_act = window.frames * (v["num_attention_heads"] * patches * patches * 4
                                  + patches * (v["intermediate_size"] + 6 * v["hidden_size"]) * dense)
    return {"weights_lm": lm_weight_bytes(config, weights, dense),
            "weights_vision": counts["vision"] * dense, "kv_cache": kv_cache,
            "activations_prefill": prefill, "activations_vision": vision_act,
            "prompt_tokens": seq, "kv_capacity": capacity}


def total_bytes(parts: dict) -> float:
    return (parts["weights_lm"] + parts["weights_vision"] + parts["kv_cache"]
            + max(parts["activations_prefill"], parts["activations_vision"]))


def fits(total: float) -> dict[str, str]:
    """Per device: "fits", "tight" (over 85 % of what is left after the reserve) or "no"."""
    out = {}
    for name, memory, reserve in DEVICES:
        usable = (memory - reserve) * GB
        out[name] = "no" if total > usable else ("tight" if total > 0.85 * usable else "fits")
    return out


def describe(name: str, config: dict, weights: str, window: Window, *, dense: int | None = None) -> dict:
    parts = estimate(config, weights, window, dense=dense)
    total = total_bytes(parts)
    return {"model": name, "weights": weights, "frames": window.frames, "max_new_tokens": window.max_new_tokens,
            **{k: (round(v / GB, 3) if k.startswith(("weights", "kv", "activations")) else v)
               for k, v in parts.items()},
            "total_gb": round(total / GB, 3), "devices": fits(total)}


def plan_line(plan: dict) -> str:
    ok = [d for d, verdict in plan["devices"].items() if verdict == "fits"]
    return (f"memory plan ({plan['model']}, {plan['weights']} weights, {plan['frames']} frames = "
            f"{plan['prompt_tokens']} prompt tokens + {plan['max_new_tokens']} new): LM weights "
            f"{plan['weights_lm']:.2f} GB, vision {plan['weights_vision']:.2f} GB, KV cache {plan['kv_cache']:.2f} GB, "
            f"prefill activations {plan['activations_prefill']:.2f} GB, vision activations "
            f"{plan['activations_vision']:.2f} GB; total ~{plan['total_gb']:.2f} GB; "
            f"fits: {', '.join(ok) or 'none listed'}")


def plan_for_backend(backend, *, frames: int, max_new_tokens: int) -> tuple[str, str]:
    """(log level, line) for a loaded backend: the estimate for its model and weight format, and
    a warning when it exceeds the free memory of its CUDA device (or when it cannot be made)."""
    try:
        return _plan_for_backend(backend, frames, max_new_tokens)
    except (KeyError, TypeError, ValueError, OSError) as exc:
        return "warning", f"memory plan unavailable for this model ({type(exc).__name__}: {exc})"


def _plan_for_backend(backend, frames: int, max_new_tokens: int) -> tuple[str, str]:
    if backend.name == "openai":
        return "info", f"memory plan: the model runs on the server {backend.endpoint}"
    folder = getattr(backend, "folder", None)
    if folder is not None:   # engine backends: the exported config and export settings
        config = json.loads((Path(folder) / "config.json").read_text())
        settings = json.loads((Path(folder) / "manifest.json").read_text())["export"]["settings"]
        weights = settings.get("quantize") or settings["precision"]
        dense = DENSE_BYTES[settings["precision"]]
    else:
        config = backend.model.config.to_dict()
        weights = {"torch.float32": "fp32", "torch.float16": "fp16"}.get(str(backend.dtype), "bf16")
        dense = DENSE_BYTES[weights]
    plan = describe(getattr(backend, "model_id", "model"), config, weights, Window(frames, max_new_tokens),
                    dense=dense)
    line = plan_line(plan)
    device = "cuda" if backend.name == "tensorrt" else str(getattr(getattr(backend, "runner", backend), "device", ""))
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        if plan["total_gb"] * GB > free:
            return "warning", line + f"; MORE than the {free / GB:.2f} GB free on {device}: expect out-of-memory"
    return "info", line


def folder_estimate(folder: str | Path, runtime: str = "onnxruntime") -> dict[str, float]:
    """Bytes an engine folder's backend holds once loaded and warmed up: the weights in the
    folder's format (LM once: one graph/engine serves prefill and decode), the KV cache the
    runners preallocate (`max_prompt + max_new_tokens` slots) and the runtime's own fixed cost
    (RUNTIME_BYTES); `at_load` is their sum. `molmo2-engines plan --measure` holds it against
    the memory a real load takes (docs/engines.md: plan vs measured)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    settings = json.loads((folder / "manifest.json").read_text())["export"]["settings"]
    dense = DENSE_BYTES[settings["precision"]]
    weights = settings.get("quantize") or settings["precision"]
    parts = {"weights_lm": lm_weight_bytes(config, weights, dense, settings.get("block_size")),
             "weights_vision": parameter_counts(config)["vision"] * dense,
             "kv_cache": kv_cache_bytes(config, settings["max_prompt"] + settings["max_new_tokens"], dense),
             "runtime": RUNTIME_BYTES[runtime]}
    return {**parts, "at_load": sum(parts.values())}
