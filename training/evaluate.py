"""`molmo2-eval`: run examples through the real inference path and score the answers.

Each example goes through `molmo2_ros.core.grounder.ground()` with a backend from
`molmo2_ros.backends.factory.make_backend` — the processor, generate(), the parser and
the mapping back to source pixels and frame stamps, exactly as the node and the CLI
answer — and is scored with molmo2_ros.training.metrics, per group (shapes task kind, else
image_/video_ + task).
"""
from __future__ import annotations

import time
from typing import Iterable

from molmo2_ros.core.grounder import ground
from molmo2_ros.core.grounding import Grounding, Task
from molmo2_ros.training.examples import Example, TruthPoint
from molmo2_ros.training.metrics import HIT_RADIUS, count_summary, match_points, prf_summary, track_prf


def hit_test(example: Example, radius: float = HIT_RADIUS):
    """Same frame, and inside the object (when the example has masks) or within `radius`
    of the image diagonal of the truth point."""
    import math

    width, height = example.frames[0].source_size
    limit = radius * math.hypot(width, height)

    def hit(pred: tuple[int, float, float], truth: TruthPoint) -> bool:
        if pred[0] != truth.stamp_ns:
            return False
        if math.hypot(pred[1] - truth.x, pred[2] - truth.y) <= limit:
            return True
        return example.inside is not None and example.inside(truth.stamp_ns, truth.object_id, pred[1], pred[2])
    return hit


def score(example: Example, g: Grounding) -> dict:
    """Per-example scores: PRF of the points (tracks for TRACK) and the count."""
    size = example.frames[0].source_size
    t0 = example.frames[0].stamp_ns
    duration = example.frames[-1].stamp_ns - t0
    hit = hit_test(example)
    if example.task is Task.TRACK:
        pred = [(p.stamp_ns, p.x, p.y) for t in g.tracks for p in t.points]
        prf = track_prf(pred, example.points, hit, size)
    else:
        pred = [(p.stamp_ns, p.x, p.y) for p in g.points]
        prf = match_points(pred, example.points, hit, size, t0, duration)
    out = {"prf": prf}
    if example.task is Task.COUNT:
        out["count"] = (g.count, example.count)
    return out


def evaluate(backend, examples: Iterable[Example], *, max_new_tokens: int = 256, details: bool = False,
             log=None) -> dict:
    """The JSON report: per group P/R/F1 (per-example mean and micro), count accuracies."""
    groups: dict[str, dict[str, list]] = {}
    rows = []
    started = time.perf_counter()
    for n, example in enumerate(examples, 1):
        g = ground(backend, example.frames, example.query, example.task, max_new_tokens=max_new_tokens)
        s = score(example, g)
        bucket = groups.setdefault(example.group, {"prf": [], "count": []})
        bucket["prf"].append(s["prf"])
        if "count" in s:
            bucket["count"].append(s["count"])
        if details:
            rows.append({"source": example.source, "group": example.group, "query": example.query,
                         "answer": g.answer, "f1": s["prf"].f1, "count": s.get("count")})
        if log and n % 20 == 0:
            log(f"evaluated {n} examples ({time.perf_counter() - started:.0f}s)")
    report = {"model": getattr(backend, "model_id", ""), "backend": getattr(backend, "name", ""),
              "hit_rule": f"same sampled frame, and inside the object's mask (where known) or within "
                          f"{HIT_RADIUS:.0%} of the image diagonal of the truth point",
              "groups": {}, "wall_s": round(time.perf_counter() - started, 2)}
    for name, bucket in sorted(groups.items()):
        entry = {"points": prf_summary(bucket["prf"])}
        if bucket["count"]:
            entry["count"] = count_summary(bucket["count"])
        report["groups"][name] = entry
    if details:
        report["examples"] = rows
    return report

