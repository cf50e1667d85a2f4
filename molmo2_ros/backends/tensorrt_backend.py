"""TensorRT backend over engines built by `molmo2-engines build` (backends.tensorrt_build).

The engine folder's manifest is checked against this machine first (TensorRT version,
GPU compute capability, CUDA major version, engine file sizes and hashes, optionally the
source checkpoint hash); a mismatch is refused with engine_folder.EngineMismatch, or
rebuilt from the folder's ONNX graphs when `build_if_needed` is set. Buffers are torch
CUDA tensors; the KV cache never leaves the GPU.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from molmo2_ros.backends.kv_greedy import GraphBackend


def _torch_dtype(trt, torch, dtype):
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int64: torch.int64, trt.bool: torch.bool, trt.int8: torch.int8}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    return table[dtype]


class _Engine:
    """One deserialized engine with its execution context."""

    def __init__(self, trt, torch, runtime, path: Path):
        self.trt, self.torch = trt, torch
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            from molmo2_ros.backends.engine_folder import EngineMismatch, build_command

            raise EngineMismatch(f"{path}: TensorRT could not deserialize the engine. "
                                 f"{build_command(path.parent, None)}")
        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: _torch_dtype(trt, torch, engine.get_tensor_dtype(n)) for n in names}

    def __call__(self, feeds: dict, stream) -> dict:
        torch = self.torch
        keep = []
        for name in self.inputs:
            value = feeds[name]
            if not torch.is_tensor(value):
                value = torch.from_numpy(np.ascontiguousarray(value))
            value = value.to("cuda", self.dtypes[name]).contiguous()
            keep.append(value)
            self.context.set_input_shape(name, tuple(value.shape))
            self.context.set_tensor_address(name, value.data_ptr())
        outputs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed (see the TensorRT log)")
        stream.synchronize()
        return outputs


class TrtRunner:
    """TensorRT engines on the GPU (kv_greedy.GraphRunner)."""

    def __init__(self, folder: str | Path):
        import tensorrt as trt
        import torch

        from molmo2_ros.backends.tensorrt_build import ENGINE_FILES
        from molmo2_ros.backends.engine_folder import DECODE_FILE, PREFILL_FILE, VISION_FILE

        folder = Path(folder)
        self.torch = torch
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.vision_engine = _Engine(trt, torch, self.runtime, folder / ENGINE_FILES[VISION_FILE])
        self.prefill_engine = _Engine(trt, torch, self.runtime, folder / ENGINE_FILES[PREFILL_FILE])
        self.decode_engine = _Engine(trt, torch, self.runtime, folder / ENGINE_FILES[DECODE_FILE])
        self.past_names = self.decode_engine.inputs[3:]
        self.present_names = [n for n in self.decode_engine.outputs if n != "logits"]
        self.stream = torch.cuda.Stream()

    def vision(self, pixel_values, pooling, valid_tokens):
        out = self.vision_engine({"pixel_values": pixel_values, "pooling": pooling}, self.stream)
        return out["features"][self.torch.from_numpy(valid_tokens).to("cuda")]

    def _split(self, outputs: dict):
        return outputs["logits"].float().cpu().numpy(), [outputs[n] for n in self.present_names]

    def prefill(self, input_ids, image_features, attention_mask, position_ids, mm_token_type_ids):
        return self._split(self.prefill_engine({
            "input_ids": input_ids, "image_features": image_features, "attention_mask": attention_mask,
            "position_ids": position_ids, "mm_token_type_ids": mm_token_type_ids}, self.stream))

    def decode(self, input_ids, attention_mask, position_ids, kv):
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        feeds.update(zip(self.past_names, kv))
        return self._split(self.decode_engine(feeds, self.stream))


class TensorRTBackend(GraphBackend):
    """Backend protocol (molmo2_ros.core.backend) over TensorRT engines."""

    name = "tensorrt"

    def __init__(self, engine_dir: str | Path, *, source_hash: str | None = None, build_if_needed: bool = False):
        from molmo2_ros.backends import engine_folder as manifest

        try:
            data = manifest.check_folder(engine_dir, runtime="tensorrt", source_hash=source_hash)
        except manifest.EngineMismatch:
            if not build_if_needed:
                raise
            from molmo2_ros.backends.tensorrt_build import build_engines

            build_engines(engine_dir)
            data = manifest.check_folder(engine_dir, runtime="tensorrt", source_hash=source_hash)
        super().__init__(engine_dir, TrtRunner(engine_dir), data, preprocess_device="cuda")
