"""Build TensorRT engines from an exported folder with the TensorRT Python API.

One engine per graph: `vision.plan` with one optimisation profile, and `lm.plan` -- the
language model, its weights once -- with two, `prefill` (profile 0: the prompt's length,
a one-slot empty cache) and `decode` (profile 1: one token, the preallocated cache), the
layout TensorRT-LLM uses for the same reason. Profiles are sized from the export settings
in the manifest (overridable), a timing cache is kept in the folder per device
(`timing_cache_name`) so rebuilds are fast, and progress is printed per phase. The manifest
gains a "tensorrt" section describing the engines, their profiles in index order and the
machine they were built on (engine_folder).

Networks are strongly typed: the engines run in the precision the graphs were exported
in (`molmo2-engines export --precision fp16|bf16|fp32`), keeping the fp32 casts around
softmax and RMSNorm that transformers has. TensorRT 11 removed the weak-typing precision
flags, and TensorRT 10 accepts the same strongly typed build. int8/int4 weight-only graphs
(`molmo2-engines export --quantize`) carry their DequantizeLinear nodes, so the build is
the same call; `--precision int8/fp8` (activation quantisation) needs Q/DQ on activations.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from molmo2_ros.backends.engine_folder import LM_FILE, VISION_FILE

ENGINE_FILES = {VISION_FILE: "vision.plan", LM_FILE: "lm.plan"}
LM_PROFILES = ("prefill", "decode")   # optimisation profile 0 and 1 of lm.plan
BUILD_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")


def timing_cache_name(machine) -> str:
    """The timing cache file for this device: TensorRT documents that a cache made on another
    device (GPU model, compute capability, TensorRT version) fails, so each device gets its own
    file and one made elsewhere is never read."""
    key = f"{machine.gpu_name or 'nogpu'}-sm{machine.compute_capability}-trt{machine.tensorrt_version}"
    return "timing-" + re.sub(r"[^A-Za-z0-9.]+", "_", key) + ".cache"


def default_profiles(config: dict, settings: dict) -> dict:
    """{graph file: {profile name: {input name: [min, opt, max] shapes}}}, profiles in index
    order: vision.onnx one ("vision"), lm.onnx two (LM_PROFILES)."""
    vision, text = config["vision_config"], config["text_config"]
    patches = vision.get("num_position_embeddings") or (vision["image_size"][0] // vision["patch_size"]) ** 2
    patch_dim = vision["patch_size"] ** 2 * vision.get("num_channels", 3)
    crops = max(settings["max_frames"], settings["max_crops"])
    opt_crops = max(1, min(settings["max_frames"], 8))
    tokens = crops * patches            # a pooled token covers at least one patch
    batch = settings["max_batch"]
    prompt = settings["max_prompt"]
    total = prompt + settings["max_new_tokens"]
    kv_heads, head_dim, hidden = text["num_key_value_heads"], text["head_dim"], text["hidden_size"]
    opt_prompt = max(1, prompt // 2)
    past = [f"past.{i}.{kind}" for i in range(text["num_hidden_layers"]) for kind in ("key", "value")]
    tokens_in = ("input_ids", "attention_mask", "position_ids", "mm_token_type_ids")

    one_slot = [[1, kv_heads, 1, head_dim], [1, kv_heads, 1, head_dim], [batch, kv_heads, 1, head_dim]]
    prefill = {name: [[1, 1], [1, opt_prompt], [batch, prompt]] for name in tokens_in}
    prefill |= {"image_features": [[1, hidden], [opt_prompt, hidden], [batch * prompt, hidden]],
                "past_mask": [[1, 1], [1, 1], [batch, 1]]} | {name: one_slot for name in past}
    # the runners preallocate `total` cache slots (backends.kv_cache): decode always sees that capacity
    decode = {name: [[1, 1], [1, 1], [batch, 1]] for name in tokens_in}
    decode |= {"image_features": [[1, hidden], [1, hidden], [1, hidden]],
               "past_mask": [[1, 1], [1, total], [batch, total]]}
    decode |= {name: [[1, kv_heads, 1, head_dim], [1, kv_heads, total, head_dim], [batch, kv_heads, total, head_dim]]
               for name in past}
    return {
        VISION_FILE: {"vision": {"pixel_values": [[1, patches, patch_dim], [opt_crops, patches, patch_dim],
                                                  [crops, patches, patch_dim]],
                                 "pooling": [[1, 1], [opt_crops * patches // 9, 9], [tokens, 16]]}},
        LM_FILE: dict(zip(LM_PROFILES, (prefill, decode))),
    }


def _progress_monitor(trt, progress):
    """A trt.IProgressMonitor printing each phase once (None where TensorRT lacks the API)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            progress(f"  {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True

        def phase_finish(self, phase_name):
            pass

    return Monitor()


def _has_quantize_nodes(onnx_path: Path) -> bool:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)


def build_engine(trt, onnx_path: Path, engine_path: Path, profiles: dict, *,
                 workspace_gb: float, timing_cache: Path, progress=print) -> float:
    """Parse `onnx_path` into a strongly typed network, build a serialized engine with one
    optimisation profile per entry of `profiles` ({name: {input: [min, opt, max]}}, index
    order) into `engine_path`; return seconds."""
    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    for profile_name, shapes in profiles.items():
        missing = names - set(shapes)
        if missing:
            raise ValueError(f"profile {profile_name!r} of {onnx_path.name} has no shapes for {sorted(missing)}")
        profile = builder.create_optimization_profile()
        for name in sorted(names):
            lo, opt, hi = shapes[name]
            profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
        config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = _progress_monitor(trt, progress)
    if monitor is not None:
        config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build {engine_path.name} (see the TensorRT log above)")
    engine_path.write_bytes(bytes(serialized))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return time.perf_counter() - start


def build_engines(folder: str | Path, precision: str | None = None, *, profiles: dict | None = None,
                  workspace_gb: float = 8.0, progress=print) -> dict:
    """Build both engines in `folder` (an export folder) and record them in the manifest.

    `precision` defaults to the export precision; fp32/fp16/bf16 must equal it (strongly
    typed build), int8/fp8 need Q/DQ-quantized graphs."""
    from molmo2_ros.backends import engine_folder as manifest

    folder = Path(folder)
    data = manifest.check_folder(folder, runtime="onnxruntime")  # the ONNX graphs are intact
    exported = data["export"]["settings"]["precision"]
    precision = precision or exported
    if precision not in BUILD_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(BUILD_PRECISIONS)}, got {precision!r}")
    if precision in ("int8", "fp8"):
        plain = [name for name in ENGINE_FILES if not _has_quantize_nodes(folder / name)]
        if plain:
            raise ValueError(f"--precision {precision} needs ONNX graphs with Q/DQ nodes (explicit quantization, "
                             f"e.g. from NVIDIA ModelOpt); {', '.join(plain)} have none. Use fp16 or bf16.")
    elif precision != exported:
        raise ValueError(f"the graphs in {folder} were exported in {exported}; TensorRT builds them strongly typed "
                         f"in that precision. For {precision} engines re-export: molmo2-engines export --model "
                         f"{data['export']['source']} --out {folder} --precision {precision} --device cuda")
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ImportError(f"building engines needs TensorRT's Python package ({exc}); install the wheel matching "
                          "your CUDA (e.g. `pip install tensorrt-cu12`) or use the onnxruntime backend") from exc
    config = json.loads((folder / "config.json").read_text())
    shapes = default_profiles(config, data["export"]["settings"])
    for graph, overrides in (profiles or {}).items():
        if graph not in shapes:
            raise ValueError(f"--profiles names unknown graph {graph!r}; graphs: {', '.join(shapes)}")
        for profile, inputs in overrides.items():
            if profile not in shapes[graph]:
                raise ValueError(f"--profiles names unknown profile {profile!r} of {graph}; "
                                 f"profiles: {', '.join(shapes[graph])}")
            shapes[graph][profile].update(inputs)
    machine = manifest.probe_machine()
    timing_cache = folder / timing_cache_name(machine)
    seconds = {}
    for onnx_name, engine_name in ENGINE_FILES.items():
        progress(f"building {engine_name} from {onnx_name} ({precision}) ...")
        seconds[engine_name] = round(build_engine(trt, folder / onnx_name, folder / engine_name, shapes[onnx_name],
                                                  workspace_gb=workspace_gb, timing_cache=timing_cache,
                                                  progress=progress), 3)
        progress(f"built {engine_name} in {seconds[engine_name]:.1f} s")
    # a list per engine: the position is the profile index the runtime selects
    recorded = {ENGINE_FILES[graph]: [{"name": name, "shapes": inputs} for name, inputs in graph_profiles.items()]
                for graph, graph_profiles in shapes.items()}
    return manifest.write_engine_manifest(folder, engine_files=list(ENGINE_FILES.values()), precision=precision,
                                          profiles=recorded, machine=machine, build_seconds=seconds,
                                          timing_cache=timing_cache.name)
