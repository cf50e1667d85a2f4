"""Evaluation metrics: video point P/R/F1, count exact/close accuracy, track point F1.

A predicted point hits a truth point when it is on the same sampled frame and lands
inside the object (when the example can test that: `Example.inside`, e.g. the shapes
world's masks) or within HIT_RADIUS (a fraction of the image diagonal) of the truth
point. Predictions and truth are paired by Hungarian matching on (t, x, y), normalised
to 0..100 by the clip's duration and the image size as upstream, with non-hits made
prohibitively expensive so the matching maximises hits first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from molmo2_ros.training.examples import TruthPoint

HIT_RADIUS = 0.08          # of the image diagonal
_NO_MATCH = 1e6


@dataclass(frozen=True)
class PRF:
    hits: int
    n_pred: int
    n_true: int

    @property
    def precision(self) -> float:
        return self.hits / self.n_pred if self.n_pred else 1.0

    @property
    def recall(self) -> float:
        return self.hits / self.n_true if self.n_true else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0


# (predicted (stamp_ns, x, y), truth point) -> is it a hit?
HitTest = Callable[[tuple[int, float, float], TruthPoint], bool]


def radius_hit(size: tuple[int, int], radius: float = HIT_RADIUS) -> HitTest:
    """Same frame and within `radius` x diagonal of the truth point (source pixels)."""
    limit = radius * math.hypot(*size)

    def hit(pred: tuple[int, float, float], truth: TruthPoint) -> bool:
        return pred[0] == truth.stamp_ns and math.hypot(pred[1] - truth.x, pred[2] - truth.y) <= limit
    return hit


def match_points(pred: Sequence[tuple[int, float, float]], truth: Sequence[TruthPoint], hit: HitTest,
                 size: tuple[int, int], t0_ns: int = 0, duration_ns: int = 0) -> PRF:
    """Hungarian matching on (t, x, y) normalised to 0..100; counts the matched hits."""
    if not pred or not truth:
        return PRF(0, len(pred), len(truth))
    width, height = size
    scale_t = 100.0 / duration_ns if duration_ns > 0 else 0.0

    def norm(t: int, x: float, y: float) -> np.ndarray:
        return np.array([(t - t0_ns) * scale_t, 100.0 * x / width, 100.0 * y / height])

    p = np.stack([norm(*q) for q in pred])
    g = np.stack([norm(tp.stamp_ns, tp.x, tp.y) for tp in truth])
    cost = np.linalg.norm(p[:, None, :] - g[None, :, :], axis=-1)
    ok = np.array([[hit(q, tp) for tp in truth] for q in pred])
    cost = np.where(ok, cost, _NO_MATCH)
    rows, cols = linear_sum_assignment(cost)
    hits = int(sum(ok[r, c] for r, c in zip(rows, cols)))
    return PRF(hits, len(pred), len(truth))


def track_prf(pred: Sequence[tuple[int, float, float]], truth: Sequence[TruthPoint], hit: HitTest,
              size: tuple[int, int]) -> PRF:
    """Track point P/R/F1: per frame, Hungarian between that frame's predicted and true
    points; hits and totals summed over the frames."""
    stamps = sorted({q[0] for q in pred} | {t.stamp_ns for t in truth})
    hits = 0
    for s in stamps:
        r = match_points([q for q in pred if q[0] == s], [t for t in truth if t.stamp_ns == s], hit, size)
        hits += r.hits
    return PRF(hits, len(pred), len(truth))


def count_close(pred: int | None, truth: int) -> bool:
    """|pred - truth| <= 1 + floor(0.05 * truth) (upstream's "close" accuracy)."""
    return pred is not None and abs(pred - truth) <= 1 + math.floor(0.05 * truth)


def count_summary(pairs: Sequence[tuple[int | None, int]]) -> dict:
    """Exact and close accuracy, and the baseline of always answering the commonest count."""
    if not pairs:
        return {"n": 0}
    truths = [t for _, t in pairs]
    majority = max(set(truths), key=lambda c: (truths.count(c), -c))
    return {
        "n": len(pairs),
        "exact": sum(p == t for p, t in pairs) / len(pairs),
        "close": sum(count_close(p, t) for p, t in pairs) / len(pairs),
        "majority_count": majority,
        "majority_exact": truths.count(majority) / len(pairs),
        "unanswered": sum(p is None for p, _ in pairs),
    }


def prf_summary(results: Sequence[PRF]) -> dict:
    """Per-example P/R/F1 averaged over examples (as upstream), plus micro totals."""
    if not results:
        return {"n": 0}
    total = PRF(sum(r.hits for r in results), sum(r.n_pred for r in results),
                sum(r.n_true for r in results))
    return {
        "n": len(results),
        "precision": float(np.mean([r.precision for r in results])),
        "recall": float(np.mean([r.recall for r in results])),
        "f1": float(np.mean([r.f1 for r in results])),
        "micro_f1": total.f1,
        "hits": total.hits, "predicted": total.n_pred, "true": total.n_true,
    }
