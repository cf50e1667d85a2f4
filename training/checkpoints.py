"""The checkpoints of a training run: `checkpoint-N/` folders, each a plain Hugging Face
checkpoint (LoRA merged) that the CLI, the node and `molmo2-engines export` load as it
is, plus `trainer_state.pt` (step, optimizer, scheduler, trainable parameters) that a
run started again resumes from.
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch
from torch import nn

from molmo2_ros.backends.trained_window import TrainedWindow, write_trained_window
from molmo2_ros.training.config import TrainConfig

STATE_FILE = "trainer_state.pt"


def checkpoints(out: Path) -> list[Path]:
    found = [p for p in out.glob("checkpoint-*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_hf(model, processor, folder: Path, lora: bool, window: TrainedWindow | None) -> None:
    """A plain HF checkpoint: LoRA merged into a copy, so training can go on; with the
    frame window the model was trained for, when known."""
    folder.mkdir(parents=True, exist_ok=True)
    plain = copy.deepcopy(model).merge_and_unload() if lora else model
    plain.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    if window is not None:
        write_trained_window(folder, window)


def save_checkpoint(step_module: nn.Module, processor, optimizer, scheduler, step: int,
                    config: TrainConfig, protect: str | None = None, window: TrainedWindow | None = None) -> Path:
    """checkpoint-N/ of `step_module` (the trainer's TrainStep: its model and trainable
    parameters), written aside, then renamed; older ones beyond keep_checkpoints are
    removed, except `protect` (the best one so far)."""
    folder = config.out / f"checkpoint-{step}"
    tmp = config.out / f"checkpoint-{step}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    save_hf(step_module.model, processor, tmp, config.lora is not None, window)
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "trainable": {n: p.detach().cpu() for n, p in step_module.named_parameters() if p.requires_grad}}
    torch.save(state, tmp / STATE_FILE)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    for old in checkpoints(config.out)[:-config.keep_checkpoints]:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def resume(out: Path, step_module: nn.Module, optimizer, scheduler, log) -> int:
    """The step to go on from: the newest checkpoint's, its trainable parameters, optimizer
    and scheduler state loaded; 0 when the run has none."""
    found = checkpoints(out)
    if not found:
        return 0
    state = torch.load(found[-1] / STATE_FILE, map_location="cpu", weights_only=False)
    params = dict(step_module.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    log(f"resumed from {found[-1]} at step {state['step']}")
    return state["step"]
