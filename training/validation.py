"""Validation: hold examples out of training, evaluate each saved checkpoint on them through
the real inference path (molmo2_ros.training.evaluate), and mark the best checkpoint.

Splits (config `validation`):
- `fraction`: that share of a manifest's lines. Lines that share a frame (the same image,
  or the same recording/video frame) belong together; whole groups are held out, and
  when a group is larger than what is still needed its latest lines are taken and the
  training lines that share frames with them are left out. No frame is on both sides.
- `recordings`: every line of these recordings (MCAP files / rosbag2 folders).
- `shapes`: {kind: n} held-out shapes-world examples (seeds no training batch draws).

The best checkpoint (highest validation F1) is written to `best.json`, linked as `best`
in the run folder, and never removed by `keep_checkpoints`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from molmo2_ros.training.config import TrainConfig
from molmo2_ros.training.examples import Example

BEST_FILE = "best.json"
BEST_LINK = "best"


def prepare(config: TrainConfig, log) -> tuple[list[Example] | None, list[Example]]:
    """(training examples, validation examples). A manifest is loaded and checked in full
    here (ManifestError lists every bad line); shapes-world training data is drawn per
    batch (None)."""
    from molmo2_ros.training.dataset import load_all, read_manifest

    v = config.validation
    heldout = _shapes(v.shapes) if v is not None and v.shapes else []
    if config.data.manifest is None:
        return None, heldout
    path = Path(config.data.manifest)
    examples = load_all(path)
    if not examples:
        raise ValueError(f"{path}: no examples")
    if v is None or v.shapes:
        return examples, heldout
    rows = read_manifest(path)
    keys = [frame_keys(row, example, path.parent) for row, example in zip(rows, examples)]
    if v.recordings:
        wanted = {os.path.realpath(p) for p in v.recordings}
        held = {i for i, row in enumerate(rows)
                if "recording" in row and os.path.realpath(path.parent / row["recording"]) in wanted}
        if not held:
            raise ValueError(f"validation.recordings {v.recordings}: no line of {path} uses them")
        how = f"the lines of {len(wanted)} recording(s)"
    else:
        held = pick_fraction(keys, v.fraction, config.seed)
        how = f"fraction {v.fraction:g}"
    held_frames = set().union(*(keys[i] for i in held))
    train = [i for i in range(len(rows)) if i not in held and not keys[i] & held_frames]
    if not train:
        raise ValueError(f"validation ({how}) leaves no training line of {path}: its lines share frames "
                         "(overlapping windows of one recording); hold out a smaller fraction, or record a "
                         "separate validation recording and use validation.recordings")
    left_out = len(rows) - len(held) - len(train)
    log(f"validation: {len(held)} line(s) held out ({how}), training on {len(train)}"
        + (f"; {left_out} line(s) left out: they share frames with held-out lines" if left_out else ""))
    return [examples[i] for i in train], [examples[i] for i in sorted(held)]


def frame_keys(row: dict, example: Example, base: Path) -> set[tuple]:
    """What makes two lines share a frame: (source, frame stamp) of every frame used."""
    if "shapes" in row:
        return {("shapes", row["shapes"].get("kind"), row["shapes"].get("seed"))}
    kind = next(k for k in ("recording", "video", "image") if k in row)
    source = (os.path.realpath(base / row[kind]), row.get("topic", ""))
    return {(source, f.stamp_ns) for f in example.frames}


def pick_fraction(keys: list[set], fraction: float, seed: int) -> set[int]:
    """Indices of about `fraction` of the lines, taken as whole groups of lines that share
    frames (random groups; the latest lines of a group larger than what is still needed)."""
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict = {}
    for i, ks in enumerate(keys):
        for k in ks:
            if k in owner:
                parent[root(i)] = root(owner[k])
            else:
                owner[k] = i
    groups: dict[int, list[int]] = {}
    for i in range(len(keys)):
        groups.setdefault(root(i), []).append(i)
    target = max(1, round(fraction * len(keys)))
    held: set[int] = set()
    ordered = list(groups.values())
    for g in np.random.default_rng(seed).permutation(len(ordered)):
        need = target - len(held)
        if need <= 0:
            break
        held.update(ordered[g][-need:])
    return held


def _shapes(plan: dict) -> list[Example]:
    from molmo2_ros.training.shapes_tasks import heldout_examples

    return heldout_examples({k: int(n) for k, n in plan.items()})


def overall_f1(report: dict) -> float:
    """Point F1 over every validation example (the groups' per-example means, weighted by n)."""
    pairs = [(g["points"]["n"], g["points"]["f1"]) for g in report["groups"].values() if g["points"]["n"]]
    total = sum(n for n, _ in pairs)
    return sum(n * f for n, f in pairs) / total if total else 0.0


class Validator:
    """Evaluates checkpoints on the held-out examples; logs to the run's metrics log."""

    def __init__(self, config: TrainConfig, examples: list[Example], metrics, device: str, log):
        self.config, self.examples, self.metrics, self.device, self.log = config, examples, metrics, device, log
        best = config.out / BEST_FILE
        self.best = json.loads(best.read_text()) if best.is_file() else None

    @property
    def best_checkpoint(self) -> str | None:
        return self.best["checkpoint"] if self.best else None

    def evaluate(self, model_dir: Path, step: int) -> float:
        from molmo2_ros.backends.factory import make_backend
        from molmo2_ros.training.evaluate import evaluate

        backend = make_backend("torch", str(model_dir), device=self.device)
        try:
            report = evaluate(backend, self.examples, max_new_tokens=self.config.validation.max_new_tokens)
        finally:
            backend.close()
        f1 = overall_f1(report)
        name = Path(model_dir).name
        self.metrics.write({"step": step, "val_f1": f1, "checkpoint": name, "val_n": len(self.examples),
                            "val_groups": {k: g["points"]["f1"] for k, g in report["groups"].items()}})
        better = name.startswith("checkpoint-") and (self.best is None or f1 > self.best["val_f1"])
        if better:
            self._mark_best({"checkpoint": name, "step": step, "val_f1": f1})
        self.log(f"validation at step {step}: f1 {f1:.4f} on {len(self.examples)} examples ({name})"
                 + (" - best so far" if better else ""))
        return f1

    def _mark_best(self, best: dict) -> None:
        self.best = best
        out = self.config.out
        (out / BEST_FILE).write_text(json.dumps(best, indent=2) + "\n")
        link = out / BEST_LINK
        tmp = out / (BEST_LINK + ".partial")
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(best["checkpoint"])
        os.replace(tmp, link)
