"""Every weight exists once, and the memory plan is what a measurement shows.

The language model is one graph (lm.onnx) for prefill and decode, so its weights are on disk
and in memory once; `molmo2-engines plan --measure DIR` loads a folder's engines in a fresh
process and reports the resident memory next to the plan's figure for that folder. The
medium model (hidden 1024, 8 layers, MLP 3072: ~0.41 GB of fp32 weights, built offline with
build_tiny_molmo2) holds plan and measurement to 25 % for fp32, INT8 and INT4 (slow)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from molmo2_ros.backends import memory_plan

MEDIUM = dict(hidden_size=1024, num_hidden_layers=8, intermediate_size=3072, num_attention_heads=16,
              num_key_value_heads=8)


def _measure(folder) -> dict:
    proc = subprocess.run([sys.executable, "-m", "molmo2_ros.engines.cli", "plan", "--measure", str(folder),
                           "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "memory after load" in proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _lm_graph_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.glob("lm.onnx*"))


def test_one_lm_graph_and_the_measured_load_is_reported(tiny_export_dir):
    graphs = ["lm.onnx", "lm.onnx.data", "vision.onnx", "vision.onnx.data"]   # weights beside each graph
    assert sorted(p.name for p in tiny_export_dir.glob("*.onnx*")) == graphs
    manifest = json.loads((tiny_export_dir / "manifest.json").read_text())["export"]
    assert sorted(manifest["files"]) == graphs and "lm.onnx" in manifest["layout"]["graphs"]
    plan = memory_plan.folder_estimate(tiny_export_dir)
    # one copy of the LM weights on disk: the graph file is the weights plus its structure
    assert plan["weights_lm"] < _lm_graph_bytes(tiny_export_dir) < plan["weights_lm"] + 1_000_000
    result = _measure(tiny_export_dir)
    assert result["memory"] == "resident" and result["measured_gb"] > 0
    assert result["planned_at_load_gb"] == round(plan["at_load"] / memory_plan.GB, 4)
    ratio = result["measured_gb"] / result["planned_at_load_gb"]
    assert result["measured_vs_planned"] == pytest.approx(ratio, rel=0.05)


@pytest.fixture(scope="module")
def medium_model_dir(tmp_path_factory):
    from molmo2_ros.tiny_model import build_tiny_molmo2

    return build_tiny_molmo2(tmp_path_factory.mktemp("medium_molmo2"), seed=0, **MEDIUM)


@pytest.mark.slow
@pytest.mark.parametrize("quantize", [None, "int8", "int4"], ids=["fp32", "int8", "int4"])
def test_medium_model_memory_after_load_is_the_plan(medium_model_dir, tmp_path, quantize):
    from molmo2_ros.engines.cli import main

    out = tmp_path / "engines"
    flags = ["--quantize", quantize] if quantize else []
    assert main(["export", "--model", str(medium_model_dir), "--out", str(out), "--max-frames", "8",
                 "--max-prompt", "1024", "--max-new-tokens", "64", *flags]) == 0
    plan = memory_plan.folder_estimate(out)
    on_disk = _lm_graph_bytes(out)
    print(f"{quantize or 'fp32'}: lm.onnx {on_disk / 1e6:.1f} MB, planned LM weights {plan['weights_lm'] / 1e6:.1f} MB")
    assert plan["weights_lm"] <= on_disk < 1.05 * plan["weights_lm"]   # once, not twice
    result = _measure(out)
    print(json.dumps(result))
    assert 0.75 <= result["measured_vs_planned"] <= 1.25, result
