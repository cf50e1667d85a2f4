"""Which examples each optimizer step trains on: deterministic batches by (step,
micro-step, rank) from the shapes world or from a manifest's training examples, with the
frame window the data was trained for and the data's training aid, if it has one.
"""
from __future__ import annotations

import numpy as np

from molmo2_ros.backends.trained_window import TrainedWindow
from molmo2_ros.core.grounder import sampling_fps
from molmo2_ros.training.config import TrainConfig
from molmo2_ros.training.examples import Example


class BatchSource:
    """Deterministic batches by (step, micro-step, rank): resuming needs no data state.

    A batch holds only image or only video examples (the model takes one kind per call);
    the clips of a shapes-world video batch share one length, drawn per batch from
    `data.shapes.frames`, so no batch pads short clips to a long one.
    """

    def __init__(self, config: TrainConfig, rank: int = 0, world: int = 1,
                 examples: list[Example] | None = None):
        self.config, self.rank, self.world = config, rank, world
        shapes = config.data.shapes
        if shapes is not None:
            from molmo2_ros.training.shapes_tasks import DEFAULT_FRAMES, KINDS

            unknown = set(shapes) - {"mix", "seed", "frames", "aid"}
            if unknown:
                raise ValueError(f"data.shapes: unknown keys {sorted(unknown)}; known: aid, frames, mix, seed")
            mix = shapes.get("mix") or {k: 1.0 for k in KINDS}
            unknown = set(mix) - set(KINDS)
            if unknown:
                raise ValueError(f"data.shapes.mix: unknown kinds {sorted(unknown)}; known: {KINDS}")
            self.kinds = list(mix)
            weights = np.array([float(mix[k]) for k in self.kinds])
            self.probs = weights / weights.sum()
            self.shapes_seed = int(shapes.get("seed", config.seed))
            self.frames = tuple(int(n) for n in shapes.get("frames", DEFAULT_FRAMES))
            if len(self.frames) != 2 or not 2 <= self.frames[0] <= self.frames[1]:
                raise ValueError(f"data.shapes.frames: expected [min, max] with 2 <= min <= max, "
                                 f"got {shapes['frames']}")
            self.examples = None
        else:   # the manifest's training examples (molmo2_ros.training.validation.prepare)
            self.examples = examples
            self.batches = self._manifest_batches()

    def _manifest_batches(self) -> list[list[int]]:
        size = self.config.batch_size * self.world
        rng = np.random.default_rng(self.config.seed)
        batches = []
        for video in (False, True):
            idx = [i for i, e in enumerate(self.examples) if e.is_video == video]
            rng.shuffle(idx)
            batches += [idx[i:i + size] for i in range(0, len(idx), size)]
        rng.shuffle(batches)
        return batches

    def trained_window(self) -> TrainedWindow | None:
        """The longest video window the data holds (None without videos)."""
        if self.examples is None:
            from molmo2_ros.training.shapes_tasks import FPS

            video = any(kind.startswith("video") for kind in self.kinds)
            return TrainedWindow(FPS, self.frames[1]) if video else None
        videos = [e.frames for e in self.examples if e.is_video]
        if not videos:
            return None
        return TrainedWindow(round(float(np.median([sampling_fps(f) for f in videos])), 3),
                             max(len(f) for f in videos))

    def training_aid(self, model, processor):
        """The data's training aid (an nn.Module with `losses()`), or None: the shapes world
        brings its own (`data.shapes.aid`, training.toy_aux); real data has none."""
        settings = (self.config.data.shapes or {}).get("aid")
        if not settings:
            return None
        from molmo2_ros.training.shapes_tasks import LABELS
        from molmo2_ros.training.toy_aux import ShapesAid

        return ShapesAid(settings, model, processor, list(LABELS))

    def get(self, step: int, micro: int) -> list[Example]:
        b = self.config.batch_size
        if self.examples is None:
            from molmo2_ros.training.shapes_tasks import make_example

            rng = np.random.default_rng([self.shapes_seed, step, micro])
            kind = self.kinds[rng.choice(len(self.kinds), p=self.probs)]
            base = int(rng.integers(2**40))
            n = int(rng.integers(self.frames[0], self.frames[1] + 1))
            return [make_example(kind, base + self.rank * b + i, frames=(n, n)) for i in range(b)]
        n = step * self.config.grad_accum + micro
        batch = self.batches[n % len(self.batches)]
        mine = batch[self.rank::self.world] or batch[:1]
        return [self.examples[i] for i in mine]
