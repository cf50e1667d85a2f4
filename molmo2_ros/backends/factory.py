"""One entry point for every inference backend; heavy imports happen only for the kind asked."""
from __future__ import annotations

BACKEND_KINDS = ("torch", "onnxruntime", "tensorrt", "openai")


def make_backend(kind: str, model: str | None, *, device: str | None = None, dtype=None, engine_dir=None, **kw):
    """Build a Backend (molmo2_ros.core.backend) of `kind` for checkpoint `model` (hub id or folder).

    `engine_dir` holds exported engines for "onnxruntime"/"tensorrt"; with a `model` given they
    must have been exported from that local checkpoint folder (its hash is compared; anything
    else is refused), without one they run as exported. Extra keyword arguments go to the
    backend (torch: allow_pickle, local_files_only, revision).

    "openai" is a client of an inference server: `model` is the served model's name, and the
    keywords are url, server_kind, encoding, timeout_s and where the API key is
    (api_key_env: an environment variable's name, or api_key_file), read here.
    """
    if kind == "torch":
        if engine_dir is not None:
            raise ValueError("the torch backend runs the checkpoint directly; engine_dir is for onnxruntime/tensorrt")
        from molmo2_ros.backends.torch_backend import TorchBackend

        return TorchBackend(model, device=device, dtype=dtype, **kw)
    if kind in ("onnxruntime", "tensorrt"):
        if engine_dir is None:
            raise ValueError(f"the {kind} backend needs engine_dir, a folder made by "
                             f"`molmo2-engines export --model {model} --out DIR`"
                             + (" and `molmo2-engines build DIR`" if kind == "tensorrt" else ""))
        if dtype not in (None, "", "auto"):
            raise ValueError(f"the {kind} backend runs at the precision its engines were exported/built with; "
                             "leave dtype unset")
        if model and kw.get("source_hash") is None:
            from molmo2_ros.backends.engine_folder import source_hash_for

            kw["source_hash"] = source_hash_for(model, engine_dir)
        if kind == "onnxruntime":
            from molmo2_ros.backends.onnxruntime_backend import OnnxRuntimeBackend

            return OnnxRuntimeBackend(engine_dir, device=device, **kw)
        if device not in (None, "", "auto") and not str(device).startswith("cuda"):
            raise ValueError(f"the tensorrt backend runs on a CUDA GPU, not device={device!r}")
        from molmo2_ros.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(engine_dir, **kw)
    if kind == "openai":
        if engine_dir is not None or device not in (None, "", "auto") or dtype not in (None, "", "auto"):
            raise ValueError("the openai backend runs on its server: leave engine_dir, device and dtype unset")
        from molmo2_ros.backends.openai_backend import OpenAIBackend, read_api_key

        api_key = read_api_key(kw.pop("api_key_env", ""), kw.pop("api_key_file", ""))
        return OpenAIBackend(kw.pop("url", ""), model or "", api_key=api_key, **kw)
    raise ValueError(f"unknown or unavailable backend {kind!r}; choose one of {', '.join(BACKEND_KINDS)}")
