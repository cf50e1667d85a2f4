"""ONNX Runtime backend over an exported engine folder (molmo2_ros.engines.export), CPU or CUDA.

The KV cache stays where the provider computes (OrtValues bound through IO binding), so
a CUDA decode step copies only the new token and the logits across the bus.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from molmo2_ros.backends.kv_greedy import GraphBackend

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def resolve_providers(device: str | None) -> list[str]:
    """"cpu", "cuda" or None/"auto" (CUDA when onnxruntime-gpu sees a GPU)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device in (None, "", "auto"):
        return [CUDA, CPU] if CUDA in available else [CPU]
    if str(device).startswith("cuda"):
        if CUDA not in available:
            raise ValueError(f"device {device!r} requested but this onnxruntime has no CUDA provider "
                             f"(available: {', '.join(available)}); install onnxruntime-gpu or use device='cpu'")
        return [CUDA, CPU]
    if device == "cpu":
        return [CPU]
    raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'auto'")


class OrtRunner:
    """molmo2_ros.engines.export graphs in ONNX Runtime sessions (kv_greedy.GraphRunner)."""

    def __init__(self, folder: str | Path, providers: Sequence[str], threads: int | None = None):
        import onnxruntime as ort

        from molmo2_ros.backends.engine_folder import DECODE_FILE, PREFILL_FILE, VISION_FILE

        folder = Path(folder)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self._ort = ort
        self.device = "cuda" if providers[0] == CUDA else "cpu"
        self.vision_session = ort.InferenceSession(str(folder / VISION_FILE), options, providers=list(providers))
        self.prefill_session = ort.InferenceSession(str(folder / PREFILL_FILE), options, providers=list(providers))
        self.decode_session = ort.InferenceSession(str(folder / DECODE_FILE), options, providers=list(providers))
        self.present_names = [o.name for o in self.decode_session.get_outputs()][1:]
        self.past_names = [i.name for i in self.decode_session.get_inputs()][3:]
        self.feature_type = np.float16 if "float16" in self.prefill_session.get_inputs()[1].type else np.float32

    def vision(self, pixel_values, pooling, valid_tokens):
        (features,) = self.vision_session.run(["features"], {"pixel_values": pixel_values, "pooling": pooling})
        return features[valid_tokens].astype(self.feature_type, copy=False)

    def _run(self, session, cpu_inputs: dict, kv=None):
        binding = session.io_binding()
        for name, value in cpu_inputs.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, value in zip(self.past_names, kv or ()):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in self.present_names:
            binding.bind_output(name, self.device)
        session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        return outputs[0].numpy(), outputs[1:]

    def prefill(self, input_ids, image_features, attention_mask, position_ids, mm_token_type_ids):
        return self._run(self.prefill_session, {
            "input_ids": input_ids, "image_features": image_features, "attention_mask": attention_mask,
            "position_ids": position_ids, "mm_token_type_ids": mm_token_type_ids})

    def decode(self, input_ids, attention_mask, position_ids, kv):
        return self._run(self.decode_session, {
            "input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}, kv)


class OnnxRuntimeBackend(GraphBackend):
    """Backend protocol (molmo2_ros.core.backend) over ONNX Runtime sessions."""

    name = "onnxruntime"

    def __init__(self, engine_dir: str | Path, *, device: str | None = None, source_hash: str | None = None,
                 threads: int | None = None):
        from molmo2_ros.backends import engine_folder as manifest

        data = manifest.check_folder(engine_dir, runtime="onnxruntime", source_hash=source_hash)
        self.providers = resolve_providers(device)
        runner = OrtRunner(engine_dir, self.providers, threads)
        super().__init__(engine_dir, runner, data, preprocess_device=runner.device)
