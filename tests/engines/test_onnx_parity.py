"""The exported graphs compute what transformers' Molmo2 computes (tiny model, CPU, fp32)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

PROMPT = "Point to the red square."
VISION_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    from transformers import Molmo2ForConditionalGeneration

    return Molmo2ForConditionalGeneration.from_pretrained(str(tiny_model_dir)).eval()


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def ort_backend(tiny_export_dir):
    from molmo2_ros.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(tiny_export_dir, device="cpu", threads=1)


@pytest.fixture(scope="module")
def torch_backend(tiny_model_dir):
    from molmo2_ros.backends.torch_backend import TorchBackend

    return TorchBackend(str(tiny_model_dir), device="cpu")


def _inputs(processor, frames):
    from molmo2_ros.backends.inputs import build_inputs

    return build_inputs(processor, frames, PROMPT, return_tensors="pt").tensors


@pytest.mark.parametrize("num_frames", [1, 4], ids=["image", "video"])
def test_vision_graph_matches_pytorch(synthetic_frames, num_frames, hf_model, processor, ort_backend,
                                     record_property):
    from molmo2_ros.backends.kv_greedy import vision_arrays

    tensors = _inputs(processor, synthetic_frames(num_frames))
    with torch.no_grad():
        if num_frames == 1:
            ref = hf_model.model.get_image_features(
                tensors["pixel_values"], tensors["image_token_pooling"], tensors["image_grids"]).pooler_output
        else:
            ref = hf_model.model.get_video_features(
                tensors["pixel_values_videos"], tensors["video_token_pooling"], tensors["video_grids"]).pooler_output
    ref = torch.cat(ref).numpy()
    pixels, pooling = vision_arrays({k: v.numpy() for k, v in tensors.items()})
    got = ort_backend.runner.vision(pixels, pooling, (pooling >= 0).any(-1)).numpy()
    assert got.shape == ref.shape
    scale = float(np.abs(ref).max())
    diff = float(np.abs(got - ref).max())
    record_property("vision_max_abs_diff", diff)
    print(f"vision graph vs PyTorch ({'image' if num_frames == 1 else 'video'}): max abs diff {diff:.3g}, "
          f"features up to {scale:.3g}")
    # the tiny model's features are small, so hold the difference to 1e-4 of their scale too
    assert scale > 0 and diff <= VISION_TOLERANCE and diff <= VISION_TOLERANCE * scale


def test_prefill_matches_pytorch_and_keeps_the_prefix_mask(synthetic_frames, hf_model, processor, ort_backend):
    """Last-position logits match HF's forward; the same graph with the vision block
    switched off (causal only) does not, so a causal-only export would be caught."""
    tensors = _inputs(processor, synthetic_frames(4))
    with torch.no_grad():
        ref = hf_model(**tensors).logits[0, -1].numpy()
    np_tensors = {k: v.numpy() for k, v in tensors.items()}
    from molmo2_ros.backends.kv_greedy import vision_arrays

    pixels, pooling = vision_arrays(np_tensors)
    runner = ort_backend.runner
    features = runner.vision(pixels, pooling, (pooling >= 0).any(-1))
    ids, mask, mm = np_tensors["input_ids"], np_tensors["attention_mask"], np_tensors["mm_token_type_ids"]
    positions = mask.cumsum(-1) - 1
    logits = runner.prefill(ids, features, mask, positions, mm)
    assert np.abs(logits[0] - ref).max() < 1e-4
    assert len(runner.cache.past) == 2 * hf_model.config.text_config.num_hidden_layers
    assert runner.cache.length == ids.shape[1]
    causal_only = runner.prefill(ids, features, mask, positions, np.zeros_like(mm))
    assert np.abs(causal_only[0] - ref).max() > 1e-3


def test_prefill_batch_is_dynamic_and_left_padding_is_masked(synthetic_frames, processor, ort_backend):
    """The LM graph's prefill takes batch 2 (second row left-padded by 3) and gives each row the
    batch-1 logits (run on the graph directly: the greedy loop itself decodes one prompt)."""
    from molmo2_ros.backends.kv_greedy import vision_arrays

    np_tensors = {k: v.numpy() for k, v in _inputs(processor, synthetic_frames(2)).items()}
    pixels, pooling = vision_arrays(np_tensors)
    runner = ort_backend.runner
    features = runner.vision(pixels, pooling, (pooling >= 0).any(-1)).numpy()
    ids, mask, mm = np_tensors["input_ids"], np_tensors["attention_mask"], np_tensors["mm_token_type_ids"]

    def logits(ids, features, mask, mm):
        positions = np.clip(mask.cumsum(-1) - 1, 0, None)
        batch = ids.shape[0]
        empty = np.zeros((batch, *runner.empty_past.shape[1:]), np.float32)   # prefill: one empty cache slot
        return runner.lm_session.run(["logits"], {
            "input_ids": ids, "image_features": features, "attention_mask": mask, "position_ids": positions,
            "mm_token_type_ids": mm, "past_mask": np.zeros((batch, 1), np.int64),
            **{name: empty for name in runner.past_names}})[0]

    single = logits(ids, features, mask, mm)
    pad = 3  # row 0: the prompt plus 3 text tokens; row 1: the prompt left-padded by 3
    ids2 = np.stack([np.concatenate([ids[0], ids[0, -pad:]]), np.concatenate([np.zeros(pad, np.int64), ids[0]])])
    mask2 = np.stack([np.ones(ids2.shape[1], np.int64), np.concatenate([np.zeros(pad, np.int64), mask[0]])])
    mm2 = np.stack([np.concatenate([mm[0], np.zeros(pad, np.int64)]), np.concatenate([np.zeros(pad, np.int64), mm[0]])])
    batch = logits(ids2, np.concatenate([features, features]), mask2, mm2)
    assert batch.shape[0] == 2
    assert np.abs(batch[1] - single[0]).max() < 1e-4


@pytest.mark.parametrize("num_frames", [4, 1], ids=["video", "image"])
def test_greedy_tokens_equal_torch_backend(synthetic_frames, num_frames, torch_backend, ort_backend):
    """>= 32 greedy steps through the KV-cache loop give exactly the torch backend's tokens."""
    frames = synthetic_frames(num_frames)
    expected = torch_backend.generate(frames, PROMPT, max_new_tokens=40)
    got = ort_backend.generate(frames, PROMPT, max_new_tokens=40)
    assert len(expected.token_ids) >= 32, "the tiny model stopped early; the parity check needs >= 32 steps"
    assert got.token_ids == expected.token_ids
    assert got.text == expected.text
    assert got.frame_times == expected.frame_times and got.is_video == expected.is_video


def test_min_new_tokens_suppresses_eos(synthetic_frames, ort_backend, tiny_export_dir):
    """With EOS forced as the first choice, min_new_tokens keeps decoding (as MinNewTokens does)."""
    from molmo2_ros.backends.kv_greedy import GraphConfig, greedy_generate

    frames = synthetic_frames(1)
    first = ort_backend.generate(frames, PROMPT, max_new_tokens=1).token_ids[0]
    config = GraphConfig(image_patch_id=ort_backend.config.image_patch_id, eos_token_ids=(first,))
    from molmo2_ros.backends.inputs import build_inputs

    tensors = build_inputs(ort_backend.processor, frames, PROMPT, return_tensors="np").tensors
    assert greedy_generate(ort_backend.runner, tensors, config, max_new_tokens=8) == [first]
    forced = greedy_generate(ort_backend.runner, tensors, config, max_new_tokens=8, min_new_tokens=5)
    assert len(forced) >= 5 and first not in forced[:5]


def test_should_stop_ends_decoding_early(synthetic_frames, ort_backend):
    calls = []

    def stop_after_three():
        calls.append(1)
        return len(calls) > 3

    stages = []
    got = ort_backend.generate(synthetic_frames(2), PROMPT, max_new_tokens=40, should_stop=stop_after_three,
                               progress=stages.append)
    assert stages == ["preprocessing", "generating"]
    assert 1 <= len(got.token_ids) < 40
    canceled = ort_backend.generate(synthetic_frames(2), PROMPT, max_new_tokens=40, should_stop=lambda: True)
    assert canceled.token_ids == [] and canceled.text == ""


def test_streaming_hands_out_the_same_tokens_as_they_are_decoded(synthetic_frames, ort_backend):
    """The greedy loop's per-token hook: the pieces, in order, are the answer; same tokens."""
    frames = synthetic_frames(4)
    plain = ort_backend.generate(frames, PROMPT, max_new_tokens=40)
    pieces = []
    streamed = ort_backend.generate(frames, PROMPT, max_new_tokens=40, on_text=pieces.append)
    assert streamed.token_ids == plain.token_ids and streamed.text == plain.text
    assert "".join(p.text for p in pieces) == plain.text and len(pieces) > 1
    assert all(list(p.frame_times) == plain.frame_times and p.is_video for p in pieces)
    stopped = []
    ort_backend.generate(frames, PROMPT, max_new_tokens=40, on_text=stopped.append,
                         should_stop=lambda: len(stopped) >= 3)   # a listener may stop the loop
    assert 3 <= len(stopped) < len(pieces)
