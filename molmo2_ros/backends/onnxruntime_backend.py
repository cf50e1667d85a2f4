"""ONNX Runtime backend over an exported engine folder (molmo2_ros.engines.export), CPU or CUDA.

Tensors are torch tensors on the provider's device bound through IO binding: the vision
features and the preallocated KV cache never leave the device; a decode step copies only
the logits to the host.
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


_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


def _session(ort, path: Path, options, providers):
    """An InferenceSession, or EngineMismatch with ONNX Runtime's reason in one line."""
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as exc:  # noqa: BLE001 - ORT raises its own pybind exception types
        from molmo2_ros.backends.engine_folder import EngineMismatch, export_command

        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineMismatch(f"{path}: ONNX Runtime cannot load this graph ({type(exc).__name__}: {reason}). "
                             f"{export_command(path.parent, None)}") from None


class OrtRunner:
    """molmo2_ros.engines.export graphs in ONNX Runtime sessions (kv_greedy.GraphRunner): one
    session for the vision graph, one for the language-model graph that serves prefill and
    decode, so each weight is loaded once.

    Every tensor the graphs exchange is a torch tensor on the provider's device, bound by
    address (IO binding): vision features go to the prefill without leaving the device, and
    the decode binding is made once, over the preallocated KV cache (backends.kv_cache) and
    fixed token/position/logits buffers, so a step moves only the logits to the host."""

    def __init__(self, folder: str | Path, providers: Sequence[str], threads: int | None, capacity: int, *,
                 prepack: bool = False):
        import onnxruntime as ort
        import torch

        from molmo2_ros.backends.engine_folder import LM_FILE, VISION_FILE
        from molmo2_ros.backends.kv_cache import StaticKVCache

        folder = Path(folder)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if not prepack:
            options.add_session_config_entry("session.disable_prepacking", "1")
        self.torch = torch
        self.device = "cuda" if providers[0] == CUDA else "cpu"
        self.torch_device = torch.device("cuda", 0) if self.device == "cuda" else torch.device("cpu")
        self.vision_session = _session(ort, folder / VISION_FILE, options, providers)
        self.lm_session = _session(ort, folder / LM_FILE, options, providers)
        types = {i.name: i.type for s in (self.vision_session, self.lm_session)
                 for i in [*s.get_inputs(), *s.get_outputs()]}
        for name in ("features", "image_features", "past.0.key"):
            if types[name] not in _NUMPY:
                raise ValueError(f"ONNX Runtime runs fp32/fp16 graphs; {name} is {types[name]}")
        self.feature_dtype = self._torch_dtype(types["features"])
        self.image_feature_dtype = self._torch_dtype(types["image_features"])
        self.past_names = [i.name for i in self.lm_session.get_inputs() if i.name.startswith("past.")]
        self.new_names = [o.name for o in self.lm_session.get_outputs() if o.name.startswith("new.")]
        past = next(i for i in self.lm_session.get_inputs() if i.name == self.past_names[0])
        self.capacity = capacity
        kv_dtype = self._torch_dtype(past.type)
        self.cache = StaticKVCache(torch, num_layers=len(self.past_names) // 2, kv_heads=past.shape[1],
                                   head_dim=past.shape[3], capacity=capacity, dtype=kv_dtype, device=self.torch_device)
        # prefill's cache: one empty slot (masked out), so the prompt attends only to itself
        self.empty_past = torch.zeros((1, past.shape[1], 1, past.shape[3]), dtype=kv_dtype, device=self.torch_device)
        self.empty_mask = torch.zeros((1, 1), dtype=torch.int64, device=self.torch_device)
        vocab = self.lm_session.get_outputs()[0].shape[1]
        hidden = next(i for i in self.lm_session.get_inputs() if i.name == "image_features").shape[1]
        self.token = torch.zeros((1, 1), dtype=torch.int64, device=self.torch_device)
        self.position = torch.zeros((1, 1), dtype=torch.int64, device=self.torch_device)
        self.one = torch.ones((1, 1), dtype=torch.int64, device=self.torch_device)
        self.text = torch.zeros((1, 1), dtype=torch.int64, device=self.torch_device)   # mm_token_type_ids 0
        # a decode step adds no image features: one zero row the graph never selects
        self.no_features = torch.zeros((1, hidden), dtype=self.image_feature_dtype, device=self.torch_device)
        self.logits = torch.zeros((1, vocab), dtype=torch.float32, device=self.torch_device)
        self.decode_binding = self._decode_binding()

    def _torch_dtype(self, onnx_type: str):
        return self.torch.from_numpy(np.zeros(0, _NUMPY[onnx_type])).dtype

    def _bind(self, binding, name: str, tensor, output: bool = False) -> None:
        numpy_type = self.torch.empty(0, dtype=tensor.dtype).numpy().dtype
        bind = binding.bind_output if output else binding.bind_input
        bind(name, self.device, 0, numpy_type, tuple(tensor.shape), tensor.data_ptr())

    def _decode_binding(self):
        binding = self.lm_session.io_binding()
        for name, tensor in (("input_ids", self.token), ("image_features", self.no_features),
                             ("attention_mask", self.one), ("position_ids", self.position),
                             ("mm_token_type_ids", self.text), ("past_mask", self.cache.mask),
                             *zip(self.past_names, self.cache.past)):
            self._bind(binding, name, tensor)
        self._bind(binding, "logits", self.logits, output=True)
        for name, tensor in zip(self.new_names, self.cache.new):
            self._bind(binding, name, tensor, output=True)
        return binding

    def _run(self, session, binding) -> None:
        if self.device == "cuda":   # inputs written by torch on its stream must land before ORT reads them
            self.torch.cuda.current_stream().synchronize()
        session.run_with_iobinding(binding)

    def vision(self, pixel_values, pooling, valid_tokens):
        torch = self.torch
        features = torch.empty((pooling.shape[0], self.vision_session.get_outputs()[0].shape[1]),
                               dtype=self.feature_dtype, device=self.torch_device)
        binding = self.vision_session.io_binding()
        binding.bind_cpu_input("pixel_values", np.ascontiguousarray(pixel_values, dtype=np.float32))
        binding.bind_cpu_input("pooling", np.ascontiguousarray(pooling, dtype=np.int64))
        self._bind(binding, "features", features, output=True)
        self._run(self.vision_session, binding)
        valid = torch.from_numpy(np.asarray(valid_tokens)).to(self.torch_device)
        return features[valid].to(self.image_feature_dtype).contiguous()

    def prefill(self, input_ids, image_features, attention_mask, position_ids, mm_token_type_ids):
        torch = self.torch
        binding = self.lm_session.io_binding()
        for name, value in (("input_ids", input_ids), ("attention_mask", attention_mask),
                            ("position_ids", position_ids), ("mm_token_type_ids", mm_token_type_ids)):
            binding.bind_cpu_input(name, np.ascontiguousarray(value, dtype=np.int64))
        self._bind(binding, "image_features", image_features)
        batch, seq = input_ids.shape
        self._bind(binding, "past_mask", self.empty_mask)
        for name in self.past_names:
            self._bind(binding, name, self.empty_past)
        _, kv_heads, _, head_dim = self.cache.past[0].shape
        logits = torch.empty((batch, self.logits.shape[1]), dtype=torch.float32, device=self.torch_device)
        present = [torch.empty((batch, kv_heads, seq, head_dim), dtype=self.cache.past[0].dtype,
                               device=self.torch_device) for _ in self.cache.past]
        self._bind(binding, "logits", logits, output=True)
        for name, tensor in zip(self.new_names, present):
            self._bind(binding, name, tensor, output=True)
        self._run(self.lm_session, binding)
        self.cache.load(present, attention_mask)
        return logits.cpu().numpy()

    def decode(self, token, position):
        self.token.fill_(token)
        self.position.fill_(position)
        self._run(self.lm_session, self.decode_binding)
        self.cache.append()
        return self.logits.cpu().numpy().copy()


class OnnxRuntimeBackend(GraphBackend):
    """Backend protocol (molmo2_ros.core.backend) over ONNX Runtime sessions.

    `prepack=False` (default) turns off ONNX Runtime's CPU weight pre-packing: it reads every
    mapped weight at load and, with INT4 graphs, keeps packed copies beside them (measured,
    docs/engines.md "Plan vs measured"); `True` trades that memory for packed GEMMs."""

    name = "onnxruntime"

    def __init__(self, engine_dir: str | Path, *, device: str | None = None, source_hash: str | None = None,
                 threads: int | None = None, prepack: bool = False):
        from molmo2_ros.backends import engine_folder as manifest

        data = manifest.check_folder(engine_dir, runtime="onnxruntime", source_hash=source_hash)
        self.providers = resolve_providers(device)
        settings = data["export"]["settings"]
        runner = OrtRunner(engine_dir, self.providers, threads, settings["max_prompt"] + settings["max_new_tokens"],
                           prepack=prepack)
        super().__init__(engine_dir, runner, data, preprocess_device=runner.device)
