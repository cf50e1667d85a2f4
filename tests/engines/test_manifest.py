"""Engine folders that do not match the machine or the checkpoint are refused, with the
mismatch and the rebuild command in the message — never a crash.

There is no GPU or TensorRT here, so the "current machine" is a stand-in MachineFacts
passed explicitly, and the engine files are stand-in bytes recorded through the real
manifest writer; every check under test is the real code.
"""
from __future__ import annotations

import json

import pytest

from molmo2_ros.backends import engine_folder as manifest
from molmo2_ros.backends.tensorrt_build import ENGINE_FILES
from molmo2_ros.backends.engine_folder import EngineMismatch, MachineFacts

STAND_IN_MACHINE = MachineFacts(tensorrt_version="10.13.0.35", cuda_version="12.6",
                                gpu_name="stand-in Orin (no GPU in CI)", compute_capability="8.7")


@pytest.fixture
def built_folder(engine_copy):
    """An export folder with a "tensorrt" section as `build` writes it (stand-in engine bytes)."""
    for i, name in enumerate(ENGINE_FILES.values()):
        (engine_copy / name).write_bytes(bytes(range(256)) * (4 + i))
    manifest.write_engine_manifest(engine_copy, engine_files=list(ENGINE_FILES.values()), precision="fp16",
                                   profiles={}, machine=STAND_IN_MACHINE, build_seconds={})
    return engine_copy


def _refusal(folder, **kw) -> str:
    kw.setdefault("runtime", "tensorrt")
    kw.setdefault("machine", STAND_IN_MACHINE)
    with pytest.raises(EngineMismatch) as info:
        manifest.check_folder(folder, **kw)
    return str(info.value)


def test_matching_folder_is_accepted(built_folder, tiny_model_dir):
    data = manifest.check_folder(built_folder, runtime="tensorrt", machine=STAND_IN_MACHINE,
                                 source_hash=manifest.checkpoint_hash(tiny_model_dir))
    assert data["tensorrt"]["machine"]["compute_capability"] == "8.7"
    assert manifest.check_folder(built_folder, runtime="onnxruntime")["export"]["settings"]["max_frames"] == 8


def test_stale_tensorrt_version(built_folder):
    machine = MachineFacts("10.14.1", "12.6", STAND_IN_MACHINE.gpu_name, "8.7")
    message = _refusal(built_folder, machine=machine)
    assert "TensorRT 10.13.0.35" in message and "10.14.1" in message and "stale" in message
    assert f"molmo2-engines build {built_folder} --precision fp16" in message


def test_other_gpu_arch(built_folder):
    message = _refusal(built_folder, machine=MachineFacts("10.13.0.35", "12.6", "stand-in H100", "9.0"))
    assert "compute capability 8.7" in message and "9.0" in message
    assert "molmo2-engines build" in message


def test_other_cuda_major(built_folder):
    message = _refusal(built_folder, machine=MachineFacts("10.13.0.35", "13.0", STAND_IN_MACHINE.gpu_name, "8.7"))
    assert "CUDA 12.6" in message and "13.0" in message


def test_no_tensorrt_or_gpu_here(built_folder):
    message = _refusal(built_folder, machine=MachineFacts(None, None, None, None))
    assert "TensorRT is not installed" in message and "no CUDA GPU" in message


def test_other_checkpoint_hash(built_folder):
    message = _refusal(built_folder, source_hash="f" * 64)
    assert "another checkpoint" in message and "ffffffffffff" in message
    assert "molmo2-engines export --model" in message


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "missing"])
def test_damaged_engine_file(built_folder, damage):
    path = built_folder / ENGINE_FILES["lm.onnx"]
    data = bytearray(path.read_bytes())
    if damage == "corrupt":
        data[100] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        path.unlink()
    message = _refusal(built_folder)
    expected = {"corrupt": "lm.plan is corrupt", "truncated": "lm.plan is 640 bytes, manifest says 1280",
                "missing": "missing file lm.plan"}[damage]
    assert expected in message and "molmo2-engines build" in message


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "missing"])
def test_damaged_onnx_graph_refused_by_onnxruntime_backend(engine_copy, damage):
    from molmo2_ros.backends.onnxruntime_backend import OnnxRuntimeBackend

    path = engine_copy / "lm.onnx"
    data = bytearray(path.read_bytes())
    if damage == "corrupt":
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncated":
        path.write_bytes(bytes(data[:1000]))
    else:
        path.unlink()
    with pytest.raises(EngineMismatch) as info:
        OnnxRuntimeBackend(engine_copy, device="cpu")
    assert "lm.onnx" in str(info.value) and "molmo2-engines export --model" in str(info.value)


def test_missing_or_unreadable_manifest(engine_copy):
    (engine_copy / "manifest.json").write_text("{ not json")
    assert "unreadable manifest" in _refusal(engine_copy, runtime="onnxruntime")
    (engine_copy / "manifest.json").write_text(json.dumps({"schema": 99}))
    assert "not a molmo2_ros engine manifest" in _refusal(engine_copy, runtime="onnxruntime")
    (engine_copy / "manifest.json").unlink()
    assert "missing manifest.json" in _refusal(engine_copy, runtime="onnxruntime")


def test_tensorrt_requested_before_build(engine_copy):
    message = _refusal(engine_copy)
    assert "no TensorRT engines built yet" in message and "molmo2-engines build" in message


def test_inspect_cli_reports_instead_of_crashing(built_folder, capsys):
    from molmo2_ros.engines.cli import main

    assert main(["inspect", str(built_folder), "--runtime", "onnxruntime"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["tensorrt"]["precision"] == "fp16"
    (built_folder / ENGINE_FILES["vision.onnx"]).write_bytes(b"x")
    assert main(["inspect", str(built_folder), "--runtime", "tensorrt"]) == 2
    assert "vision.plan is 1 bytes" in capsys.readouterr().err
    (built_folder / "manifest.json").unlink()
    assert main(["inspect", str(built_folder)]) == 2
    assert "missing manifest.json" in capsys.readouterr().err


def test_factory_refuses_tensorrt_folder_without_engines(engine_copy):
    from molmo2_ros.backends.factory import make_backend

    with pytest.raises(EngineMismatch, match="molmo2-engines build"):
        make_backend("tensorrt", None, engine_dir=engine_copy)
    with pytest.raises(ValueError, match="needs engine_dir"):
        make_backend("onnxruntime", None)


def _edit_manifest(folder, section: str, key: str, value) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    data["export"][section][key] = value
    path.write_text(json.dumps(data))


def _png(tmp_path):
    import numpy as np

    from molmo2_ros.annotate import write_png

    path = tmp_path / "frame.png"
    write_png(path, np.zeros((64, 64, 3), np.uint8))
    return str(path)


def _infer_subprocess(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "molmo2_ros.cli", "infer", *args, "--query", "cup",
                           "--max-new-tokens", "4"], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("section, key, value, expected", [
    ("versions", "transformers", "4.0.0", "exported with transformers 4.0.0, this machine has 5.23"),
    ("versions", "torch", "1.0", "exported with torch 1.0, this machine has 2."),
    ("settings", "precision", "fp16", "manifest says precision fp16, the graphs are fp32"),
    ("settings", "quantize", "int8", "manifest says quantize int8, the graphs are not quantized"),
], ids=["transformers", "torch", "precision", "quantize"])
def test_edited_manifest_is_refused_by_backend_and_infer(engine_copy, tmp_path, capsys, section, key, value, expected):
    from molmo2_ros import cli
    from molmo2_ros.backends.onnxruntime_backend import OnnxRuntimeBackend

    _edit_manifest(engine_copy, section, key, value)
    with pytest.raises(EngineMismatch) as info:
        OnnxRuntimeBackend(engine_copy, device="cpu")
    assert expected in str(info.value) and "Re-export with: molmo2-engines export --model" in str(info.value)
    assert cli.main(["infer", "--images", _png(tmp_path), "--query", "cup", "--backend", "onnxruntime",
                     "--engine-dir", str(engine_copy)]) == 1
    assert expected in capsys.readouterr().err


def test_a_named_model_must_be_the_checkpoint_the_engines_came_from(engine_copy, tmp_path, tiny_model_dir):
    """`infer --model X --backend onnxruntime` never answers from another checkpoint's engines.
    (The three runs are independent: they run at the same time, most of each is importing torch.)"""
    from concurrent.futures import ThreadPoolExecutor

    from molmo2_ros.tiny_model import build_tiny_molmo2

    png = _png(tmp_path)
    other = build_tiny_molmo2(tmp_path / "other", seed=1)
    with ThreadPoolExecutor(3) as pool:
        missing, another, same = pool.map(
            lambda model: _infer_subprocess("--images", png, "--model", model, "--backend", "onnxruntime",
                                            "--engine-dir", str(engine_copy)),
            ["/nonexistent", str(other), str(tiny_model_dir)])
    assert missing.returncode == 1, missing.stderr
    assert "model /nonexistent is not a local checkpoint folder" in missing.stderr
    assert f"exported from {tiny_model_dir}" in missing.stderr and "Traceback" not in missing.stderr
    assert another.returncode == 1 and "another checkpoint" in another.stderr and "Traceback" not in another.stderr
    assert same.returncode == 0, same.stderr


def test_graph_onnxruntime_cannot_load_is_one_message(engine_copy, tmp_path, capsys):
    """A graph the manifest vouches for (sizes and hashes rewritten) that ONNX Runtime cannot parse:
    infer exits 1 and bench exits 2 with one line naming the file, never a traceback."""
    from molmo2_ros.engines.cli import main as engines_main

    # vision.onnx: the manifest check reads lm.onnx's header itself, so ONNX Runtime meets the bad vision graph
    (engine_copy / "vision.onnx").write_bytes(b"not a protobuf" * 100)
    data = json.loads((engine_copy / "manifest.json").read_text())
    data["export"]["files"] = manifest.describe_files(engine_copy, list(manifest.GRAPH_FILES))
    (engine_copy / "manifest.json").write_text(json.dumps(data))

    proc = _infer_subprocess("--images", _png(tmp_path), "--backend", "onnxruntime", "--engine-dir", str(engine_copy))
    assert proc.returncode == 1
    assert "vision.onnx: ONNX Runtime cannot load this graph (InvalidProtobuf" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert engines_main(["bench", str(engine_copy), "--device", "cpu", "--frames", "1"]) == 2
    assert "ONNX Runtime cannot load this graph" in capsys.readouterr().err


def test_older_schema_is_refused_with_the_export_command(engine_copy):
    path = engine_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["schema"] = 1
    path.write_text(json.dumps(data))
    message = _refusal(engine_copy, runtime="onnxruntime")
    assert "schema 1" in message and "molmo2-engines export --model" in message


def test_two_graph_folder_is_refused_with_the_export_command_and_exit_2(engine_copy, capsys):
    """A folder of the previous layout (schema 2: prefill.onnx and decode.onnx, a copy of the LM
    weights in each) is refused by the backend and by the CLI (exit 2), naming the layout and
    the re-export command."""
    import shutil

    from molmo2_ros.backends.onnxruntime_backend import OnnxRuntimeBackend
    from molmo2_ros.engines.cli import main

    for old in ("prefill.onnx", "decode.onnx"):
        shutil.copy(engine_copy / "lm.onnx", engine_copy / old)
    (engine_copy / "lm.onnx").unlink()
    path = engine_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["schema"] = 2
    data["export"].pop("layout")
    data["export"]["files"] = manifest.describe_files(engine_copy, ["vision.onnx", "prefill.onnx", "decode.onnx"])
    path.write_text(json.dumps(data))
    with pytest.raises(EngineMismatch) as info:
        OnnxRuntimeBackend(engine_copy, device="cpu")
    for text in ("schema 2", "two-graph layout (prefill.onnx and decode.onnx", "one lm.onnx",
                 f"Re-export with: molmo2-engines export --model {data['export']['source']} --out"):
        assert text in str(info.value), text
    for argv in (["inspect", str(engine_copy)], ["bench", str(engine_copy), "--frames", "1"],
                 ["plan", "--measure", str(engine_copy)], ["build", str(engine_copy)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "two-graph layout" in err and "molmo2-engines export --model" in err, argv


def test_manifest_source_is_absolute(tiny_export_dir, tiny_model_dir):
    from pathlib import Path

    source = json.loads((tiny_export_dir / "manifest.json").read_text())["export"]["source"]
    assert Path(source).is_absolute() and Path(source) == tiny_model_dir.resolve()


def test_timing_cache_is_keyed_to_the_device(built_folder):
    from molmo2_ros.backends.tensorrt_build import timing_cache_name

    other = MachineFacts("10.3.0", "12.6", "stand-in Orin", "8.7")
    assert timing_cache_name(STAND_IN_MACHINE) != timing_cache_name(other)
    assert timing_cache_name(STAND_IN_MACHINE) == timing_cache_name(MachineFacts(*STAND_IN_MACHINE.__dict__.values()))
    assert "sm8.7" in timing_cache_name(other) and "trt10.3.0" in timing_cache_name(other)
    manifest.write_engine_manifest(built_folder, engine_files=[], precision="fp32", profiles={},
                                   machine=STAND_IN_MACHINE, build_seconds={},
                                   timing_cache=timing_cache_name(STAND_IN_MACHINE))
    assert manifest.read_manifest(built_folder)["tensorrt"]["timing_cache"] == timing_cache_name(STAND_IN_MACHINE)
