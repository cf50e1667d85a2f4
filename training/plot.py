"""`molmo2-train plot RUN`: a PNG of a run's training loss and validation F1 per step.

RUN is a run folder (its metrics.jsonl), a metrics.jsonl file, or a trainer's saved
stdout (`step N/M lm ... loss ...` lines). Drawn with OpenCV (no plotting library):
the loss of every step (light) and its running mean (dark) on the left axis (log scale
when it spans a decade), the
validation F1 of each evaluated checkpoint on the right axis (0..1), the best one ringed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from molmo2_ros.training.run_log import read_log

W, H = 960, 540
LEFT, RIGHT, TOP, BOTTOM = 80, 80, 56, 60
# BGR
LOSS_LIGHT, LOSS, F1 = (235, 200, 170), (170, 90, 30), (20, 120, 240)
BEST, INK, GRID = (40, 160, 40), (40, 40, 40), (225, 225, 225)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    lo = np.maximum(0, np.arange(len(values)) - window + 1)
    return (cumsum[np.arange(len(values)) + 1] - cumsum[lo]) / (np.arange(len(values)) + 1 - lo)


def _text(img, text, org, color=INK, scale=0.45, anchor="left"):
    (w, h), _ = cv2.getTextSize(text, FONT, scale, 1)
    x, y = org
    x = x - w if anchor == "right" else x - w // 2 if anchor == "center" else x
    cv2.putText(img, text, (int(x), int(y + h // 2)), FONT, scale, color, 1, cv2.LINE_AA)


def plot(path, out, title: str = "") -> Path:
    """Draw the run at `path` (see module doc) into the PNG `out`; returns `out`."""
    steps, vals = read_log(path)
    losses = [(r["step"], r["loss"]) for r in steps if "loss" in r]
    img = np.full((H, W, 3), 255, np.uint8)
    x_max = max([s for s, _ in losses] + [v["step"] for v in vals] + [1])
    x_min = min([s for s, _ in losses] + [v["step"] for v in vals] + [0])
    x0, x1, y0, y1 = LEFT, W - RIGHT, TOP, H - BOTTOM

    def px(step):
        return x0 + (step - x_min) / max(1, x_max - x_min) * (x1 - x0)

    loss_lo, loss_hi, log_scale = 0.0, 1.0, False
    if losses:
        values = np.array([v for _, v in losses], float)
        loss_lo, loss_hi = float(values.min()), float(values.max())
        # a start-up spike would flatten the rest: log scale when the loss spans a decade
        log_scale = loss_lo > 0 and loss_hi / loss_lo >= 10
        if log_scale:
            loss_lo, loss_hi = np.log10(loss_lo), np.log10(loss_hi)
        else:
            loss_lo = max(0.0, loss_lo - 0.05 * (loss_hi - loss_lo))
        loss_hi += 1e-9

    def py_loss(v):
        v = np.log10(v) if log_scale else v
        return y1 - (v - loss_lo) / (loss_hi - loss_lo) * (y1 - y0)

    def py_f1(v):
        return y1 - v * (y1 - y0)

    for i in range(6):   # grid and ticks
        y = y1 - i * (y1 - y0) / 5
        cv2.line(img, (x0, int(y)), (x1, int(y)), GRID, 1)
        if losses:
            tick = loss_lo + i * (loss_hi - loss_lo) / 5
            _text(img, f"{10 ** tick if log_scale else tick:.3g}", (x0 - 8, y), LOSS, anchor="right")
        if vals:
            _text(img, f"{i / 5:.1f}", (x1 + 8, y), F1)
        x = x0 + i * (x1 - x0) / 5
        _text(img, f"{round(x_min + i * (x_max - x_min) / 5)}", (x, y1 + 16), anchor="center")
    cv2.rectangle(img, (x0, y0), (x1, y1), INK, 1)
    _text(img, "step", ((x0 + x1) / 2, H - 18), anchor="center")
    if losses:
        xs = np.array([px(s) for s, _ in losses])
        pts = np.stack([xs, [py_loss(v) for v in values]], 1).astype(np.int32)
        smooth = np.stack([xs, [py_loss(v) for v in running_mean(values, max(1, len(values) // 50))]], 1)
        cv2.polylines(img, [pts], False, LOSS_LIGHT, 1, cv2.LINE_AA)
        cv2.polylines(img, [smooth.astype(np.int32)], False, LOSS, 2, cv2.LINE_AA)
        _text(img, "training loss" + (" (log scale)" if log_scale else ""), (x0, y0 - 14), LOSS)
    if vals:
        pts = np.array([(px(v["step"]), py_f1(v["val_f1"])) for v in vals], np.int32)
        cv2.polylines(img, [pts], False, F1, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, tuple(int(c) for c in p), 4, F1, -1, cv2.LINE_AA)
        best = max(vals, key=lambda v: (v["val_f1"], -v["step"]))
        bp = (int(px(best["step"])), int(py_f1(best["val_f1"])))
        cv2.circle(img, bp, 9, BEST, 2, cv2.LINE_AA)
        _text(img, "validation F1", (x1, y0 - 14), F1, anchor="right")
        _text(img, f"best F1 {best['val_f1']:.2f} at step {best['step']}", ((x0 + x1) / 2, y0 - 14), BEST,
              anchor="center")
    if title:
        _text(img, title, (W / 2, 16), scale=0.55, anchor="center")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), img):
        raise OSError(f"could not write {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="molmo2-train plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run folder, metrics.jsonl, or a saved trainer stdout log")
    parser.add_argument("--out", help="PNG to write (default: RUN/training.png, or LOG.png)")
    parser.add_argument("--title", default="", help="title drawn on top")
    args = parser.parse_args(argv)
    run = Path(args.run)
    out = args.out or (run / "training.png" if run.is_dir() else run.with_suffix(".png"))
    try:
        print(f"wrote {plot(run, out, args.title)}")
    except (OSError, ValueError) as exc:
        print(f"molmo2-train plot: {exc}", file=sys.stderr)
        return 2
    return 0
