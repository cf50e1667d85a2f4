"""TensorRT backend over engines built by `molmo2-engines build` (backends.tensorrt_build).

The engine folder's manifest is checked against this machine first (TensorRT version,
GPU compute capability, CUDA major version, engine file sizes and hashes, optionally the
source checkpoint hash); a mismatch is refused with engine_folder.EngineMismatch, or
rebuilt from the folder's ONNX graphs when `build_if_needed` is set. Buffers are torch
CUDA tensors; the KV cache is preallocated (backends.kv_cache) and never leaves the GPU.
Code-reviewed against the TensorRT 10.3 and 11.x Python APIs; not run here (no GPU).
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


def _deserialize(runtime, path: Path):
    """Deserialize an engine from a read-only memory map of its file: no anonymous host copy
    of the engine outlives this call (on Jetson's unified memory that copy is GPU memory)."""
    import mmap

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        from molmo2_ros.backends.engine_folder import EngineMismatch, build_command

        raise EngineMismatch(f"{path}: TensorRT could not deserialize the engine. {build_command(path.parent, None)}")
    return engine


class _Context:
    """An execution context of a deserialized engine, fixed to one optimisation profile."""

    def __init__(self, trt, torch, engine, profile: int, stream):
        self.trt, self.torch, self.engine = trt, torch, engine
        strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
        # ON_PROFILE_CHANGE sizes the context's activation memory for its own profile (TensorRT 10+);
        # the default would give the decode context the prefill profile's size as well
        self.context = (engine.create_execution_context(strategy.ON_PROFILE_CHANGE) if strategy is not None
                        else engine.create_execution_context())
        if profile:   # a new context starts on profile 0
            self.context.set_optimization_profile_async(profile, stream.cuda_stream)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: _torch_dtype(trt, torch, engine.get_tensor_dtype(n)) for n in names}

    def bind_inputs(self, feeds: dict) -> list:
        """Shapes and addresses of the inputs (numpy or torch); returns the device tensors,
        which the caller keeps alive until the engine has run."""
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
        return keep

    def new_outputs(self) -> dict:
        """Output tensors sized for the bound input shapes, bound to the context."""
        outputs = {}
        for name in self.outputs:
            outputs[name] = self.torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name],
                                             device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        return outputs

    def run(self, stream) -> None:
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed (see the TensorRT log)")


class TrtRunner:
    """TensorRT engines on the GPU (kv_greedy.GraphRunner): `vision.plan`, and `lm.plan` with
    one execution context per optimisation profile (prefill = 0, decode = 1) over the one
    deserialized engine, so the language model's weights are on the device once.

    Everything runs on one CUDA stream: the torch work between engines (dropping padding
    rows of the features, writing new KV into the cache) is issued on the stream the
    engines run on, so no engine reads a buffer before torch has written it. The decode
    context's shapes and tensor addresses (preallocated cache, token, position, logits) are
    set once; a step launches it and copies the logits out."""

    def __init__(self, folder: str | Path, capacity: int):
        import tensorrt as trt
        import torch

        from molmo2_ros.backends.engine_folder import LM_FILE, VISION_FILE
        from molmo2_ros.backends.kv_cache import StaticKVCache
        from molmo2_ros.backends.tensorrt_build import ENGINE_FILES, LM_PROFILES

        folder = Path(folder)
        self.torch = torch
        self.stream = torch.cuda.Stream()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.vision_engine = _deserialize(self.runtime, folder / ENGINE_FILES[VISION_FILE])
        self.lm_engine = _deserialize(self.runtime, folder / ENGINE_FILES[LM_FILE])
        self.vision_context = _Context(trt, torch, self.vision_engine, 0, self.stream)
        self.prefill_context = _Context(trt, torch, self.lm_engine, LM_PROFILES.index("prefill"), self.stream)
        decode = self.decode_context = _Context(trt, torch, self.lm_engine, LM_PROFILES.index("decode"), self.stream)
        self.capacity = capacity
        past_names = [n for n in decode.inputs if n.startswith("past.")]
        _, kv_heads, _, head_dim = self.lm_engine.get_tensor_shape(past_names[0])
        hidden = self.lm_engine.get_tensor_shape("image_features")[1]
        kv_dtype = decode.dtypes[past_names[0]]
        with torch.cuda.stream(self.stream):
            self.cache = StaticKVCache(torch, num_layers=len(past_names) // 2, kv_heads=kv_heads, head_dim=head_dim,
                                       capacity=capacity, dtype=kv_dtype, device="cuda")
            self.token = torch.zeros((1, 1), dtype=torch.int64, device="cuda")
            self.position = torch.zeros((1, 1), dtype=torch.int64, device="cuda")
            # prefill's cache: one empty slot (masked out); decode's image features: one unused row
            self.empty_past = torch.zeros((1, kv_heads, 1, head_dim), dtype=kv_dtype, device="cuda")
            self.empty_mask = torch.zeros((1, 1), dtype=torch.int64, device="cuda")
            one_token = {"input_ids": self.token, "position_ids": self.position,
                         "attention_mask": torch.ones((1, 1), dtype=torch.int64, device="cuda"),
                         "mm_token_type_ids": torch.zeros((1, 1), dtype=torch.int64, device="cuda"),
                         "image_features": torch.zeros((1, hidden), dtype=decode.dtypes["image_features"],
                                                       device="cuda")}
            self.decode_feeds = decode.bind_inputs({**one_token, "past_mask": self.cache.mask,
                                                    **dict(zip(past_names, self.cache.past))})
            self.decode_outputs = decode.new_outputs()
        new_names = [n for n in decode.outputs if n.startswith("new.")]
        for name, tensor in zip(new_names, self.cache.new):   # the step writes straight into the cache's `new`
            decode.context.set_tensor_address(name, tensor.data_ptr())
        self.past_names, self.new_names = past_names, new_names

    def vision(self, pixel_values, pooling, valid_tokens):
        torch = self.torch
        with torch.cuda.stream(self.stream):
            keep = self.vision_context.bind_inputs({"pixel_values": pixel_values, "pooling": pooling})
            out = self.vision_context.new_outputs()
            self.vision_context.run(self.stream)
            features = out["features"][torch.from_numpy(np.asarray(valid_tokens)).to("cuda")]
        self.stream.synchronize()
        del keep
        return features

    def prefill(self, input_ids, image_features, attention_mask, position_ids, mm_token_type_ids):
        torch = self.torch
        context = self.prefill_context
        with torch.cuda.stream(self.stream):
            keep = context.bind_inputs({"input_ids": input_ids, "image_features": image_features,
                                        "attention_mask": attention_mask, "position_ids": position_ids,
                                        "mm_token_type_ids": mm_token_type_ids, "past_mask": self.empty_mask,
                                        **{name: self.empty_past for name in self.past_names}})
            out = context.new_outputs()
            context.run(self.stream)
            self.cache.load([out[n] for n in self.new_names], attention_mask)
            logits = out["logits"].float().cpu().numpy()   # .cpu() waits for the stream
        del keep
        return logits

    def decode(self, token, position):
        with self.torch.cuda.stream(self.stream):
            self.token.fill_(token)
            self.position.fill_(position)
            self.decode_context.run(self.stream)
            self.cache.append()
            return self.decode_outputs["logits"].float().cpu().numpy()


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
        settings = data["export"]["settings"]
        runner = TrtRunner(engine_dir, settings["max_prompt"] + settings["max_new_tokens"])
        super().__init__(engine_dir, runner, data, preprocess_device="cuda")
