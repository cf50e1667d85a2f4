"""`molmo2-engines bench` prints stage timings and, with --baseline, transformers' timings on
the same inputs in the same process and the ratios between them."""
from __future__ import annotations

import json

import pytest


def test_bench_prints_stage_timings_and_baseline_ratios(tiny_export_dir, capsys):
    from molmo2_ros.engines.cli import main

    assert main(["bench", str(tiny_export_dir), "--device", "cpu", "--frames", "3", "--decode-steps", "4",
                 "--repeats", "1", "--baseline"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["backend"] == "onnxruntime" and result["frames"] == 3 and result["decode_steps"] == 4
    assert result["vision_tokens"] > 0 and result["prompt_tokens"] > result["vision_tokens"]
    for key in ("vision_ms_per_frame", "prefill_ms", "decode_tokens_per_s"):
        assert result[key] > 0 and result["baseline"][key] > 0
    assert result["baseline"]["prompt_tokens"] == result["prompt_tokens"]
    ratios = result["speedup_vs_baseline"]
    assert ratios["prefill"] == round(result["baseline"]["prefill_ms"] / result["prefill_ms"], 3)
    assert set(ratios) == {"vision", "prefill", "decode"}


def test_bench_past_reports_decode_step_ms_at_each_fill_and_their_ratio(tiny_export_dir, capsys):
    from molmo2_ros.engines.cli import main

    assert main(["bench", str(tiny_export_dir), "--device", "cpu", "--frames", "1", "--decode-steps", "2",
                 "--repeats", "1", "--past", "16,1000"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    steps = result["decode_step_ms"]
    assert set(steps) == {"16", "1000"} and all(v > 0 for v in steps.values())
    assert result["decode_step_ratio"] == round(steps["1000"] / steps["16"], 3)
    # a fill beyond the engines' KV capacity is refused with the reason, not a crash
    assert main(["bench", str(tiny_export_dir), "--device", "cpu", "--frames", "1", "--past", "16,5000"]) == 2
    assert "exceeds the engines' KV capacity 1088" in capsys.readouterr().err


def test_step_clock_rates_come_from_one_run():
    from molmo2_ros.engines.bench import StepClock

    clock = StepClock()
    for _ in range(4):
        clock(None, None)
    assert clock.tokens_per_s() > 0
    with pytest.raises(ValueError, match="at least two"):
        StepClock().tokens_per_s()
