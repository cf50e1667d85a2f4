"""TensorRT build inputs that can be checked without TensorRT, and the real build +
runtime where `tensorrt` imports and a GPU is present."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from molmo2_ros.backends.tensorrt_build import ENGINE_FILES, LM_PROFILES, default_profiles


def _graph_inputs(path):
    model = onnx.load(str(path), load_external_data=False)
    return {i.name: [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input}


def test_profiles_cover_every_graph_input(tiny_export_dir):
    """Every input of every graph gets [min, opt, max] of its rank in every profile, static dims
    kept, min <= opt <= max, sized from the export settings; the LM graph has a prefill and a
    decode profile (in that index order) over the one graph."""
    config = json.loads((tiny_export_dir / "config.json").read_text())
    settings = json.loads((tiny_export_dir / "manifest.json").read_text())["export"]["settings"]
    profiles = default_profiles(config, settings)
    assert set(profiles) == set(ENGINE_FILES)
    assert list(profiles["lm.onnx"]) == list(LM_PROFILES) == ["prefill", "decode"]
    for graph, graph_profiles in profiles.items():
        inputs = _graph_inputs(tiny_export_dir / graph)
        for profile, shapes in graph_profiles.items():
            assert set(shapes) == set(inputs), (graph, profile)
            for name, dims in inputs.items():
                lo, opt, hi = (np.array(s) for s in shapes[name])
                assert len(lo) == len(opt) == len(hi) == len(dims), (graph, profile, name)
                assert (lo <= opt).all() and (opt <= hi).all() and (lo >= 1).all(), (graph, profile, name)
                for axis, static in enumerate(dims):
                    if static:
                        assert lo[axis] == opt[axis] == hi[axis] == static, (graph, profile, name, axis)
    prefill, decode = profiles["lm.onnx"]["prefill"], profiles["lm.onnx"]["decode"]
    total = settings["max_prompt"] + settings["max_new_tokens"]
    assert prefill["input_ids"][2][1] == settings["max_prompt"] and prefill["past.0.key"][2][2] == 1
    assert decode["input_ids"][2][1] == 1 and decode["past_mask"][2][1] == decode["past.0.value"][2][2] == total
    assert profiles["vision.onnx"]["vision"]["pixel_values"][2][0] == max(settings["max_frames"], settings["max_crops"])


def test_int8_without_quantized_graphs_is_refused(tiny_export_dir):
    from molmo2_ros.backends.tensorrt_build import build_engines

    with pytest.raises(ValueError, match="Q/DQ nodes"):
        build_engines(tiny_export_dir, "int8")
    with pytest.raises(ValueError, match="precision must be one of"):
        build_engines(tiny_export_dir, "int4")


def test_build_precision_must_match_the_export(tiny_export_dir):
    """Strongly typed engines take the graphs' precision; asking for another says how to re-export."""
    from molmo2_ros.backends.tensorrt_build import build_engines

    with pytest.raises(ValueError, match="exported in fp32.*--precision fp16 --device cuda"):
        build_engines(tiny_export_dir, "fp16")


def test_build_without_tensorrt_says_what_to_install(tiny_export_dir):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    from molmo2_ros.engines.cli import main

    with pytest.raises(ImportError, match="pip install tensorrt"):
        from molmo2_ros.backends.tensorrt_build import build_engines

        build_engines(tiny_export_dir)
    assert main(["build", str(tiny_export_dir)]) == 2


def test_scattered_external_data_is_gathered_into_one_file(tmp_path, tiny_export_dir):
    """Graphs over 2 GB come out of the TorchScript exporter with one file per weight;
    export gathers them into `<graph>.data` (checked here on a small graph saved that way)."""
    from molmo2_ros.engines.export import _gather_external_data

    path = tmp_path / "vision.onnx"
    proto = onnx.load(str(tiny_export_dir / "vision.onnx"))
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0)
    assert len(list(tmp_path.iterdir())) > 3
    _gather_external_data(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vision.onnx", "vision.onnx.data"]
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixel_values", "pooling"]


def _tensorrt_or_skip():
    trt = pytest.importorskip("tensorrt", reason="tensorrt is not installed (TensorRT tests run on GPU machines)")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("TensorRT build needs a CUDA GPU")
    return trt


@pytest.mark.gpu
def test_tensorrt_engines_decode_like_onnxruntime(engine_copy, synthetic_frames):
    _tensorrt_or_skip()
    from molmo2_ros.backends.tensorrt_build import build_engines
    from molmo2_ros.backends.engine_folder import check_folder
    from molmo2_ros.backends.onnxruntime_backend import OnnxRuntimeBackend
    from molmo2_ros.backends.tensorrt_backend import TensorRTBackend

    build_engines(engine_copy, workspace_gb=2)
    assert check_folder(engine_copy, runtime="tensorrt")["tensorrt"]["precision"] == "fp32"
    frames = synthetic_frames(3)
    expected = OnnxRuntimeBackend(engine_copy, device="cpu").generate(frames, "Point to it.", max_new_tokens=32)
    got = TensorRTBackend(engine_copy).generate(frames, "Point to it.", max_new_tokens=32)
    assert got.token_ids == expected.token_ids


class StandInTensorRT:
    """A stand-in for the `tensorrt` module (no TensorRT or GPU here), named as such: it records
    the optimisation profiles `build_engine` adds. Its parser reads the real ONNX graph's inputs,
    so the profiles are checked against the graph `build` would parse."""

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 1

    class MemoryPoolType:
        WORKSPACE = 0

    class _Input:
        def __init__(self, name):
            self.name = name

    class _Network:
        def __init__(self):
            self.inputs = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return StandInTensorRT._Input(self.inputs[i])

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            self.network.inputs = list(_graph_inputs(path))
            return True

    class _Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = [list(lo), list(opt), list(hi)]

    class _Cache:
        def serialize(self):
            return b"timing"

    class _Config:
        def __init__(self):
            self.profiles = []

        def set_memory_pool_limit(self, pool, size):
            pass

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data):
            return StandInTensorRT._Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            pass

        def get_timing_cache(self):
            return StandInTensorRT._Cache()

    class Builder:
        configs = []

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return StandInTensorRT._Network()

        def create_builder_config(self):
            config = StandInTensorRT._Config()
            StandInTensorRT.Builder.configs.append(config)
            return config

        def create_optimization_profile(self):
            return StandInTensorRT._Profile()

        def build_serialized_network(self, network, config):
            return b"stand-in engine"


def test_lm_engine_gets_a_prefill_and_a_decode_profile(tiny_export_dir, tmp_path):
    """One lm.plan with two optimisation profiles over the one graph, in index order prefill (0),
    decode (1), each covering every input of lm.onnx (stand-in TensorRT, see above)."""
    from molmo2_ros.backends.tensorrt_build import build_engine

    config = json.loads((tiny_export_dir / "config.json").read_text())
    settings = json.loads((tiny_export_dir / "manifest.json").read_text())["export"]["settings"]
    profiles = default_profiles(config, settings)["lm.onnx"]
    StandInTensorRT.Builder.configs.clear()
    build_engine(StandInTensorRT, tiny_export_dir / "lm.onnx", tmp_path / "lm.plan", profiles, workspace_gb=1,
                 timing_cache=tmp_path / "timing.cache", progress=lambda m: None)
    (built,) = StandInTensorRT.Builder.configs
    assert [p.shapes for p in built.profiles] == [profiles["prefill"], profiles["decode"]]
    assert set(built.profiles[0].shapes) == set(_graph_inputs(tiny_export_dir / "lm.onnx"))
    assert (tmp_path / "lm.plan").read_bytes() == b"stand-in engine"
    decode = {k: v for k, v in profiles["decode"].items() if k != "past_mask"}
    broken = {"prefill": profiles["prefill"], "decode": decode}
    with pytest.raises(ValueError, match="profile 'decode' of lm.onnx has no shapes for \\['past_mask'\\]"):
        build_engine(StandInTensorRT, tiny_export_dir / "lm.onnx", tmp_path / "lm.plan", broken, workspace_gb=1,
                     timing_cache=tmp_path / "timing.cache", progress=lambda m: None)
