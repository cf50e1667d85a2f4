"""Training configuration: a YAML or JSON file -> TrainConfig (unknown keys are errors)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Freeze:
    vision: bool = False       # ViT
    adapter: bool = False      # pooling + projector (the connector)
    llm: bool = False          # language model layers, final norm, lm_head
    embeddings: bool = False   # base input-embedding rows (Molmo2's extra tokens still train, as upstream)


@dataclass
class Lora:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    # Regex over module names; default: every linear layer of the language model.
    target_modules: str = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


@dataclass
class TinyInit:
    """Build the starting model from scratch (molmo2_ros.tiny_model) instead of loading one."""

    seed: int = 0
    sizes: dict = field(default_factory=dict)          # build_tiny_molmo2 size overrides
    tokenizer_texts: list | None = None
    vision_init_scale: float = 1.0                      # ViT/adapter weights ~ N(0, scale^2 / fan_in)


@dataclass
class Data:
    manifest: str | None = None                         # JSONL manifest (molmo2_ros.training.dataset)
    shapes: dict | None = None                          # {mix, seed, frames, aid}: training.shapes_tasks


@dataclass
class Validation:
    """Held-out examples each saved checkpoint is evaluated on (molmo2_ros.training.validation).

    One of: `fraction` of a manifest's lines (whole groups of lines that share frames; no
    frame on both sides), the lines of the listed `recordings`, or `shapes` ({kind: n}
    held-out shapes-world examples)."""

    fraction: float | None = None
    recordings: list | None = None
    shapes: dict | None = None
    max_new_tokens: int = 128
    at_start: bool = True            # also evaluate the starting model (step 0)


@dataclass
class TrainConfig:
    output_dir: str
    model: str | None = None                            # HF checkpoint folder or hub id
    tiny_init: TinyInit | None = None
    # Processor settings saved with the checkpoints, e.g. {"video_pooling_size": [2, 2]}.
    processor: dict = field(default_factory=dict)
    data: Data = field(default_factory=Data)
    validation: Validation | None = None
    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-5                                    # language model (+ lm_head, embeddings)
    lr_vision: float = 5e-6
    lr_adapter: float = 5e-6
    warmup: int = 200
    min_lr_ratio: float = 0.1                           # cosine decay to this fraction
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.95)
    eps: float = 1e-6
    grad_clip: float = 1.0
    z_loss: float = 1e-4
    dtype: str = "fp32"                                 # "fp32" | "bf16" (autocast)
    weights_dtype: str = "fp32"                         # "bf16": the frozen base of a LoRA run in bf16
    gradient_checkpointing: bool = False
    freeze: Freeze = field(default_factory=Freeze)
    lora: Lora | None = None
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    threads: int = 0                                    # torch CPU threads (0 = torch default)
    seed: int = 0

    @property
    def out(self) -> Path:
        return Path(self.output_dir)


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(fields)}")
    nested = {"freeze": Freeze, "lora": Lora, "tiny_init": TinyInit, "data": Data, "validation": Validation}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key in nested and value is not None:
            value = _build(nested[key], value, f"{where}.{key}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def load_config(path) -> TrainConfig:
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text)
    else:
        values = json.loads(text)
    config = _build(TrainConfig, values, str(path))
    resolve_paths(config, path.parent)
    return validate(config, str(path))


def resolve_paths(c: TrainConfig, base: Path) -> None:
    """Relative paths in a config file are relative to that file's folder; `model` only
    when such a folder exists (otherwise it may be a hub id like allenai/Molmo2-4B)."""
    def here(p):
        return p if p is None or Path(p).is_absolute() else str(base / p)

    c.output_dir = here(c.output_dir)
    c.data.manifest = here(c.data.manifest)
    if c.model is not None and (base / c.model).exists():
        c.model = here(c.model)
    if c.validation is not None and c.validation.recordings:
        c.validation.recordings = [here(p) for p in c.validation.recordings]


def validate(c: TrainConfig, where: str = "config") -> TrainConfig:
    if (c.model is None) == (c.tiny_init is None):
        raise ValueError(f"{where}: give exactly one of 'model' (a checkpoint) or 'tiny_init' (from scratch)")
    if (c.data.manifest is None) == (c.data.shapes is None):
        raise ValueError(f"{where}: data needs exactly one of 'manifest' or 'shapes'")
    if c.dtype not in ("fp32", "bf16"):
        raise ValueError(f"{where}: dtype must be 'fp32' or 'bf16', got {c.dtype!r}")
    if c.weights_dtype not in ("fp32", "bf16"):
        raise ValueError(f"{where}: weights_dtype must be 'fp32' or 'bf16', got {c.weights_dtype!r}")
    if c.weights_dtype == "bf16" and c.lora is None:
        raise ValueError(f"{where}: weights_dtype bf16 is for LoRA (a frozen base); full fine-tuning keeps "
                         "fp32 weights for AdamW")
    for name in ("steps", "batch_size", "grad_accum", "save_every", "log_every"):
        if getattr(c, name) < 1:
            raise ValueError(f"{where}: {name} must be >= 1")
    v = c.validation
    if v is not None:
        chosen = [k for k in ("fraction", "recordings", "shapes") if getattr(v, k)]
        if len(chosen) != 1:
            raise ValueError(f"{where}: validation needs exactly one of 'fraction', 'recordings' or 'shapes'")
        if v.fraction is not None and not 0 < v.fraction < 1:
            raise ValueError(f"{where}: validation.fraction must be between 0 and 1, got {v.fraction}")
        if (v.fraction or v.recordings) and c.data.manifest is None:
            raise ValueError(f"{where}: validation by fraction or recordings needs data.manifest")
    if c.lora is not None and c.freeze.llm:
        raise ValueError(f"{where}: LoRA adapts the language model; do not also freeze it")
    return c
