"""Export a Molmo2 checkpoint to two ONNX graphs in one self-contained folder; every weight
exists once (on disk and, loaded, in memory).

- `vision.onnx`: ViT + attention-pooling adapter. pixel_values [crops, patches, patch_dim]
  (crops = image crops or video frames) and pooling [tokens, pool] (int64, -1 = padding)
  -> features [tokens, text_hidden]. Every token row is returned; the host drops the
  all-padding rows (`valid_tokens`) instead of a data-dependent NonZero/GatherND in the graph.
- `lm.onnx`: the language model for both phases (LanguageModelGraph): new tokens + image
  features + the KV cache in, last-position logits + the new tokens' KV out, sequence length
  and cache capacity dynamic. Prefill runs the prompt over an empty one-slot cache, decode one
  token over the runner's preallocated cache. Two graphs (prefill, decode) would each carry
  a copy of the weights, which an edge device holding them twice cannot afford.

The processor/tokenizer files, config.json and a manifest (molmo2_ros.backends.engine_folder) are written
beside the graphs. All graphs are traced with batch 2 so batch stays dynamic.
"""
from __future__ import annotations

import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from molmo2_ros.backends import engine_folder
from molmo2_ros.backends.engine_folder import GRAPH_FILES, LM_FILE, VISION_FILE
from molmo2_ros.backends.trained_window import WINDOW_FILE

OPSET = 17
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LM_TOKEN_INPUTS = ("input_ids", "attention_mask", "position_ids", "mm_token_type_ids")


@dataclass
class ExportSettings:
    """Shapes the graphs are meant for; TensorRT profiles are sized from these."""

    precision: str = "fp32"
    max_frames: int = 16          # video frames (each frame is one crop)
    max_crops: int = 9            # image crops (1 low-res + up to 8 high-res)
    max_prompt: int = 4096        # prompt tokens, vision tokens included
    max_new_tokens: int = 512
    max_batch: int = 1
    opset: int = OPSET
    quantize: str | None = None   # weight-only "int8" / "int4" LM graphs, converted to opset 21 (engines.quantize)
    block_size: int | None = None   # quantization block; None: engines.quantize.DEFAULT_BLOCK_SIZE

    def __post_init__(self):
        from molmo2_ros.engines.quantize import SCHEMES

        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.quantize not in (None, *SCHEMES):
            raise ValueError(f"quantize must be one of {', '.join(SCHEMES)}, got {self.quantize!r}")
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        for name in ("max_frames", "max_crops", "max_prompt", "max_new_tokens", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def kv_names(num_layers: int, prefix: str) -> list[str]:
    """`past.0.key`, `past.0.value`, ... for prefix "past" (likewise "present", "new")."""
    return [f"{prefix}.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def _min_value(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).min


class VisionGraph(nn.Module):
    """transformers' `get_image_features` without the final `pooled[valid_token_mask]`."""

    def __init__(self, model):
        super().__init__()
        self.vit = model.model.vision_tower
        self.adapter = model.model.multi_modal_projector
        num_layers = len(self.vit.layers)
        # hidden_states[0] is the patch embedding, hidden_states[k + 1] the output of layer k
        self.feature_states = [layer + 1 if layer >= 0 else num_layers + 1 + layer
                               for layer in model.config.adapter_config.vision_feature_layer]

    def forward(self, pixel_values: torch.Tensor, pooling: torch.Tensor) -> torch.Tensor:
        dtype = self.vit.patch_embedding.weight.dtype
        hidden = self.vit.patch_embedding(pixel_values.to(dtype)) + self.vit.positional_embedding[None].to(dtype)
        states = [hidden]
        for layer in self.vit.layers[: max(self.feature_states)]:
            hidden = layer(hidden, None)
            states.append(hidden)
        features = torch.cat([states[i] for i in self.feature_states], dim=-1)
        flat = features.reshape(-1, features.shape[-1])

        valid = pooling >= 0
        patches = flat[pooling.clamp(min=0)] * valid.to(dtype)[..., None]
        count = valid.to(dtype).sum(-1)
        count = torch.where(count == 0, torch.ones_like(count), count)
        query = patches.sum(-2, keepdim=True) / count[:, None, None]
        mask = torch.where(valid, 0.0, _min_value(dtype)).to(dtype)[:, None, None, :]
        pooled, _ = self.adapter.image_pooling_2d(query, patches, attention_mask=mask)
        return self.adapter.image_projector(pooled.squeeze(1))


CACHED_ATTENTION = "molmo2_cached_attention"


def cached_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Attention of `seq` new tokens over a KV buffer plus themselves, without copying the buffer.

    `module.static_kv` holds the layer's buffer [batch, kv_heads, capacity, head_dim] (graph
    inputs); `key`/`value` are the new tokens' [batch, kv_heads, seq, head_dim]. The scores over
    the buffer and over the new keys share one fp32 softmax (eager attention over
    concat(past, new) computes the same), masked by `attention_mask` [batch, 1, seq, capacity +
    seq]. Grouped heads are matched by reshaping the query, never by repeating (copying) the
    cache. Prefill passes a one-slot masked buffer; decode passes the whole preallocated cache
    and one token, so a decode step costs the same at any fill."""
    past_key, past_value = module.static_kv
    batch, heads, seq, head_dim = query.shape
    kv_heads = past_key.shape[1]
    q = query.reshape(batch, kv_heads, heads // kv_heads, seq, head_dim)
    past_scores = torch.matmul(q, past_key[:, :, None].transpose(3, 4))
    new_scores = torch.matmul(q, key[:, :, None].transpose(3, 4))
    scores = torch.cat([past_scores, new_scores], dim=-1) * scaling + attention_mask[:, :, None]
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    capacity = past_key.shape[2]
    out = (torch.matmul(weights[..., :capacity], past_value[:, :, None])
           + torch.matmul(weights[..., capacity:], value[:, :, None]))
    return out.reshape(batch, heads, seq, head_dim).transpose(1, 2), None


class _NewKV:
    """The cache object the decoder layers update: it keeps each layer's new keys/values
    (the graph's outputs) and hands them on unchanged to `cached_attention`."""

    def __init__(self, num_layers: int):
        self.new = [None] * num_layers

    def update(self, key, value, layer_idx, *args, **kwargs):
        self.new[layer_idx] = (key, value)
        return key, value


class LanguageModelGraph(nn.Module):
    """The one language-model graph, serving prefill and decode (every LM weight once).

    In: `input_ids`, `attention_mask`, `position_ids`, `mm_token_type_ids` [batch, seq] (the new
    tokens), `image_features` [vision_tokens, hidden], `past_mask` [batch, capacity] (1 = a filled
    cache slot) and `past.*` [batch, kv_heads, capacity, head_dim]. Out: last-position `logits`
    and the new tokens' `new.*` key/value [batch, kv_heads, seq, head_dim], which the runner
    writes into its cache. The ids are embedded in the graph and the image features *added* to
    the `<im_patch>` embeddings in order (as transformers' `masked_scatter` of embed + feature
    does). The new tokens attend to the filled slots and among themselves with the prefix-LM
    mask: causal OR (both tokens vision), keys restricted to `attention_mask`.

    Prefill: the prompt, a one-slot empty cache (past_mask 0). Decode: one token, the
    preallocated cache; nothing is sized by the number of filled slots."""

    def __init__(self, model):
        super().__init__()
        self.embed = model.model.language_model.embed_tokens
        self.lm = model.model.language_model
        self.lm_head = model.lm_head
        self.num_layers = len(self.lm.layers)
        self.image_patch_id = model.config.image_patch_id

    def forward(self, input_ids, image_features, attention_mask, position_ids, mm_token_type_ids, past_mask, *past):
        from transformers import AttentionInterface

        AttentionInterface.register(CACHED_ATTENTION, cached_attention)
        lm = self.lm
        hidden = self.embed(input_ids)
        batch, seq, width = hidden.shape
        dtype = hidden.dtype
        # features go to the <im_patch> tokens in row-major order, added to their embedding
        is_patch = (input_ids == self.image_patch_id).reshape(-1)
        order = (torch.cumsum(is_patch.to(torch.int64), 0) - 1).clamp(min=0)
        added = image_features.to(dtype)[order] * is_patch.to(dtype)[:, None]
        hidden = hidden + added.reshape(batch, seq, width)

        positions = torch.arange(seq, device=input_ids.device)
        causal = positions[None, :] <= positions[:, None]
        vision = mm_token_type_ids == 1
        allowed = (causal[None] | (vision[:, :, None] & vision[:, None, :])) & attention_mask.bool()[:, None, :]
        # every query keeps itself, so padded rows stay finite (real tokens never see them)
        allowed = allowed | (positions[None, :] == positions[:, None])[None]
        filled = past_mask.bool()[:, None, :].expand(batch, seq, past_mask.shape[1])
        mask = torch.where(torch.cat([filled, allowed], dim=-1), 0.0, _min_value(dtype)).to(dtype)[:, None]

        rotary = {"scaled": lm.rotary_emb(hidden, position_ids=position_ids),
                  "unscaled": lm.rotary_emb_unscaled(hidden, position_ids=position_ids)}
        cache = _NewKV(self.num_layers)
        config = lm.config
        previous = config._attn_implementation
        config._attn_implementation = CACHED_ATTENTION
        try:
            for i, layer in enumerate(lm.layers):
                layer.self_attn.static_kv = (past[2 * i], past[2 * i + 1])
                hidden = layer(hidden, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                               use_cache=True, position_embeddings=rotary[lm.rope_types[i]])
        finally:
            config._attn_implementation = previous
            for layer in lm.layers:
                layer.self_attn.static_kv = None
        logits = self.lm_head(lm.norm(hidden)[:, -1, :]).float()
        return (logits, *[t for pair in cache.new for t in pair])


def load_for_export(model_dir: str | Path, precision: str = "fp32", device: str = "cpu"):
    """The checkpoint with eager attention (explicit masks trace cleanly into ONNX)."""
    from transformers import Molmo2ForConditionalGeneration

    model = Molmo2ForConditionalGeneration.from_pretrained(
        str(model_dir), dtype=PRECISIONS[precision], attn_implementation="eager")
    return model.to(device).eval()


def _export(module, args, path: Path, input_names, output_names, dynamic_axes, opset):
    """TorchScript-based torch.onnx export (several times faster than the dynamo exporter on
    these graphs). The weights go to one `<name>.data` file beside the graph."""
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False,
                          do_constant_folding=True)
    _gather_external_data(path)


def _gather_external_data(path: Path) -> None:
    """Put the graph's weights in one `<name>.data` file beside it. Reading the graph (the
    manifest check, TensorRT's parser) then never reads the weights, and a check that loaded an
    inline graph would leave its weights' worth of freed memory in the process (measured: the
    ONNX Runtime backend's resident memory doubled). Graphs under 2 GB come out of the exporter
    inline and are rewritten; over 2 GB it writes one file per weight, which are streamed into
    the one file (no weights held in memory) so the folder stays tidy and the manifest can hash it."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    target = path.name + ".data"
    external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    sources = {entry.value for t in external for entry in t.external_data if entry.key == "location"}
    if not sources:
        save_with_external_data(proto, path)
        return
    if sources == {target}:
        return
    tmp = path.parent / (target + ".tmp")
    offset = 0
    with open(tmp, "wb") as out:
        for tensor in external:
            info = {entry.key: entry.value for entry in tensor.external_data}
            with open(path.parent / info["location"], "rb") as src:
                src.seek(int(info.get("offset", 0)))
                data = src.read(int(info["length"])) if "length" in info else src.read()
            out.write(data)
            del tensor.external_data[:]
            for key, value in (("location", target), ("offset", str(offset)), ("length", str(len(data)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            offset += len(data)
    tmp.replace(path.parent / target)
    onnx.save_model(proto, str(path))
    for name in sources - {target}:
        (path.parent / name).unlink(missing_ok=True)


def save_with_external_data(proto, path: Path) -> None:
    """Save `proto` (weights loaded) at `path` with every weight in one `<name>.data` beside it,
    replacing an old one."""
    import onnx

    data = path.parent / (path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)


def export_vision(model, path: Path, opset: int = OPSET) -> None:
    cfg = model.config.vision_config
    patches = cfg.num_position_embeddings
    patch_dim = cfg.patch_size * cfg.patch_size * cfg.num_channels
    device = model.device
    pixel_values = torch.randn(3, patches, patch_dim, device=device)
    pooling = torch.randint(0, 3 * patches, (6, 4), device=device)
    pooling[0, 1:] = -1
    pooling[5, :] = -1
    _export(VisionGraph(model), (pixel_values, pooling), path, ["pixel_values", "pooling"], ["features"],
            {"pixel_values": {0: "crops"}, "pooling": {0: "tokens", 1: "pool"}, "features": {0: "tokens"}}, opset)


def _text_dims(model):
    cfg = model.config.text_config
    return cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size


def export_language_model(model, path: Path, opset: int = OPSET) -> None:
    """Trace LanguageModelGraph with batch 2, a 12-token prompt holding vision tokens and a
    9-slot cache 5 slots full, so batch, seq and capacity all stay dynamic."""
    num_layers, kv_heads, head_dim, hidden = _text_dims(model)
    device, dtype = model.device, model.dtype
    seq, capacity = 12, 9
    input_ids = torch.randint(0, 100, (2, seq), device=device)
    mm = torch.zeros(2, seq, dtype=torch.int64, device=device)
    input_ids[:, 3:7] = model.config.image_patch_id
    mm[:, 3:7] = 1
    attention_mask = torch.ones(2, seq, dtype=torch.int64, device=device)
    attention_mask[1, :2] = 0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0) + 5
    features = torch.randn(8, hidden, device=device, dtype=dtype)
    past_mask = torch.zeros(2, capacity, dtype=torch.int64, device=device)
    past_mask[:, :5] = 1
    past = [torch.randn(2, kv_heads, capacity, head_dim, device=device, dtype=dtype) for _ in range(2 * num_layers)]
    past_names, new = kv_names(num_layers, "past"), kv_names(num_layers, "new")
    axes = {name: {0: "batch", 1: "seq"} for name in LM_TOKEN_INPUTS}
    axes.update({"image_features": {0: "vision_tokens"}, "past_mask": {0: "batch", 1: "capacity"},
                 "logits": {0: "batch"}})
    axes.update({name: {0: "batch", 2: "capacity"} for name in past_names})
    axes.update({name: {0: "batch", 2: "seq"} for name in new})
    _export(LanguageModelGraph(model), (input_ids, features, attention_mask, position_ids, mm, past_mask, *past), path,
            ["input_ids", "image_features", "attention_mask", "position_ids", "mm_token_type_ids", "past_mask",
             *past_names], ["logits", *new], axes, opset)


def export_model(model, processor, out_dir: str | Path, settings: ExportSettings, *, source: str,
                 source_hash: str, progress=print) -> Path:
    """Export an in-memory model (eager attention, dtype = settings.precision) to `out_dir`."""

    from molmo2_ros.engines.quantize import quantize_graph

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings, quantization = {}, {}
    for name, fn in ((VISION_FILE, export_vision), (LM_FILE, export_language_model)):
        progress(f"exporting {name} ...")
        start = time.perf_counter()
        fn(model, out / name, settings.opset)
        if settings.quantize and name != VISION_FILE:
            quantization[name] = quantize_graph(out / name, settings.quantize, settings.block_size)
            progress(f"quantized {name}: {quantization[name]}")
        timings[name] = round(time.perf_counter() - start, 3)
        progress(f"exported {name} in {timings[name]:.1f} s")
    processor.save_pretrained(str(out))
    model.config.save_pretrained(str(out))
    write_export_manifest(out, settings=asdict(settings), source=source, source_hash=source_hash,
                          export_seconds=timings, quantization=quantization)
    return out


def export_checkpoint(model_dir: str | Path, out_dir: str | Path, settings: ExportSettings, *,
                      device: str = "cpu", progress=print) -> Path:
    """Load a local checkpoint folder and export it (see module docstring)."""
    from transformers import AutoProcessor

    from molmo2_ros.backends.default_model import HUB_MODEL

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a checkpoint folder (no config.json); "
                                f"download the model first (e.g. `hf download {HUB_MODEL} --local-dir DIR`)")
    progress(f"hashing checkpoint {model_dir} ...")
    source_hash = engine_folder.checkpoint_hash(model_dir)
    model = load_for_export(model_dir, settings.precision, device)
    processor = AutoProcessor.from_pretrained(str(model_dir))
    out = export_model(model, processor, out_dir, settings, source=str(model_dir.resolve()), source_hash=source_hash,
                       progress=progress)
    for extra in ("chat_template.jinja", "generation_config.json", WINDOW_FILE):
        if (model_dir / extra).is_file() and not (out / extra).exists():
            shutil.copy2(model_dir / extra, out / extra)
    return out


def write_export_manifest(folder: Path, *, settings: dict, source: str, source_hash: str,
                          export_seconds: dict, quantization: dict) -> dict:
    import onnx
    import transformers

    data = {
        "schema": engine_folder.SCHEMA,
        "export": {
            "created": engine_folder.now(),
            "files": engine_folder.describe_files(folder, list(GRAPH_FILES)),
            "layout": engine_folder.LAYOUT,
            "settings": settings,
            "source": source,
            "source_hash": source_hash,
            "export_seconds": export_seconds,
            "quantization": quantization,
            "versions": {"project": engine_folder.project_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__, "onnx": onnx.__version__,
                         "python": platform.python_version()},
        },
    }
    engine_folder.write(folder, data)
    return data
