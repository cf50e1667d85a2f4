"""The model a plain run (node, demo, `molmo2-ros infer`) uses when none is named: the
packaged trained shapes model when the package ships one, else the tiny random Molmo2
built once into the user's cache (it runs the whole pipeline but its answers are
meaningless). HUB_MODEL is the real checkpoint the messages and docs point users to."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

HUB_MODEL = "allenai/Molmo2-4B"
PACKAGED_MODEL = Path(__file__).resolve().parents[1] / "assets" / "shapes-tiny"


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "molmo2_ros"


def default_model() -> tuple[str, bool]:
    """(model folder, is_random): the packaged model, or the cached tiny random model
    (built on first use, about a second)."""
    if (PACKAGED_MODEL / "config.json").is_file():
        return str(PACKAGED_MODEL), False
    tiny = cache_dir() / "tiny_molmo2"
    if not (tiny / "config.json").is_file():
        from molmo2_ros.tiny_model import build_tiny_molmo2

        partial = tiny.with_name(f"tiny_molmo2.partial-{os.getpid()}")
        build_tiny_molmo2(partial, seed=0)
        try:
            partial.rename(tiny)
        except OSError:  # another process finished first: use its copy
            shutil.rmtree(partial, ignore_errors=True)
    return str(tiny), True
