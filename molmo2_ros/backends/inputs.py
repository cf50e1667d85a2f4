"""Frames + prompt -> Molmo2 processor inputs, shared by every backend.

One frame is an image input; several frames are one video whose timestamps are the
frames' own stamps (seconds relative to the first frame). Frame sampling is switched
off, so the model sees exactly the frames it is given, in order. The times returned are
read back from the token stream the processor produced (what the model reads before each
frame), not recomputed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from molmo2_ros.core.grounding import Frame


@dataclass
class ModelInputs:
    """Processor output plus what the answer's `T` values refer to."""

    tensors: dict[str, Any]      # input_ids, attention_mask, mm_token_type_ids, pixel values, pooling, grids
    frame_times: list[float]     # video: seconds as presented; image: 1-based image index
    is_video: bool
    text: str                    # the chat-templated prompt (before vision tokens are expanded)


def validate_frames(frames: Sequence[Frame]) -> None:
    if not frames:
        raise ValueError("no frames: a query needs at least one frame")
    for i, frame in enumerate(frames):
        image = frame.image
        if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
            shape = getattr(image, "shape", None)
            dtype = getattr(image, "dtype", None)
            raise ValueError(f"frame {i}: expected an RGB uint8 HxWx3 array, got shape {shape} dtype {dtype}")
    stamps = [f.stamp_ns for f in frames]
    if any(b <= a for a, b in zip(stamps, stamps[1:])):
        raise ValueError(f"frame stamps must strictly increase, got {stamps}")


def presented_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """A video frame as the model gets it: frames of another size are resized to the first
    frame's size; the processor squashes every frame to its square input anyway, so
    0..1000 coordinates keep referring to each frame's full extent."""
    if image.shape[:2] == (height, width):
        return image
    import cv2

    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _video_array(frames: Sequence[Frame]) -> np.ndarray:
    """Stack frames to T x H x W x 3 (see presented_image)."""
    height, width = frames[0].image.shape[:2]
    return np.stack([presented_image(f.image, height, width) for f in frames])


def presented_frame_times(input_ids: Sequence[int], processor) -> list[float]:
    """Read each video frame's timestamp text back from the tokens the model receives.

    `Molmo2Processor.get_video_string` writes "<time> <frame_start>...<frame_end>" per frame
    (`<im_start>` when `use_frame_special_tokens` is off); the time is the text right before
    each frame start token.
    """
    tokenizer = processor.tokenizer
    start_token = "<frame_start>" if processor.use_frame_special_tokens else "<im_start>"
    start_id = tokenizer.convert_tokens_to_ids(start_token)
    special = set(tokenizer.all_special_ids) | set(processor.image_token_ids)
    ids = [int(i) for i in input_ids]
    times = []
    for pos, token in enumerate(ids):
        if token != start_id:
            continue
        begin = pos
        while begin > 0 and ids[begin - 1] not in special:
            begin -= 1
        text = tokenizer.decode(ids[begin:pos]).split()
        if not text:
            raise ValueError(f"no timestamp text before video frame at token {pos}")
        times.append(float(text[-1]))
    return times


def refuse_control_tokens(tokenizer, prompt: str) -> None:
    """Last line of defence: user text reaching the template must hold no special token
    (molmo2_ros.core.prompts neutralises queries; this catches a prompt built around it)."""
    found = sorted(t for t in tokenizer.get_added_vocab() if t in prompt)
    if found:
        raise ValueError(f"prompt contains control tokens {found}; build it with molmo2_ros.core.prompts "
                         "(build_prompt / sanitize_query), which neutralises them")


def chat_text(processor, prompt: str, is_video: bool) -> str:
    """The chat-templated prompt with one image or video placeholder."""
    kind = "video" if is_video else "image"
    messages = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def build_inputs(processor, frames: Sequence[Frame], prompt: str, *, return_tensors: str = "pt") -> ModelInputs:
    """Processor inputs for `prompt` over `frames` (1 frame: image; more: video).

    `prompt` must already be sanitised (molmo2_ros.core.prompts) — it goes into the chat
    template as user text. `return_tensors` is "pt" (torch) or "np" (numpy).
    """
    validate_frames(frames)
    refuse_control_tokens(processor.tokenizer, prompt)
    is_video = len(frames) > 1
    text = chat_text(processor, prompt, is_video)

    if is_video:
        seconds = [(f.stamp_ns - frames[0].stamp_ns) / 1e9 for f in frames]
        height, width = frames[0].image.shape[:2]
        # fps=1 with frame indices in seconds: the processor's timestamp (index / fps) is our own
        # stamp; do_sample_frames=False keeps every frame.
        metadata = {"total_num_frames": len(frames), "fps": 1.0, "frames_indices": seconds,
                    "width": width, "height": height}
        batch = processor(text=text, videos=[_video_array(frames)], video_metadata=[metadata],
                          videos_kwargs={"do_sample_frames": False}, return_tensors=return_tensors)
        frame_times = presented_frame_times(batch["input_ids"][0], processor)
        if len(frame_times) != len(frames):
            raise RuntimeError(f"processor presented {len(frame_times)} frames for {len(frames)} given")
    else:
        batch = processor(text=text, images=[frames[0].image], return_tensors=return_tensors)
        frame_times = [1.0]
    tensors = {k: v for k, v in batch.items() if k != "video_metadata"}
    return ModelInputs(tensors=tensors, frame_times=frame_times, is_video=is_video, text=text)
