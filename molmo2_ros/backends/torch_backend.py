"""Torch backend: transformers' native Molmo2 (no remote code), greedy decoding.

Loads a hub id or a local folder with `from_pretrained`, safetensors only unless the
user explicitly allows pickle; picks cuda+bf16 when a GPU is there, else cpu+fp32.
"""
from __future__ import annotations

import gc
from pathlib import Path
from typing import Callable, Sequence

import torch
from transformers import (
    AutoProcessor,
    LogitsProcessor,
    LogitsProcessorList,
    Molmo2ForConditionalGeneration,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from molmo2_ros.backends.default_model import HUB_MODEL
from molmo2_ros.backends.fast_preprocess import FastPreprocessor
from molmo2_ros.backends.frame_features import VisionFeatureCache
from molmo2_ros.backends.inputs import ModelInputs
from molmo2_ros.core.backend import Generation, NonFiniteLogitsError, TextPiece, staged_generation
from molmo2_ros.core.grounding import Frame

DTYPES = {
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


# Static caches are sized in multiples of this many tokens, so queries of similar
# length reuse one cache (and its compiled decode graph) instead of recompiling.
STATIC_CACHE_BUCKET = 1024


def cache_kwargs(static_cache: bool, prompt_tokens: int, max_new_tokens: int) -> dict:
    """generate() arguments for the KV cache: none (dynamic) or a bucketed static cache."""
    if not static_cache:
        return {}
    needed = prompt_tokens + max_new_tokens
    return {"cache_implementation": "static",
            "max_cache_len": -(-needed // STATIC_CACHE_BUCKET) * STATIC_CACHE_BUCKET}


class ModelNotFoundError(OSError):
    """The checkpoint is neither a local folder with weights nor in the hub cache."""


class PickleWeightsRefusedError(ValueError):
    """Only pickle weights are available and pickle loading was not allowed."""


def how_to_fetch(model: str) -> str:
    return (f"Fetch the weights first, e.g. `hf download {model}` (or `huggingface-cli download {model}`), "
            f"then run again, or pass a local folder saved with save_pretrained.")


def resolve_device(device: str | None) -> str:
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    return str(device)


def resolve_dtype(dtype, device: str) -> torch.dtype:
    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)} or 'auto'") from None


def _looks_like_path(model: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else is a local folder."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or Path(model).expanduser().exists()


def _check_local_folder(folder: Path, allow_pickle: bool) -> None:
    if not folder.is_dir():
        raise ModelNotFoundError(f"model folder {folder} does not exist. {how_to_fetch(HUB_MODEL)}")
    files = [p.name for p in folder.iterdir()]
    if any(n.endswith(".safetensors") for n in files):
        return
    if any(n.endswith(PICKLE_SUFFIXES) for n in files):
        if allow_pickle:
            return
        raise PickleWeightsRefusedError(
            f"{folder} holds only pickle weights ({', '.join(n for n in files if n.endswith(PICKLE_SUFFIXES))}); "
            "pickle files can run arbitrary code when loaded. Convert them to safetensors "
            "(load once where you trust them and save_pretrained), or pass allow_pickle=True "
            "(--allow-pickle) if you trust their source.")
    raise ModelNotFoundError(f"{folder} has no model weights (*.safetensors). {how_to_fetch(HUB_MODEL)}")


class FiniteLogitsGuard(LogitsProcessor):
    """Raise instead of decoding garbage when a step's logits are NaN or +inf (or all -inf)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        bad = torch.isnan(scores).any(-1) | torch.isposinf(scores).any(-1) | torch.isneginf(scores).all(-1)
        if bool(bad.any()):
            step = input_ids.shape[-1]
            raise NonFiniteLogitsError(
                f"the model produced non-finite logits (NaN/inf) at sequence position {step}. The weights or a "
                "buffer are corrupted, or the dtype overflows: try dtype='float32', re-download the checkpoint, "
                "or check the transformers version (rotary inv_freq corruption was reported after 5.5).")
        return scores


class _StopWhen(StoppingCriteria):
    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop = should_stop
        self.stopped = False

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        self.stopped = self.stopped or bool(self.should_stop())
        return torch.full((input_ids.shape[0],), self.stopped, dtype=torch.bool, device=input_ids.device)


class _TokenStreamer(BaseStreamer):
    """transformers' streamer interface: generate() puts the prompt's ids first, then each
    new token as it is chosen; the new ones go to `on_token`."""

    def __init__(self, on_token: Callable[[int], None]):
        self.on_token = on_token
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.on_token(token)

    def end(self) -> None:
        pass


class TorchBackend:
    """Backend protocol (molmo2_ros.core.backend) over `Molmo2ForConditionalGeneration`."""

    name = "torch"

    def __init__(self, model: str, *, device: str | None = None, dtype=None, allow_pickle: bool = False,
                 local_files_only: bool = False, revision: str | None = None,
                 static_cache: bool | None = None):
        self.model_id = str(model)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        # A static KV cache lets transformers compile the decode step into CUDA graphs
        # (batch-1 decode is kernel-launch bound); on CPU it only costs memory.
        self.static_cache = self.device.startswith("cuda") if static_cache is None else static_cache
        source = str(model)
        if _looks_like_path(source):
            folder = Path(source).expanduser()
            _check_local_folder(folder, allow_pickle)
            source = str(folder)
        common = dict(revision=revision, local_files_only=local_files_only, trust_remote_code=False)
        try:
            self.processor = AutoProcessor.from_pretrained(source, **common)
            self.model = Molmo2ForConditionalGeneration.from_pretrained(
                source, dtype=self.dtype, device_map=self.device, use_safetensors=not allow_pickle, **common)
        except OSError as exc:
            if not allow_pickle and "safetensors" in str(exc).lower():
                raise PickleWeightsRefusedError(
                    f"{model}: no safetensors weights ({exc}). Pass allow_pickle=True (--allow-pickle) only if "
                    "you trust the checkpoint's source.") from exc
            raise ModelNotFoundError(f"cannot load {model!r}: {exc}\n{how_to_fetch(self.model_id)}") from exc
        self.model.eval()
        self.tokenizer = self.processor.tokenizer
        # Same inputs as inputs.build_inputs (the HF processor), computed per frame and cached.
        self.preprocessor = FastPreprocessor(self.processor, device=self.device)
        self.vision_cache = VisionFeatureCache(self.model)     # frames' vision features, reused likewise

    def prepare(self, frames: Sequence[Frame], prompt: str) -> ModelInputs:
        """Processor inputs on the model's device (what generate() feeds the model)."""
        inputs = self.preprocessor.build(frames, prompt, return_tensors="pt")
        inputs.tensors = {
            k: v.to(self.device, dtype=self.dtype if v.is_floating_point() else None)
            for k, v in inputs.tensors.items()
        }
        return inputs

    def generate(self, frames: Sequence[Frame], prompt: str, *, max_new_tokens: int,
                 progress: Callable[[str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 on_text: Callable[[TextPiece], None] | None = None) -> Generation:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if self.model is None:
            raise RuntimeError("backend is closed")
        return staged_generation(lambda: self.prepare(frames, prompt),
                                 lambda inputs, on_token: self._decode(frames, inputs, max_new_tokens, should_stop,
                                                                       on_token),
                                 lambda tokens: self.tokenizer.decode(tokens, skip_special_tokens=True),
                                 progress=progress, should_stop=should_stop, on_text=on_text)

    def _decode(self, frames: Sequence[Frame], inputs: ModelInputs, max_new_tokens: int,
                should_stop: Callable[[], bool] | None, on_token: Callable[[int], None] | None) -> list[int]:
        stopping = StoppingCriteriaList([_StopWhen(should_stop)] if should_stop else [])
        tensors = inputs.tensors
        if inputs.is_video:
            tensors = self.vision_cache.video_inputs(self.preprocessor.frame_keys(frames), tensors)
        cache = cache_kwargs(self.static_cache, inputs.tensors["input_ids"].shape[1], max_new_tokens)
        with torch.inference_mode():
            output = self.model.generate(
                **tensors, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                logits_processor=LogitsProcessorList([FiniteLogitsGuard()]), stopping_criteria=stopping,
                streamer=None if on_token is None else _TokenStreamer(on_token), **cache)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return output[0, inputs.tensors["input_ids"].shape[1]:].tolist()

    @property
    def compiles_on_first_use(self) -> bool:
        return self.static_cache and self.device.startswith("cuda")

    def close(self) -> None:
        self.model = None
        self.preprocessor = self.vision_cache = None   # their frame caches may hold GPU memory
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
