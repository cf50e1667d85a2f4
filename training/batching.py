"""Examples -> model tensors, through the inference input path.

Each example is encoded alone by `molmo2_ros.backends.inputs.build_inputs` (the function
every backend uses), so training presents prompts, frames and timestamps exactly as
inference does; the target answer and `<|im_end|>` are appended, and encoded examples
are collated into one padded batch (pooling indices shifted past the previous examples'
patches, as the processor does for a batch).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from molmo2_ros.backends.inputs import build_inputs
from molmo2_ros.training.examples import Example

IGNORE = -100


@dataclass
class Encoded:
    example: Example
    tensors: dict[str, torch.Tensor]   # one example, prompt + answer
    labels: torch.Tensor               # [seq], IGNORE outside the answer
    weights: torch.Tensor              # [seq], per-token loss weight (0 outside the answer)
    frame_times: list[float]
    answer: str


def encode(processor, example: Example) -> Encoded:
    inputs = build_inputs(processor, example.frames, example.prompt(), return_tensors="pt")
    answer = example.target(inputs.frame_times)
    tok = processor.tokenizer
    answer_ids = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    t = inputs.tensors
    prompt_len = t["input_ids"].shape[1]
    ids = torch.cat([t["input_ids"][0], torch.tensor(answer_ids, dtype=t["input_ids"].dtype)])
    tensors = dict(t)
    tensors["input_ids"] = ids[None]
    tensors["attention_mask"] = torch.ones_like(ids)[None]
    tensors["mm_token_type_ids"] = torch.cat(
        [t["mm_token_type_ids"][0], torch.zeros(len(answer_ids), dtype=t["mm_token_type_ids"].dtype)])[None]
    labels = torch.full_like(ids, IGNORE)
    labels[prompt_len:] = ids[prompt_len:]
    weights = torch.zeros(len(ids))
    weights[prompt_len:] = example.token_weight(len(answer_ids))
    return Encoded(example, tensors, labels, weights, inputs.frame_times, answer)


def collate(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch of all-image or all-video examples (the model takes one kind per call)."""
    kinds = {"pixel_values_videos" in e.tensors for e in items}
    if len(kinds) != 1:
        raise ValueError("a batch must hold only image examples or only video examples")
    video = kinds.pop()
    length = max(e.tensors["input_ids"].shape[1] for e in items)
    n = len(items)
    batch = {
        "input_ids": torch.full((n, length), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((n, length), dtype=torch.long),
        "mm_token_type_ids": torch.zeros((n, length), dtype=torch.long),
        "labels": torch.full((n, length), IGNORE, dtype=torch.long),
        "weights": torch.zeros((n, length)),
    }
    for i, e in enumerate(items):
        k = e.tensors["input_ids"].shape[1]
        for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
            batch[key][i, :k] = e.tensors[key][0]
        batch["labels"][i, :k] = e.labels
        batch["weights"][i, :k] = e.weights
    pixels, pooling, grids = (("pixel_values_videos", "video_token_pooling", "video_grids") if video
                              else ("pixel_values", "image_token_pooling", "image_grids"))
    offset, pools = 0, []
    for e in items:
        pool = e.tensors[pooling]
        pools.append(torch.where(pool >= 0, pool + offset, pool))
        px = e.tensors[pixels]
        offset += px.shape[0] * px.shape[1]
    batch[pixels] = torch.cat([e.tensors[pixels] for e in items])
    batch[pooling] = torch.cat(pools)
    batch[grids] = torch.cat([e.tensors[grids] for e in items])
    if not video:
        batch["image_num_crops"] = torch.cat([e.tensors["image_num_crops"] for e in items])
    return batch
