"""Toy-world training aid: an auxiliary loss on the image-patch positions.

A tiny Molmo2 trained from random init on the shapes world ignores the image (its image
features start ~1e-7 against token embeddings ~0.02, and the language loss alone never
pulls them up; see docs/training.md). This loss asks each pooled image token (each
cell of a frame's low-resolution view) which object class, if any, has its centre in
the cell, and where that centre lies in the frame, so that image tokens carry both what
and where for the language model to read. Optionally (`attention_loss`) the attention
heads of one language-model layer are taught to look, while writing a point's
coordinates, at the cell holding that point. It needs per-frame object truth
(`Example.scene`), so it exists for synthetic data only; the head is thrown away and
the saved checkpoint is a plain Molmo2. Real fine-tuning starts from a pretrained model
and does not need it.
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn
from torch.nn import functional as F

from molmo2_ros.training.examples import Example

NO_OBJECT = 0
AID_KEYS = {"aux_weight", "attention_weight", "attention_layer"}


class ShapesAid(nn.Module):
    """The plug-in the trainer calls when the data is the shapes world and
    `data.shapes.aid` is set: extra trainable parameters and extra loss terms.

    aux_weight:       the cell-probe loss (ToyAuxHead.loss); > 0
    attention_weight: the attention supervision (ToyAuxHead.attention_loss); 0 = off
    attention_layer:  the language-model layer whose heads are supervised (default -2)
    """

    def __init__(self, settings: dict, model, processor, labels: list[str]):
        super().__init__()
        unknown = set(settings) - AID_KEYS
        if unknown:
            raise ValueError(f"data.shapes.aid: unknown keys {sorted(unknown)}; known: {sorted(AID_KEYS)}")
        self.aux_weight = float(settings.get("aux_weight", 0.0))
        self.attention_weight = float(settings.get("attention_weight", 0.0))
        self.attention_layer = int(settings.get("attention_layer", -2))
        if self.aux_weight <= 0:
            raise ValueError("data.shapes.aid: aux_weight must be > 0 (the attention supervision builds on it)")
        vision = model.config.vision_config
        self.head = ToyAuxHead(model.config.text_config.hidden_size, labels, vision.image_size[0],
                               vision.patch_size, processor.image_processor.pooling_size,
                               processor.video_processor.pooling_size)
        self.tokenizer = processor.tokenizer
        self.patch_id = model.config.image_patch_id

    @property
    def needs_attentions(self) -> bool:
        return bool(self.attention_weight)

    def losses(self, out, encoded, batch: dict) -> dict[str, torch.Tensor]:
        """Weighted loss terms for one micro-batch, by name."""
        parts = {"aux": self.aux_weight * self.head.loss(out.image_hidden_states, [e.example for e in encoded],
                                                         batch)}
        if self.attention_weight:
            attn = out.attentions[self.attention_layer]
            parts["attn"] = self.attention_weight * self.head.attention_loss(attn, encoded, batch, self.tokenizer,
                                                                             self.patch_id)
        return parts


def cell_ranges(n_patches: int, pool: int) -> list[tuple[float, float]]:
    """Per pooled cell along one axis, the [start, end) fraction of the view it pools
    (padding as in Molmo2's `arange_for_pooling`: split around the grid)."""
    cells = math.ceil(n_patches / pool)
    before = (cells * pool - n_patches) // 2
    out = []
    for j in range(cells):
        a, b = max(0, j * pool - before), min(n_patches, j * pool - before + pool)
        out.append((a / n_patches, b / n_patches))
    return out


def cell_targets(example: Example, rows: list[tuple[float, float]], cols: list[tuple[float, float]],
                 labels: list[str], frame: int) -> tuple[list[int], list[tuple[float, float]]]:
    """Class (0 = none, 1 + label index) and position (u, v in 0..1 of the frame: the
    object's centre; unused for empty cells) per cell, row-major, for frame `frame`."""
    classes = [NO_OBJECT] * (len(rows) * len(cols))
    positions = [(0.0, 0.0)] * len(classes)
    width, height = example.frames[frame].source_size
    for obj in example.scene[frame]:
        if not obj.visible or obj.label not in labels:
            continue
        u, v = obj.x / width, obj.y / height
        r = next((i for i, (a, b) in enumerate(rows) if a <= v < b), len(rows) - 1)
        c = next((i for i, (a, b) in enumerate(cols) if a <= u < b), len(cols) - 1)
        k = r * len(cols) + c
        classes[k] = 1 + labels.index(obj.label)
        positions[k] = (u, v)
    return classes, positions


class ToyAuxHead(nn.Module):
    """Linear probe on pooled image tokens: class logits + (u, v) position."""

    def __init__(self, hidden_size: int, labels: list[str], image_size: int, patch_size: int,
                 image_pool: list[int], video_pool: list[int]):
        super().__init__()
        self.labels = list(labels)
        self.proj = nn.Linear(hidden_size, 1 + len(self.labels) + 2)
        n = image_size // patch_size
        self.image_cells = (cell_ranges(n, image_pool[0]), cell_ranges(n, image_pool[1]))
        self.video_cells = (cell_ranges(n, video_pool[0]), cell_ranges(n, video_pool[1]))

    def targets(self, examples: list[Example], batch: dict[str, torch.Tensor]):
        """Per pooled token of the batch: class target (-100 = not supervised) and position."""
        classes: list[int] = []
        positions: list[tuple[float, float]] = []
        video = "video_grids" in batch
        grids = batch["video_grids"] if video else batch["image_grids"]
        rows, cols = self.video_cells if video else self.image_cells
        for example, grid in zip(examples, grids.tolist()):
            if video:
                n_frames, h, w = grid
                views, extra = list(range(n_frames)), 0
            else:
                h, w, hi_h, hi_w = grid
                views, extra = [0], hi_h * hi_w   # high-res crop tokens: not supervised
            if (h, w) != (len(rows), len(cols)):
                raise ValueError(f"pooled grid {h}x{w} does not match the processor geometry "
                                 f"{len(rows)}x{len(cols)}")
            for frame in views:
                if example.scene is None:
                    classes += [-100] * (h * w)
                    positions += [(0.0, 0.0)] * (h * w)
                else:
                    c, o = cell_targets(example, rows, cols, self.labels, frame)
                    classes += c
                    positions += o
            classes += [-100] * extra
            positions += [(0.0, 0.0)] * extra
        return torch.tensor(classes), torch.tensor(positions)

    def loss(self, features: torch.Tensor, examples: list[Example], batch: dict[str, torch.Tensor]
             ) -> torch.Tensor:
        classes, positions = self.targets(examples, batch)
        if classes.shape[0] != features.shape[0]:
            raise ValueError(f"{features.shape[0]} image features for {classes.shape[0]} cells")
        out = self.proj(features.float())
        n = 1 + len(self.labels)
        ce = F.cross_entropy(out[:, :n], classes, ignore_index=-100)
        positive = classes > 0
        if positive.any():
            ce = ce + 10.0 * F.mse_loss(out[positive, n:], positions[positive])
        return ce

    def attention_loss(self, attentions: torch.Tensor, encoded, batch: dict, tokenizer, patch_id: int
                       ) -> torch.Tensor:
        """-log of the attention (`attentions`: [batch, heads, query, key], every head)
        from each coordinate-digit position to its object's cell: teaches the language
        model to read the image at the point it is writing down."""
        video = "video_grids" in batch
        targets = attention_targets(encoded, tokenizer, patch_id,
                                    self.video_cells if video else self.image_cells, video)
        if not targets:
            return attentions.sum() * 0.0
        b, q, k = (torch.tensor(x) for x in zip(*targets))
        return -torch.log(attentions[b, :, q, k].float().clamp_min(1e-6)).mean()


_COORDS_RE = re.compile(r'coords="([^"]*)"')
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")


def attention_targets(encoded, tokenizer, patch_id: int, cells: tuple[list, list], video: bool
                      ) -> list[tuple[int, int, int]]:
    """(batch row, query position, key position): each position whose next token is a
    digit of a point's x or y, and the low-resolution image token of the cell holding
    that point in that point's frame."""
    rows, cols = cells
    out = []
    for b, e in enumerate(encoded):
        ids = e.tensors["input_ids"][0]
        patches = (ids == patch_id).nonzero().flatten().tolist()
        prompt_len = int((e.labels != -100).nonzero()[0])
        per_view = len(rows) * len(cols)
        offsets = tokenizer(e.answer, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        for m in _COORDS_RE.finditer(e.answer):
            start = m.start(1)
            for frame_text in re.split(r"[;\t]", m.group(1)):
                numbers = [(n.group(), start + n.start(), start + n.end()) for n in _NUMBER_RE.finditer(frame_text)]
                start += len(frame_text) + 1
                if not numbers:
                    continue
                t = float(numbers[0][0])
                view = min(range(len(e.frame_times)), key=lambda i: abs(e.frame_times[i] - t)) if video else 0
                for _, (x, xs, xe), (y, ys, ye) in zip(*[iter(numbers[1:])] * 3):
                    u, v = int(x) / 1000, int(y) / 1000
                    r = next((i for i, (a, c) in enumerate(rows) if a <= v < c), len(rows) - 1)
                    c = next((i for i, (a, d) in enumerate(cols) if a <= u < d), len(cols) - 1)
                    key = patches[view * per_view + r * len(cols) + c]
                    for k, (a, z) in enumerate(offsets):
                        if a < z and (xs <= a < xe or ys <= a < ye):
                            out.append((b, prompt_len + k - 1, key))
    return out
