"""Molmo2's frame preprocessing, done once per frame and reused across queries.

`FastPreprocessor.build(frames, prompt)` returns exactly what
`molmo2_ros.backends.inputs.build_inputs(processor, frames, prompt)` returns (same keys,
dtypes and values: integer tensors equal, pixel values bit-identical), but
- each frame's pixels (resize, rescale/normalise, patchify; for images the overlapping
  crops) are computed once and cached by (frame_id, stamp, presented size), so a query
  on a window that gained one frame processes only that frame;
- the resize reads only the 4 source pixels each output pixel needs, instead of
  converting the whole camera image to float first;
- it runs in torch on `device` (a GPU when there is one) and leaves the tensors there.

Exactness. transformers resizes in float32 with torch's bilinear kernel, then rounds to
uint8. `resize_u8` uses that kernel's source indices and weights (the source coordinate is
a fused multiply-add), sums the 4 taps in float32, and recomputes the few results that lie
within `_TIE_BAND` of a rounding boundary in the exact operation order (with the FMA
contractions) of the kernel torch dispatches to, which depends on the thread count: one
thread (or a tiny output) takes the channels-last kernel, more threads the generic one.
FMAs are emulated in float64, where the products are exact. Rescaling and normalisation
run through the processor's own `rescale_and_normalize`, and shape-only helpers (crop
geometry, pooling windows) are transformers' own functions.
"""
from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from transformers.image_utils import PILImageResampling
from transformers.models.molmo2.image_processing_molmo2 import arange_for_pooling, compute_crop_geometry

from molmo2_ros.backends.inputs import (ModelInputs, chat_text, presented_image, refuse_control_tokens,
                                        validate_frames)
from molmo2_ros.core.grounding import Frame


# Float32 bilinear results of different summation orders differ by < 3e-4 for 0..255
# inputs (a few roundings of values below 256); only results this close to a rounding
# boundary (k + 0.5) need the reference's exact operation order to round the same way.
_TIE_BAND = 1e-3
_PATCH = "<im_patch>"
_PATCH_RUN = re.compile(f"(?:{re.escape(_PATCH)})+")


@dataclass(frozen=True)
class _Taps:
    """Where the 4 bilinear taps of every output value are and how they are weighted."""

    index: torch.Tensor                 # (oh * ow * 4,) flat pixel offsets of taps a, b, c, d per pixel
    approx: torch.Tensor                # (oh * ow, 4, 1) float32 weights of a, b, c, d
    channels_last: bool                 # which of torch's two kernels to reproduce near ties
    exact: tuple[torch.Tensor, ...]     # per-pixel (oh * ow,) weights in that kernel's form


def _axis_taps(in_size: int, out_size: int):
    """Source indices and weights along one axis, as torch's CPU kernel computes them
    (float32 `scale * (i + 0.5) - 0.5`, fused, clamped at 0)."""
    if in_size == out_size:
        index = np.arange(out_size)
        return index, index, np.ones(out_size, np.float32), np.zeros(out_size, np.float32)
    scale = np.float32(in_size) / np.float32(out_size)
    centre = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
    real = (np.float64(scale) * centre.astype(np.float64) - 0.5).astype(np.float32)  # fma
    real = np.maximum(real, np.float32(0))
    i0 = np.minimum(np.floor(real).astype(np.int64), in_size - 1)
    lambda1 = np.clip(real - i0.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    return i0, i0 + (i0 < in_size - 1), np.float32(1) - lambda1, lambda1


class FastPreprocessor:
    """Cached, vectorised stand-in for `build_inputs` (see the module docstring).

    `frames_processed` counts the frames whose pixels were actually computed.
    """

    def __init__(self, processor, device: str | torch.device | None = None):
        self.processor = processor
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.video = _PixelConfig(processor.video_processor, self.device)
        self.image = _PixelConfig(processor.image_processor, self.device)
        self.frames_processed = 0
        self._video_cache: dict[tuple, torch.Tensor] = {}
        self._image_cache: dict[tuple, tuple] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ public
    def build(self, frames: Sequence[Frame], prompt: str, *, return_tensors: str = "pt") -> ModelInputs:
        """Processor inputs for `prompt` over `frames` (1 frame: image; more: video)."""
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")
        validate_frames(frames)
        refuse_control_tokens(self.processor.tokenizer, prompt)
        is_video = len(frames) > 1
        text = chat_text(self.processor, prompt, is_video)
        with self._lock:
            if is_video:
                vision, replacement, frame_times = self._video_inputs(frames)
                placeholder = self.processor.video_token
            else:
                vision, replacement = self._image_inputs(frames[0])
                frame_times = [1.0]
                placeholder = self.processor.image_token
        tensors = {**self.text_inputs(text, placeholder, replacement), **vision}
        if return_tensors == "np":
            tensors = {k: v.cpu().numpy() for k, v in tensors.items()}
        return ModelInputs(tensors=tensors, frame_times=frame_times, is_video=is_video, text=text)

    @staticmethod
    def frame_keys(frames: Sequence[Frame]) -> list[tuple]:
        """What identifies a video frame's pixels: camera, stamp and the size it is presented at."""
        height, width = frames[0].image.shape[:2]
        return [(f.frame_id, f.stamp_ns, height, width) for f in frames]

    # ------------------------------------------------------------------ text
    def text_inputs(self, text: str, placeholder: str, replacement: str) -> dict[str, torch.Tensor]:
        """Expand the one vision placeholder, prepend BOS and tokenise, as Molmo2Processor does.

        Each run of `<im_patch>` tokens is tokenised as one and repeated afterwards: added
        tokens split the text, so a run of them tokenises to itself either way, and the
        tokenizer then sees ~100 tokens instead of ~1,400 for a 16-frame window.
        """
        if text.count(placeholder) != 1:
            raise ValueError(f"expected one {placeholder} in the templated prompt, found {text.count(placeholder)}")
        tokenizer = self.processor.tokenizer
        bos = tokenizer.bos_token or tokenizer.eos_token
        if not text.startswith(bos):
            text = bos + text
        runs = [len(m.group(0)) // len(_PATCH) for m in _PATCH_RUN.finditer(replacement)]
        collapsed = _PATCH_RUN.sub(_PATCH, replacement)
        ids = np.asarray(tokenizer(text.replace(placeholder, collapsed))["input_ids"], dtype=np.int64)
        repeats = np.ones(len(ids), dtype=np.int64)
        patch_positions = np.flatnonzero(ids == tokenizer.convert_tokens_to_ids(_PATCH))
        if len(patch_positions) != len(runs):
            raise RuntimeError(f"tokenizer returned {len(patch_positions)} patch runs for {len(runs)}")
        repeats[patch_positions] = runs
        ids = np.repeat(ids, repeats).tolist()
        types = self.processor.create_mm_token_type_ids([ids])
        input_ids = torch.tensor([ids], dtype=torch.int64, device=self.device)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "mm_token_type_ids": torch.tensor(types, dtype=torch.int64, device=self.device),
        }

    # ------------------------------------------------------------------ video
    def _video_inputs(self, frames: Sequence[Frame]):
        cfg = self.video
        height, width = frames[0].image.shape[:2]
        keys = self.frame_keys(frames)
        new = [(key, f) for key, f in zip(keys, frames) if key not in self._video_cache]
        # A GPU takes all new frames in one batch (one upload, one set of kernels); a CPU one
        # at a time (a frame's temporaries stay in cache).
        step = max(len(new), 1) if self.device.type == "cuda" else 1
        for start in range(0, len(new), step):
            batch = new[start:start + step]
            images = [presented_image(f.image, height, width) for _, f in batch]
            fresh = cfg.patchify(self.resize_normalised(images, cfg, cfg.crop_size, cfg.crop_size))
            self._video_cache.update((key, patches) for (key, _), patches in zip(batch, fresh))
            self.frames_processed += len(batch)
        # keep exactly the frames of the latest window
        self._video_cache = {key: self._video_cache[key] for key in keys}
        pixel_values = torch.stack([self._video_cache[key] for key in keys])
        num_frames, per_frame = pixel_values.shape[:2]
        pooling, rows, cols = cfg.pooling(cfg.crop_size // cfg.patch_size, cfg.crop_size // cfg.patch_size)
        offsets = (torch.arange(num_frames, device=self.device) * per_frame).view(-1, 1, 1)
        pooling = torch.where(pooling >= 0, pooling + offsets, pooling).reshape(-1, pooling.shape[-1])
        grid = torch.tensor([[num_frames, rows, cols]], dtype=torch.int64, device=self.device)
        # Timestamps exactly as build_inputs presents them (fps=1, frame index = seconds).
        seconds = [(f.stamp_ns - frames[0].stamp_ns) / 1e9 for f in frames]
        replacement = self.processor.get_video_string(grid[0].cpu(), seconds)
        frame_times = [float(f"{s:.1f}") for s in seconds]
        vision = {"pixel_values_videos": pixel_values, "video_token_pooling": pooling, "video_grids": grid}
        return vision, replacement, frame_times

    # ------------------------------------------------------------------ image
    def _image_inputs(self, frame: Frame):
        cfg = self.image
        height, width = frame.image.shape[:2]
        key = (frame.frame_id, frame.stamp_ns, height, width)
        cached = self._image_cache.get(key)
        if cached is None:
            cached = self._image_crops(frame.image, cfg)
            self.frames_processed += 1
        self._image_cache = {key: cached}
        patches, pooling, grid = cached
        replacement = self.processor.replace_image_token({"image_grids": [grid[0].tolist()]}, 0)
        vision = {
            "pixel_values": patches,
            "image_token_pooling": pooling,
            "image_grids": grid,
            "image_num_crops": torch.tensor([patches.shape[0]], dtype=torch.int64, device=self.device),
        }
        return vision, replacement

    def _image_crops(self, image: np.ndarray, cfg: "_PixelConfig"):
        """One global view at crop size plus overlapping crops of a resized canvas
        (Molmo2ImageProcessor._image_batch_to_patches_and_grids for one image)."""
        crop, patch = cfg.crop_size, cfg.patch_size
        left, right = cfg.overlap_margins
        window = (crop // patch - left - right) * patch
        tiling_h, tiling_w, canvas_h, canvas_w = compute_crop_geometry(
            image.shape[0], image.shape[1], max_crops=cfg.max_crops, overlap_margins=cfg.overlap_margins,
            crop_size=crop, patch_size=patch)
        canvas = self.resize_normalised([image], cfg, canvas_h, canvas_w)[0]
        crops = canvas.unfold(0, crop, window).unfold(1, crop, window)        # th, tw, C, crop, crop
        crops = crops.permute(0, 1, 3, 4, 2).reshape(tiling_h * tiling_w, crop, crop, -1)
        low_res = self.resize_normalised([image], cfg, crop, crop)[0]
        patches = cfg.patchify(torch.cat([low_res[None], crops]))
        pooling, rows, cols = cfg.crop_pooling(tiling_h, tiling_w, canvas_h, canvas_w)
        low_pooling, low_rows, low_cols = cfg.pooling(crop // patch, crop // patch)
        pooling = torch.cat([low_pooling, torch.where(pooling >= 0, pooling + (crop // patch) ** 2, -1)])
        grid = torch.tensor([[low_rows, low_cols, rows, cols]], dtype=torch.int64, device=self.device)
        return patches, pooling, grid

    # ------------------------------------------------------------------ pixels
    def resize_normalised(self, images: list[np.ndarray], cfg: "_PixelConfig", out_h: int, out_w: int):
        """K uint8 H x W x 3 images of one size -> normalised float K x out_h x out_w x 3 on the device."""
        if len(images) == 1:
            source = torch.from_numpy(np.ascontiguousarray(images[0]))[None].to(self.device)
        else:     # copied straight into one device tensor, without stacking them on the host first
            source = torch.empty((len(images), *images[0].shape), dtype=torch.uint8, device=self.device)
            for i, image in enumerate(images):
                source[i].copy_(torch.from_numpy(np.ascontiguousarray(image)))
        return cfg.normalise(resize_u8(source, out_h, out_w))


def resize_u8(images: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """K x H x W x 3 uint8 -> K x out_h x out_w x 3 uint8, equal to transformers' Molmo2
    `resize_and_normalize_image` before rescaling (float bilinear without antialias,
    rounded and clamped back to uint8) on this CPU at the current torch thread count."""
    if images.dim() != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"expected K x H x W x 3 uint8 images, got {tuple(images.shape)} {images.dtype}")
    count, in_h, in_w = images.shape[:3]
    if (in_h, in_w) == (out_h, out_w):   # torchvision returns the image untouched
        return images
    # The kernel torch picks for 3 channels (upsample_bilinear2d_kernel_impl_float).
    channels_last = torch.get_num_threads() == 1 or out_h + out_w <= 128
    taps = _taps(in_h, in_w, out_h, out_w, channels_last, images.device)
    index = taps.index
    if count > 1:
        index = (index + torch.arange(count, device=images.device).view(-1, 1) * (in_h * in_w)).view(-1)
    pixels = out_h * out_w
    values = images.view(-1, 3).index_select(0, index).view(count, pixels, 4, 3).float()   # pixel-major
    approx = values[:, :, 0] * taps.approx[:, 0]
    for k in (1, 2, 3):
        approx.addcmul_(values[:, :, k], taps.approx[:, k])
    out = approx.round()
    near = ((approx - out).abs_().view(-1) > 0.5 - _TIE_BAND).nonzero().view(-1)
    if near.numel():
        image, pixel, channel = near // (3 * pixels), (near // 3) % pixels, near % 3
        out.view(-1)[near] = _exact_bilinear(values[image, pixel, :, channel].t(), [w[pixel] for w in taps.exact],
                                             taps.channels_last).round()
    return out.clamp_(0, 255).to(torch.uint8).view(count, out_h, out_w, 3)


@functools.lru_cache(maxsize=8)
def _taps(in_h: int, in_w: int, out_h: int, out_w: int, channels_last: bool, device) -> _Taps:
    y0, y1, h0, h1 = _axis_taps(in_h, out_h)
    x0, x1, w0, w1 = _axis_taps(in_w, out_w)
    pixel = np.stack([y0[:, None] * in_w + x0, y0[:, None] * in_w + x1,
                      y1[:, None] * in_w + x0, y1[:, None] * in_w + x1])          # 4, oh, ow
    index = pixel.transpose(1, 2, 0).reshape(-1).astype(np.int32 if in_h * in_w < 2**31 else np.int64)
    h0, h1, w0, w1 = h0[:, None], h1[:, None], w0[None, :], w1[None, :]
    w00, w01, w10, w11 = h0 * w0, h0 * w1, h1 * w0, h1 * w1                       # float32, as torch does
    approx = np.stack([w00, w01, w10, w11], axis=-1).reshape(-1, 4, 1)
    if channels_last:
        # out = ((a*w00 + b*w01) + c*w10) + d*w11, compiled as fma(d, w11, fma(c, w10, fma(a, w00, b*w01)))
        exact = (w01, w00.astype(np.float64), w10.astype(np.float64), w11.astype(np.float64))
    else:
        # per row t = a*w0 + b*w1 = fma(a, w0, b*w1); then out = fma(t0, h0, t1*h1)
        exact = (w1, w0.astype(np.float64), h1, h0.astype(np.float64))
    as_tensor = lambda a: torch.from_numpy(np.array(a)).to(device)  # noqa: E731  (a writable copy)
    exact = tuple(as_tensor(np.broadcast_to(w, (out_h, out_w)).reshape(-1)) for w in exact)
    return _Taps(as_tensor(index), as_tensor(approx), channels_last, exact)


def _exact_bilinear(values: torch.Tensor, weights: list[torch.Tensor], channels_last: bool) -> torch.Tensor:
    """torch's float32 result for taps `values` (4, m), operation for operation; a float32
    fma(x, y, z) is z + x*y in float64 (where x*y is exact), rounded once."""
    a, b, c, d = values
    if channels_last:
        w01, w00, w10, w11 = weights
        out = (b * w01).double().addcmul_(a.double(), w00).float()
        out = out.double().addcmul_(c.double(), w10).float()
        return out.double().addcmul_(d.double(), w11).float()
    w1, w0, h1, h0 = weights
    top = (b * w1).double().addcmul_(a.double(), w0).float()
    bottom = (d * w1).double().addcmul_(c.double(), w0).float()
    return (bottom * h1).double().addcmul_(top.double(), h0).float()


class _PixelConfig:
    """One sub-processor's pixel settings, its rescale/normalise step and shape caches."""

    def __init__(self, sub_processor, device: torch.device):
        resample = getattr(sub_processor, "resample", PILImageResampling.BILINEAR)
        if resample is not None and int(resample) != int(PILImageResampling.BILINEAR):
            raise ValueError(f"{type(sub_processor).__name__}: the fast path reproduces bilinear resizing only, "
                             f"the processor uses resample={resample!r}")
        size = sub_processor.size
        height, width = (size["height"], size["width"]) if isinstance(size, dict) else (size.height, size.width)
        if height != width:
            raise ValueError(f"Molmo2 only supports a square size, got {height}x{width}")
        self.crop_size = height
        self.patch_size = sub_processor.patch_size
        self.pool_h, self.pool_w = sub_processor.pooling_size
        self.max_crops = getattr(sub_processor, "max_crops", None)
        self.overlap_margins = list(getattr(sub_processor, "overlap_margins", None) or [0, 0])
        self.device = device
        self._sub_processor = sub_processor
        mean, std = sub_processor.image_mean, sub_processor.image_std
        self._normalise_args = (sub_processor.do_rescale, sub_processor.rescale_factor, sub_processor.do_normalize,
                                tuple(mean) if isinstance(mean, list) else mean,
                                tuple(std) if isinstance(std, list) else std)
        self._pooling: dict[tuple, tuple] = {}

    def normalise(self, images_u8: torch.Tensor) -> torch.Tensor:
        """... x H x W x 3 uint8 -> float, through the processor's own rescale_and_normalize."""
        chw = self._sub_processor.rescale_and_normalize(images_u8.movedim(-1, -3), *self._normalise_args)
        return chw.movedim(-3, -1)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """[..., S, S, C] -> [..., n_patches, patch*patch*C] (batch_pixels_to_patches)."""
        *lead, height, width, channels = images.shape
        p = self.patch_size
        x = images.reshape(*lead, height // p, p, width // p, p, channels).transpose(-4, -3)
        return x.reshape(*lead, (height // p) * (width // p), p * p * channels)

    def pooling(self, rows: int, cols: int):
        """Pooling windows over a rows x cols patch grid, padded with -1 (cached)."""
        key = ("grid", rows, cols)
        if key not in self._pooling:
            grid = torch.arange(rows * cols, dtype=torch.int32).reshape(rows, cols)
            indices, r, c = arange_for_pooling(grid, self.pool_h, self.pool_w)
            self._pooling[key] = (indices.to(self.device), r, c)
        return self._pooling[key]

    def crop_pooling(self, tiling_h: int, tiling_w: int, canvas_h: int, canvas_w: int):
        """Pooling windows over the crops' patches with the overlap margins removed
        (Molmo2ImageProcessor._build_overlapping_crops), cached by tiling."""
        key = ("crops", tiling_h, tiling_w, canvas_h, canvas_w)
        if key not in self._pooling:
            n = self.crop_size // self.patch_size
            left, right = self.overlap_margins
            grid = torch.arange(tiling_h * tiling_w * n * n, dtype=torch.int32).reshape(tiling_h, tiling_w, n, n)
            if left:
                grid[1:, :, :left, :] = -1
                grid[:, 1:, :, :left] = -1
            if right:
                grid[:-1, :, -right:, :] = -1
                grid[:, :-1, :, -right:] = -1
            grid = grid.permute(0, 2, 1, 3).reshape(-1)
            grid = grid[grid >= 0].reshape(canvas_h // self.patch_size, canvas_w // self.patch_size)
            indices, r, c = arange_for_pooling(grid, self.pool_h, self.pool_w)
            self._pooling[key] = (indices.to(self.device), r, c)
        return self._pooling[key]
