"""Vision features of video frames already seen, reused across queries on the same window.

Molmo2 encodes each video frame on its own: the ViT runs per frame and the adapter pools
3x3 windows inside one frame, so a frame's pooled features (one row per video token)
do not depend on the other frames. `VisionFeatureCache` keeps them by frame (the key of
`FastPreprocessor.frame_keys`) and hands generate() `mm_encoder_outputs` instead of the
pixels, so a query on a window that gained one frame runs the vision tower on that frame.
"""
from __future__ import annotations

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

PIXEL_KEYS = ("pixel_values_videos", "video_token_pooling", "video_grids")


class VisionFeatureCache:
    """Pooled vision features per video frame of the latest window.

    `frames_encoded` counts the frames that went through the vision tower.
    """

    def __init__(self, model):
        self.model = model
        self.frames_encoded = 0
        self._features: dict[tuple, torch.Tensor] = {}

    def video_inputs(self, keys: list[tuple], tensors: dict) -> dict:
        """A video's model inputs (ModelInputs.tensors, on the model's device) with the
        pixel tensors replaced by the frames' pooled features as `mm_encoder_outputs`."""
        pixels, pooling = tensors["pixel_values_videos"], tensors["video_token_pooling"]
        num_frames, rows, cols = (int(v) for v in tensors["video_grids"][0])
        if len(keys) != num_frames:
            raise ValueError(f"{len(keys)} frame keys for a video of {num_frames} frames")
        tokens, patches = rows * cols, pixels.shape[1]
        new = [i for i, key in enumerate(keys) if key not in self._features]
        if new:
            index = torch.tensor(new, device=pixels.device)
            windows = pooling.view(num_frames, tokens, -1)[index]
            # re-base each frame's patch indices from its place in the window to its place in the batch
            shift = ((index - torch.arange(len(new), device=pixels.device)) * patches).view(-1, 1, 1)
            windows = torch.where(windows >= 0, windows - shift, windows).reshape(-1, windows.shape[-1])
            grid = torch.tensor([[len(new), rows, cols]], device=pixels.device)
            with torch.inference_mode():
                features = self.model.get_video_features(pixels[index], windows, grid).pooler_output[0]
            self._features.update((keys[i], f) for i, f in zip(new, features.view(len(new), tokens, -1)))
            self.frames_encoded += len(new)
        self._features = {key: self._features[key] for key in keys}      # the latest window only
        features = torch.cat([self._features[key] for key in keys])
        rest = {k: v for k, v in tensors.items() if k not in PIXEL_KEYS}
        return {**rest, "mm_encoder_outputs": {"video": BaseModelOutputWithPooling(pooler_output=(features,))}}
