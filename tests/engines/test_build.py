"""TensorRT build inputs that can be checked without TensorRT, and the real build +
runtime where `tensorrt` imports and a GPU is present."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from molmo2_ros.backends.tensorrt_build import ENGINE_FILES, default_profiles


def _graph_inputs(path):
    model = onnx.load(str(path), load_external_data=False)
    return {i.name: [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input}


def test_profiles_cover_every_graph_input(tiny_export_dir):
    """Every input of every graph gets [min, opt, max] of its rank, static dims kept,
    min <= opt <= max, sized from the export settings."""
    config = json.loads((tiny_export_dir / "config.json").read_text())
    settings = json.loads((tiny_export_dir / "manifest.json").read_text())["export"]["settings"]
    profiles = default_profiles(config, settings)
    assert set(profiles) == set(ENGINE_FILES)
    for graph, shapes in profiles.items():
        inputs = _graph_inputs(tiny_export_dir / graph)
        assert set(shapes) == set(inputs), graph
        for name, dims in inputs.items():
            lo, opt, hi = (np.array(s) for s in shapes[name])
            assert len(lo) == len(opt) == len(hi) == len(dims), (graph, name)
            assert (lo <= opt).all() and (opt <= hi).all() and (lo >= 1).all(), (graph, name)
            for axis, static in enumerate(dims):
                if static:
                    assert lo[axis] == opt[axis] == hi[axis] == static, (graph, name, axis)
    assert profiles["prefill.onnx"]["input_ids"][2][1] == settings["max_prompt"]
    assert profiles["decode.onnx"]["attention_mask"][2][1] == settings["max_prompt"] + settings["max_new_tokens"]
    assert profiles["vision.onnx"]["pixel_values"][2][0] == max(settings["max_frames"], settings["max_crops"])


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
