"""One entry point for every inference backend; heavy imports happen only for the kind asked."""
from __future__ import annotations

BACKEND_KINDS = ("torch", "onnxruntime", "tensorrt")


def make_backend(kind: str, model: str, *, device: str | None = None, dtype=None, engine_dir=None, **kw):
    """Build a Backend (molmo2_ros.core.backend) of `kind` for checkpoint `model` (hub id or folder).

    `engine_dir` holds exported engines for "onnxruntime"/"tensorrt"; extra keyword arguments go
    to the backend (torch: allow_pickle, local_files_only, revision).
    """
    if kind == "torch":
        if engine_dir is not None:
            raise ValueError("the torch backend runs the checkpoint directly; engine_dir is for onnxruntime/tensorrt")
        from molmo2_ros.backends.torch_backend import TorchBackend

        return TorchBackend(model, device=device, dtype=dtype, **kw)
    # "onnxruntime" and "tensorrt" branches: added by the engines work (lazy imports, like "torch").
    raise ValueError(f"unknown or unavailable backend {kind!r}; choose one of {', '.join(BACKEND_KINDS)}")
