"""Shapes-world examples for each task kind, deterministic by seed.

Kinds (the names used in configs and eval reports):
    image_point       one image, the target label exactly once (+ distractors) -> POINT
    image_point_all   one image, 0-3 of the label (+ distractors), plural query -> POINT
    image_count       as image_point_all, asked "How many ..." -> COUNT
    video_point       a clip, the target label once -> POINT (one point, at the first
                      frame where it is visible, as Molmo2 points each object once in video)
    video_count       a clip, 0-3 of the label (+ distractors), "How many ..." -> COUNT (each
                      object pointed at its first visible frame, then the total)
    video_track       a clip, 1-2 objects of the label -> TRACK (every visible frame)

Clips are sampled at 2 fps (the node's default rate); their length in frames is drawn
from `frames` (inclusive range), 3-4 unless asked otherwise.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from molmo2_ros.core.grounding import Frame, Task
from molmo2_ros.training.examples import Example, TruthObject, TruthPoint
from molmo2_ros.sim.shapes_world import COLORS, SHAPES, Clip, make_clip, plural

# Appended kinds keep the earlier ones' examples (the rng is seeded with the kind's index).
KINDS = ("image_point", "image_point_all", "image_count", "video_point", "video_track", "video_count")
LABELS = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)
START_NS = 1_700_000_000 * 10**9
# Training draws seeds below this; held-out evaluation uses seeds from it upwards.
HELDOUT_SEED = 2**41


DEFAULT_FRAMES = (3, 4)
FPS = 2.0   # the node's default sampling rate


def make_example(kind: str, seed: int, *, sizes: tuple[int, int, int, int] = (112, 224, 96, 192),
                 max_count: int = 3, frames: tuple[int, int] = DEFAULT_FRAMES) -> Example:
    """An Example of `kind` from seed `seed`. `sizes` = (min_w, max_w, min_h, max_h) px;
    `frames` = (min, max) clip length of video kinds."""
    if kind not in KINDS:
        raise ValueError(f"unknown shapes task {kind!r}; expected one of {KINDS}")
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    size = (int(rng.integers(sizes[0], sizes[1] + 1)), int(rng.integers(sizes[2], sizes[3] + 1)))
    target = LABELS[rng.integers(len(LABELS))]
    others = [label for label in LABELS if label != target]
    if kind in ("image_point", "video_point"):
        n_target = 1
    elif kind == "video_track":
        n_target = int(rng.integers(1, 3))
    else:
        n_target = int(rng.integers(0, max_count + 1))
    n_distractors = int(rng.integers(0, 3))
    labels = [target] * n_target + [others[i] for i in rng.choice(len(others), n_distractors)]
    order = rng.permutation(len(labels))
    objects = [tuple(labels[i].split(" ")) for i in order]
    video = kind.startswith("video")
    if video and not 2 <= frames[0] <= frames[1]:
        raise ValueError(f"frames must be a range (min, max) with 2 <= min <= max, got {frames}")
    clip = make_clip(int(rng.integers(2**31)),
                     n_frames=int(rng.integers(frames[0], frames[1] + 1)) if video else 1,
                     fps=FPS, size=size, objects=objects, size_range=(0.1, 0.18),
                     n_occluders=int(rng.random() < 0.3) if video else 0,
                     start_ns=START_NS + seed * 10**10)
    return clip_example(clip, kind, target, source=f"shapes:{kind}:{seed}")


def heldout_examples(plan: dict[str, int], first_seed: int = HELDOUT_SEED,
                     lengths: list[int] | None = None) -> list[Example]:
    """`plan[kind]` examples of each kind from `first_seed` on. With `lengths`, each video
    kind is made once per window length (same seeds), grouped as `KIND@Nf`."""
    out = []
    for kind, n in plan.items():
        if lengths is None or not kind.startswith("video"):
            out += [make_example(kind, first_seed + i) for i in range(n)]
            continue
        for length in lengths:
            out += [dataclasses.replace(make_example(kind, first_seed + i, frames=(length, length)),
                                        kind=f"{kind}@{length}f") for i in range(n)]
    return out


def clip_example(clip: Clip, kind: str, label: str, source: str = "") -> Example:
    """Turn a rendered clip into an Example of `kind` about objects labelled `label`."""
    frames = [Frame(image=img, stamp_ns=t, source_size=clip.size)
              for img, t in zip(clip.frames, clip.stamps_ns)]
    scene = [[TruthObject(o.label, o.cx, o.cy, o.visible) for o in objs] for objs in clip.objects]
    visible = clip.visible_points(label)
    points: list[TruthPoint] = []
    if kind == "video_track":
        for t, objs in zip(clip.stamps_ns, visible):
            points += [TruthPoint(t, o.object_id, o.cx, o.cy) for o in objs]
    else:
        seen: set[int] = set()
        for t, objs in zip(clip.stamps_ns, visible):
            for o in objs:
                if o.object_id not in seen:
                    seen.add(o.object_id)
                    points.append(TruthPoint(t, o.object_id, o.cx, o.cy))
    task = {"image_count": Task.COUNT, "video_count": Task.COUNT, "video_track": Task.TRACK}.get(kind, Task.POINT)
    query = label if kind in ("image_point", "video_point", "video_track") else plural(label)
    index = {t: i for i, t in enumerate(clip.stamps_ns)}

    def inside(stamp_ns: int, object_id: int, x: float, y: float) -> bool:
        return stamp_ns in index and clip.hit(index[stamp_ns], object_id, x, y)

    return Example(frames=frames, task=task, query=query, points=points, scene=scene,
                   inside=inside, source=source, kind=kind)
