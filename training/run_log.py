"""The record of a training run: progress on the terminal and `metrics.jsonl` in the run folder.

`metrics.jsonl` holds one JSON object a line: every optimizer step
(`{"step", "loss", "lm", ..., "lr"}`, the step's own values) and every validation
(`{"step", "val_f1", "checkpoint", ...}`). A resumed run appends; readers keep the last
record of each step and kind. `read_log` also reads a trainer's stdout
(`step N/M lm ... loss ... | ...` and `validation at step N: f1 ...` lines), so runs
recorded before the metrics file existed can be plotted too.
"""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
_STEP_LINE = re.compile(r"^step (\d+)/\d+ (.*?) \|")
_VAL_LINE = re.compile(r"^validation at step (\d+): f1 ([0-9.]+)")


class MetricsLog:
    """Appends JSON records to the run's metrics file (main process only)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


class Progress:
    """Loss, throughput and ETA: a tqdm bar on a terminal, a line every log_every steps,
    and each step's values in the metrics log."""

    def __init__(self, config, start: int, log, metrics: MetricsLog, enabled: bool):
        self.config, self.start, self.log, self.metrics, self.enabled = config, start, log, metrics, enabled
        self.step = start   # optimizer steps done
        self.t0 = time.perf_counter()
        self.examples = self.tokens = 0
        self.smooth: dict[str, float] = {}
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=config.steps, initial=start, unit="step", dynamic_ncols=True)

    def update(self, step: int, parts: dict, examples: int, tokens: int, lr: float) -> None:
        self.step = step
        if not self.enabled:
            return
        self.metrics.write({"step": step, **{k: round(v, 6) for k, v in parts.items()}, "lr": lr})
        self.examples += examples
        self.tokens += tokens
        for k, v in parts.items():
            self.smooth[k] = v if k not in self.smooth else 0.9 * self.smooth[k] + 0.1 * v
        elapsed = time.perf_counter() - self.t0
        rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.config.steps - step) / rate if rate > 0 else float("inf")
        stats = " ".join(f"{k} {v:.4f}" for k, v in self.smooth.items())
        if self.bar is not None:
            self.bar.set_postfix_str(f"{stats} {self.examples / elapsed:.1f} ex/s")
            self.bar.update(1)
        if step % self.config.log_every == 0 or step == self.config.steps:
            self.log(f"step {step}/{self.config.steps} {stats} | {self.examples / elapsed:.1f} ex/s "
                     f"{self.tokens / elapsed:.0f} tok/s | elapsed {elapsed:.0f}s ETA {eta:.0f}s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def read_log(path) -> tuple[list[dict], list[dict]]:
    """(step records, validation records) of a run folder, a metrics.jsonl file or a
    trainer's stdout log, sorted by step, the last record of each step kept."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no training log at {path}")
    steps: dict[int, dict] = {}
    vals: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            record = json.loads(line)
            (vals if "val_f1" in record else steps)[int(record["step"])] = record
        elif m := _STEP_LINE.match(line):
            words = m.group(2).split()
            record = {"step": int(m.group(1))}
            record.update({k: float(v) for k, v in zip(words[::2], words[1::2])})
            steps[record["step"]] = record
        elif m := _VAL_LINE.match(line):
            vals[int(m.group(1))] = {"step": int(m.group(1)), "val_f1": float(m.group(2))}
    if not steps and not vals:
        raise ValueError(f"{path}: no training steps found (expected metrics.jsonl records or "
                         "'step N/M ... loss ...' lines)")
    return [steps[k] for k in sorted(steps)], [vals[k] for k in sorted(vals)]
