"""The engine-folder contract the runtime needs: the graph file names, the manifest beside
every exported graph and built engine, and the checks against it.

`manifest.json` in an engine folder has an "export" section (written by `export`: ONNX
files with size + sha256, the layout -- vision.onnx and one lm.onnx for prefill and decode,
each with its weights in `<graph>.data` --, export settings, source checkpoint and its hash,
versions) and, once built, a "tensorrt" section (engine files with size + sha256, TensorRT
and CUDA versions, GPU name and compute capability, precision, each engine's profiles in
index order). A folder that does not
match the machine or the requested checkpoint is refused with an `EngineMismatch` whose
message names each mismatch and the command that rebuilds it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

VISION_FILE = "vision.onnx"
LM_FILE = "lm.onnx"
GRAPH_FILES = (VISION_FILE, LM_FILE)
MANIFEST_FILE = "manifest.json"
# 2: prefill.onnx + decode.onnx (a copy of the LM weights in each), decode over a preallocated cache;
# 3: one lm.onnx for both phases, so every weight exists once
SCHEMA = 3
TWO_GRAPH_FILES = ("prefill.onnx", "decode.onnx")   # schema 2's LM graphs, refused by name
LAYOUT = {"graphs": {VISION_FILE: "vision tower + adapter", LM_FILE: "language model, prefill and decode"},
          "lm_phases": {"prefill": "the prompt over an empty one-slot cache (past_mask 0)",
                        "decode": "one token over the preallocated cache (past_mask = filled slots)"}}


class EngineMismatch(RuntimeError):
    """The folder cannot be used on this machine/for this checkpoint; the message says why and how to rebuild."""


@dataclass(frozen=True)
class MachineFacts:
    """What a TensorRT engine is tied to. `probe_machine()` reads them from this machine;
    tests pass stand-in facts explicitly (there is no GPU in CI)."""

    tensorrt_version: str | None
    cuda_version: str | None
    gpu_name: str | None
    compute_capability: str | None     # "8.7", "9.0"


def probe_machine() -> MachineFacts:
    """Read TensorRT/CUDA versions and the GPU from this machine (None where absent)."""
    try:
        import tensorrt

        trt_version = tensorrt.__version__
    except ImportError:
        trt_version = None
    cuda_version = gpu_name = capability = None
    try:
        import torch

        cuda_version = torch.version.cuda
        if torch.cuda.is_available():
            gpu_name = torch.cuda.get_device_name(0)
            major, minor = torch.cuda.get_device_capability(0)
            capability = f"{major}.{minor}"
    except ImportError:
        pass
    return MachineFacts(trt_version, cuda_version, gpu_name, capability)


def project_version() -> str:
    try:
        from importlib.metadata import version

        return version("molmo2_ros")
    except Exception:  # noqa: BLE001 - running from a source checkout without metadata
        return "0.1.0+source"


def file_sha256(path: Path, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_hash(model_dir: str | Path) -> str:
    """sha256 over the checkpoint's config and weight files (names and contents)."""
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.iterdir()
                   if p.is_file() and (p.suffix in (".safetensors", ".bin") or p.name == "config.json"))
    if not files:
        raise FileNotFoundError(f"no config/weights in {model_dir}")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def source_hash_for(model: str | Path, folder: str | Path) -> str:
    """The checkpoint hash of `model`, which the engines in `folder` must come from. A model
    that is not a local checkpoint folder cannot be checked, so it is refused rather than
    silently answered from whatever checkpoint the engines were exported from."""
    path = Path(model)
    if not (path / "config.json").is_file():
        data = read_manifest(folder)
        raise EngineMismatch(
            f"model {model} is not a local checkpoint folder, so the engines in {folder} (exported from "
            f"{data['export'].get('source')}) cannot be checked against it. Pass the checkpoint folder the engines "
            f"were exported from, or leave the model unset to run the engines as exported. "
            f"{export_command(folder, data)}")
    return checkpoint_hash(path)


def describe_files(folder: Path, names: list[str]) -> dict[str, dict]:
    """size + sha256 of each artifact (and its ONNX external-data file, if any)."""
    entries = {}
    for name in names:
        for candidate in (name, name + ".data"):
            path = folder / candidate
            if path.is_file():
                entries[candidate] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    return entries


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise EngineMismatch(f"{path}: missing manifest.json. {export_command(folder, None)}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EngineMismatch(f"{path}: unreadable manifest ({exc}). {export_command(folder, None)}") from exc
    if not isinstance(data, dict) or "export" not in data or not isinstance(data.get("schema"), int):
        raise EngineMismatch(f"{path}: not a molmo2_ros engine manifest (schema {SCHEMA}). "
                             f"{export_command(folder, None)}")
    if data["schema"] != SCHEMA:
        two_graphs = any(name in data["export"].get("files", {}) for name in TWO_GRAPH_FILES)
        why = ("it holds the old two-graph layout (prefill.onnx and decode.onnx, each with a copy of the "
               "language model's weights); this molmo2_ros runs one lm.onnx for both phases"
               if two_graphs else "the graphs' contract changed")
        raise EngineMismatch(f"{path}: engine folder of schema {data['schema']}, this molmo2_ros reads schema "
                             f"{SCHEMA}: {why}. {export_command(folder, data)}")
    return data


def write(folder: Path, data: dict) -> None:
    tmp = folder / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(folder / MANIFEST_FILE)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")



def write_engine_manifest(folder: Path, *, engine_files: list[str], precision: str, profiles: dict,
                          machine: MachineFacts, build_seconds: dict, timing_cache: str | None = None) -> dict:
    data = read_manifest(folder)
    data["tensorrt"] = {
        "created": now(),
        "files": describe_files(folder, engine_files),
        "precision": precision,
        "profiles": profiles,
        "build_seconds": build_seconds,
        "machine": asdict(machine),
        "timing_cache": timing_cache,   # made on `machine`; builds elsewhere use their own
        "project_version": project_version(),
    }
    write(folder, data)
    return data


def export_command(folder, data: dict | None) -> str:
    source = (data or {}).get("export", {}).get("source", "MODEL_DIR")
    settings = (data or {}).get("export", {}).get("settings", {})
    flags = "".join(f" --{k.replace('_', '-')} {v}" for k, v in sorted(settings.items())
                    if k in ("precision", "max_frames", "max_prompt", "max_new_tokens", "quantize") and v)
    return f"Re-export with: molmo2-engines export --model {source} --out {Path(folder).resolve()}{flags}"


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in str(version).split(".")[:2] if part.isdigit())


def installed_versions() -> dict[str, str]:
    import torch
    import transformers

    return {"transformers": transformers.__version__, "torch": torch.__version__}


def version_problems(recorded: dict, installed: dict) -> list[str]:
    """transformers' major.minor must match (its processor makes the inputs the graphs were
    traced for); torch's major must (the exporter's graph conventions); patch releases may differ."""
    problems = []
    for name, parts in (("transformers", 2), ("torch", 1)):
        was, now = recorded.get(name), installed.get(name)
        if was is None or _major_minor(was)[:parts] != _major_minor(now)[:parts]:
            problems.append(f"exported with {name} {was}, this machine has {now}")
    return problems


def graph_problems(folder: Path, settings: dict) -> list[str]:
    """The LM graph's float type and Q/DQ nodes must be what the manifest says."""
    import onnx

    path = folder / LM_FILE
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError types
        return [f"{LM_FILE} is not a readable ONNX graph ({type(exc).__name__})"]
    types = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16"}
    features = next((i for i in graph.input if i.name == "image_features"), None)
    precision = types.get(features.type.tensor_type.elem_type) if features is not None else None
    problems = []
    if precision != settings.get("precision"):
        problems.append(f"manifest says precision {settings.get('precision')}, the graphs are {precision}")
    quantized = any(node.op_type == "DequantizeLinear" for node in graph.node)
    if quantized != bool(settings.get("quantize")):
        problems.append(f"manifest says quantize {settings.get('quantize')}, the graphs are "
                        + ("weight-quantized (Q/DQ)" if quantized else "not quantized"))
    return problems


def build_command(folder, data: dict | None) -> str:
    data = data or {}
    precision = data.get("tensorrt", {}).get("precision") or data.get("export", {}).get("settings", {}).get("precision")
    return f"Rebuild with: molmo2-engines build {folder}" + (f" --precision {precision}" if precision else "")


def _file_problems(folder: Path, files: dict) -> list[str]:
    problems = []
    for name, expected in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"missing file {name}")
            continue
        size = path.stat().st_size
        if size != expected["bytes"]:
            problems.append(f"{name} is {size} bytes, manifest says {expected['bytes']} (truncated or replaced)")
        elif file_sha256(path) != expected["sha256"]:
            problems.append(f"{name} is corrupt (sha256 differs from the manifest)")
    return problems


def check_folder(folder: str | Path, *, runtime: str, machine: MachineFacts | None = None,
                 source_hash: str | None = None) -> dict:
    """Return the manifest if `folder` is usable by `runtime` ("onnxruntime" or "tensorrt")
    on `machine` (default: `probe_machine()`) for the checkpoint `source_hash` (None: any);
    otherwise raise EngineMismatch naming every mismatch and the rebuild command."""
    if runtime not in ("onnxruntime", "tensorrt"):
        raise ValueError(f"runtime must be 'onnxruntime' or 'tensorrt', got {runtime!r}")
    folder = Path(folder)
    data = read_manifest(folder)
    export = data["export"]
    problems = []
    if runtime == "onnxruntime":
        problems += _file_problems(folder, export.get("files", {}))
        if not export.get("files"):
            problems.append("manifest lists no ONNX graphs")
    problems += version_problems(export.get("versions", {}), installed_versions())
    if runtime == "onnxruntime" and not problems:
        problems += graph_problems(folder, export.get("settings", {}))
    if source_hash is not None and export.get("source_hash") != source_hash:
        problems.append(f"exported from checkpoint hash {str(export.get('source_hash'))[:12]}..., "
                        f"expected {source_hash[:12]}... (another checkpoint)")
    if problems:
        raise EngineMismatch(f"{folder}: " + "; ".join(problems) + ". " + export_command(folder, data))
    if runtime == "onnxruntime":
        return data

    engine = data.get("tensorrt")
    if engine is None:
        raise EngineMismatch(f"{folder}: no TensorRT engines built yet. {build_command(folder, data)}")
    machine = machine or probe_machine()
    built = engine.get("machine", {})
    problems = _file_problems(folder, engine.get("files", {}))
    if machine.tensorrt_version is None:
        problems.append("TensorRT is not installed on this machine")
    elif built.get("tensorrt_version") != machine.tensorrt_version:
        problems.append(f"built with TensorRT {built.get('tensorrt_version')}, this machine has "
                        f"{machine.tensorrt_version} (stale engine)")
    if machine.compute_capability is None:
        problems.append("no CUDA GPU on this machine")
    elif built.get("compute_capability") != machine.compute_capability:
        problems.append(f"built for GPU compute capability {built.get('compute_capability')} "
                        f"({built.get('gpu_name')}), this GPU is {machine.compute_capability} "
                        f"({machine.gpu_name})")
    built_cuda, cuda = built.get("cuda_version"), machine.cuda_version
    if built_cuda and cuda and built_cuda.split(".")[0] != cuda.split(".")[0]:
        problems.append(f"built with CUDA {built_cuda}, this machine has CUDA {cuda}")
    if problems:
        raise EngineMismatch(f"{folder}: " + "; ".join(problems) + ". " + build_command(folder, data))
    return data


def format_manifest(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True)
