"""The trainer behind `molmo2-train --config FILE`.

Full fine-tuning or LoRA (peft) of a Molmo2 checkpoint, or of a tiny Molmo2 built from
scratch; freeze switches; fp32 or bf16 autocast; gradient checkpointing; gradient
accumulation; AdamW with per-part learning rates, warmup and cosine decay (upstream's
recipe). Multi-GPU goes through `accelerate` (run under `accelerate launch` or
`torchrun`). Every checkpoint is a plain Hugging Face folder (LoRA merged) that the CLI,
the node and `molmo2-engines export` load as they are, plus `trainer_state.pt` to
resume from; a run started again with the same config resumes from its newest
checkpoint (training.checkpoints). What each step trains on: training.batch_source.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from molmo2_ros.backends.trained_window import TrainedWindow, read_trained_window
from molmo2_ros.training.batch_source import BatchSource
from molmo2_ros.training.batching import Encoded, collate, encode
from molmo2_ros.training.checkpoints import resume, save_checkpoint, save_hf
from molmo2_ros.training.config import TrainConfig
from molmo2_ros.training.run_log import METRICS_FILE, MetricsLog, Progress

if TYPE_CHECKING:
    from accelerate import Accelerator

    from molmo2_ros.training.validation import Validator

FINAL_DIR = "final"


# ---------------------------------------------------------------------------- model
def build_start_model(config: TrainConfig) -> str:
    """The folder of the model training starts from (built once for tiny_init)."""
    if config.model is not None:
        return config.model
    from molmo2_ros.tiny_model import build_tiny_molmo2
    from transformers import AutoModelForImageTextToText

    init_dir = config.out / "init"
    if not (init_dir / "config.json").is_file():
        t = config.tiny_init
        tmp = config.out / "init.partial"
        build_tiny_molmo2(tmp, seed=t.seed, tokenizer_texts=t.tokenizer_texts, **t.sizes)
        if t.vision_init_scale:
            model = AutoModelForImageTextToText.from_pretrained(tmp)
            _rescale_vision_init(model, t.vision_init_scale, t.seed)
            model.save_pretrained(tmp)
        tmp.rename(init_dir)
    return str(init_dir)


def _rescale_vision_init(model, scale: float, seed: int) -> None:
    """N(0, scale^2/fan_in) for ViT and adapter linear layers: with the default
    N(0, 0.02^2) a tiny model's image features start ~1e-7 and never matter."""
    g = torch.Generator().manual_seed(seed + 1)
    parts = [model.model.vision_tower, model.model.multi_modal_projector]
    with torch.no_grad():
        for part in parts:
            for module in part.modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, scale / math.sqrt(module.in_features), generator=g)
        pos = model.model.vision_tower.positional_embedding
        pos.normal_(0.0, 0.5 * scale, generator=g)


def apply_processor_settings(processor, settings: dict) -> None:
    known = {"video_pooling_size": (processor.video_processor, "pooling_size"),
             "image_pooling_size": (processor.image_processor, "pooling_size"),
             "max_crops": (processor.image_processor, "max_crops"),
             "overlap_margins": (processor.image_processor, "overlap_margins")}
    for key, value in settings.items():
        if key not in known:
            raise ValueError(f"processor: unknown setting {key!r}; known: {sorted(known)}")
        target, attr = known[key]
        setattr(target, attr, value)


def parameter_groups(model, config: TrainConfig) -> list[dict]:
    """Trainable parameters grouped by part with their learning rates; applies freezes."""
    f = config.freeze
    groups = {"vision": [], "adapter": [], "llm": []}
    for name, p in model.named_parameters():
        if "vision_tower" in name:
            part, frozen = "vision", f.vision
        elif "multi_modal_projector" in name:
            part, frozen = "adapter", f.adapter
        else:
            part, frozen = "llm", f.llm
        if config.lora is not None:
            frozen = "lora_" not in name
        if frozen:
            p.requires_grad_(False)
        if p.requires_grad:
            groups[part].append(p)
    lrs = {"vision": config.lr_vision, "adapter": config.lr_adapter, "llm": config.lr}
    return [{"params": ps, "lr": lrs[k], "name": k} for k, ps in groups.items() if ps]


def _freeze_base_embeddings(model) -> None:
    """Zero the gradient of the base vocabulary rows; Molmo2's extra tokens keep training."""
    emb = model.get_input_embeddings().weight
    base = model.config.text_config.vocab_size
    if emb.requires_grad:
        def hook(grad):
            grad = grad.clone()
            grad[:base] = 0
            return grad
        emb.register_hook(hook)


class TrainStep(nn.Module):
    """Model + optional training aid; forward returns (loss, parts) for one micro-batch."""

    def __init__(self, model, config: TrainConfig, aid=None):
        super().__init__()
        self.model = model
        self.aid = aid
        self.z_loss = config.z_loss

    def forward(self, batch: dict, encoded: list[Encoded]):
        labels = batch.pop("labels")
        weights = batch.pop("weights")
        attentions = self.aid is not None and self.aid.needs_attentions
        out = self.model(**batch, use_cache=False, output_attentions=attentions)
        logits = out.logits[:, :-1].float()
        target = labels[:, 1:]
        w = weights[:, 1:].to(logits.device)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1).clamp(min=0),
                             reduction="none").view_as(target)
        norm = w.sum().clamp(min=1e-8)
        lm = (ce * w).sum() / norm
        loss = lm
        parts = {"lm": lm.detach()}
        if self.z_loss:
            z = torch.logsumexp(logits, dim=-1).pow(2)
            loss = loss + self.z_loss * (z * w).sum() / norm
        if self.aid is not None:
            for name, term in self.aid.losses(out, encoded, batch).items():
                loss = loss + term
                parts[name] = term.detach()
        return loss, parts


# ----------------------------------------------------------------------------- loop
def lr_factor(step: int, config: TrainConfig) -> float:
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine


class TrainingInterrupted(Exception):
    """Ctrl-C during training: a checkpoint was saved (the message names it)."""


def _print(message: str) -> None:
    print(message, flush=True)


def train(config: TrainConfig, log=_print) -> Path:
    """Run (or resume) training; returns the final checkpoint folder."""
    run = _setup(config, log)
    try:
        with _StopAtStepBoundary() as stop:
            _loop(run, stop)
    except KeyboardInterrupt:   # Ctrl-C: keep what was learned, say how to go on
        run.progress.close()
        if not run.main:
            raise
        raise _interrupted(run) from None
    return _finish(run, log)


@dataclass
class _Run:
    """What the loop works with, built once by `_setup`: the model as the optimizer steps it
    (`step_module`, wrapped for DDP) and as checkpoints save it (`inner`), the data, the
    optimizer and schedule, the logs and the step to start from."""

    config: TrainConfig
    accelerator: Accelerator
    autocast: torch.autocast
    processor: Any
    source: BatchSource
    step_module: nn.Module
    inner: TrainStep
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    trainable: list[nn.Parameter]
    progress: Progress
    validator: Validator | None
    start_step: int
    window: TrainedWindow | None

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def save_checkpoint(self, step: int) -> Path:
        return save_checkpoint(self.inner, self.processor, self.optimizer, self.scheduler, step, self.config,
                               self.validator and self.validator.best_checkpoint, self.window)


def _setup(config: TrainConfig, log) -> _Run:
    """Start model, data, optimizer and schedule, resumed from the newest checkpoint if any."""
    from molmo2_ros.training.validation import Validator, prepare

    if config.threads:
        torch.set_num_threads(config.threads)
    config.out.mkdir(parents=True, exist_ok=True)
    accelerator = _accelerator()
    torch.manual_seed(config.seed)
    main = accelerator.is_main_process
    if main:
        (config.out / "train_config.json").write_text(json.dumps(asdict(config), indent=2))
    start_dir = build_start_model(config) if main else None
    accelerator.wait_for_everyone()
    start_dir = start_dir or (config.model or str(config.out / "init"))
    # Data first: a bad manifest stops here, every bad line listed, before the model loads.
    train_examples, val_examples = prepare(config, log if main else (lambda m: None))
    metrics = MetricsLog(config.out / METRICS_FILE, enabled=main)

    processor, model = _load_model(config, start_dir)
    groups = parameter_groups(model, config)
    if config.freeze.embeddings:
        _freeze_base_embeddings(model)
    source = BatchSource(config, accelerator.process_index, accelerator.num_processes, train_examples)
    aid = source.training_aid(model, processor)
    if aid is not None:
        groups.append({"params": list(aid.parameters()), "lr": config.lr, "name": "aid"})
        if aid.needs_attentions:
            model.set_attn_implementation("eager")   # attention probabilities are needed
    step_module = TrainStep(model, config, aid)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))

    start_step = resume(config.out, step_module, optimizer, scheduler, log)
    validator = (Validator(config, val_examples, metrics, accelerator.device.type, log)
                 if main and val_examples else None)
    if validator is not None and start_step == 0 and config.validation.at_start:
        validator.evaluate(Path(start_dir), 0)

    step_module, optimizer = accelerator.prepare(step_module, optimizer)
    step_module.train()
    autocast = torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=config.dtype == "bf16")
    return _Run(config=config, accelerator=accelerator, autocast=autocast, processor=processor, source=source,
                step_module=step_module, inner=accelerator.unwrap_model(step_module), optimizer=optimizer,
                scheduler=scheduler, trainable=[p for g in groups for p in g["params"]],
                progress=Progress(config, start_step, log, metrics, enabled=main), validator=validator,
                start_step=start_step, window=source.trained_window() or read_trained_window(start_dir))


def _accelerator() -> Accelerator:
    """DDP under torchrun/accelerate launch; bf16 autocast is ours. Without GPUs accelerate only
    sets up (gloo) DDP when told to use the CPU; otherwise the ranks would train as independent
    copies writing the same checkpoints."""
    from accelerate import Accelerator

    world = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(cpu=world > 1 and not torch.cuda.is_available())
    if accelerator.num_processes != world:
        raise RuntimeError(f"launched with WORLD_SIZE={world} but accelerate runs "
                           f"{accelerator.num_processes} process(es); check the launcher's settings")
    return accelerator


def _load_model(config: TrainConfig, start_dir: str):
    """The processor (with the config's settings) and the model, LoRA-wrapped if asked."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(start_dir)
    apply_processor_settings(processor, config.processor)
    weights = torch.bfloat16 if config.weights_dtype == "bf16" else torch.float32   # bf16: LoRA's frozen base
    model = AutoModelForImageTextToText.from_pretrained(start_dir, dtype=weights)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if config.lora is not None:
        from peft import LoraConfig, get_peft_model

        lc = config.lora
        model = get_peft_model(model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                 target_modules=lc.target_modules))
    return processor, model


def _interrupted(run: _Run) -> TrainingInterrupted:
    """After Ctrl-C on the main process: the newest step saved (unless it already was)."""
    done = run.progress.step
    if done == 0:
        return TrainingInterrupted("interrupted before the first step; nothing to save")
    folder = run.config.out / f"checkpoint-{done}"
    if not folder.is_dir():
        folder = run.save_checkpoint(done)
    return TrainingInterrupted(f"saved {folder} at step {done}/{run.config.steps}")


def _finish(run: _Run, log) -> Path:
    """The final model as a plain Hugging Face folder (LoRA merged)."""
    run.progress.close()
    final = run.config.out / FINAL_DIR
    if run.main:
        shutil.rmtree(final, ignore_errors=True)
        save_hf(run.inner.model, run.processor, final, run.config.lora is not None, run.window)
        log(f"saved {final}")
    run.accelerator.wait_for_everyone()
    return final


class _StopAtStepBoundary:
    """Ctrl-C (SIGINT) during training stops the loop after the step in flight, as a
    KeyboardInterrupt raised there; a second Ctrl-C interrupts at once. Python's default
    handler raises wherever the main thread is, and inside library code (a finalizer, a lock
    taken and not yet guarded) that exception can be swallowed or leave the process hung."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _on_sigint(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():   # signal handlers live there only
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _loop(run: _Run, stop: _StopAtStepBoundary) -> None:
    """Optimizer steps from the start step to config.steps, saving (and validating) checkpoints."""
    config, accelerator = run.config, run.accelerator
    for step in range(run.start_step, config.steps):
        parts, n_examples, n_tokens = _accumulate(run, step)
        if not all(math.isfinite(v) for v in parts.values()):
            raise FloatingPointError(f"non-finite loss at step {step}: {parts}; lower the learning rate "
                                     "or use dtype fp32")
        if config.grad_clip:
            accelerator.clip_grad_norm_(run.trainable, config.grad_clip)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.progress.update(step + 1, parts, n_examples * accelerator.num_processes,
                            n_tokens * accelerator.num_processes, run.scheduler.get_last_lr()[0])
        done = step + 1
        if run.main and (done % config.save_every == 0 or done == config.steps):
            folder = run.save_checkpoint(done)
            if run.validator is not None:
                run.validator.evaluate(folder, done)
        accelerator.wait_for_everyone()
        stop.check()


def _accumulate(run: _Run, step: int) -> tuple[dict[str, float], int, int]:
    """Gradients of one optimizer step's micro-batches; the loss parts averaged over them, and
    the examples and tokens this process saw."""
    config, accelerator = run.config, run.accelerator
    pad_id = run.processor.tokenizer.pad_token_id
    parts_sum: dict[str, float] = {}
    n_tokens = n_examples = 0
    for micro in range(config.grad_accum):
        examples = run.source.get(step, micro)
        encoded = [encode(run.processor, e) for e in examples]
        batch = collate(encoded, pad_id)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        n_tokens += int(batch["attention_mask"].sum())
        n_examples += len(examples)
        with run.autocast:
            loss, parts = run.step_module(batch, encoded)
        accelerator.backward(loss / config.grad_accum)
        parts["loss"] = loss.detach()
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + float(v) / config.grad_accum
    return parts_sum, n_examples, n_tokens
