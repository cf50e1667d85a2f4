"""Training inputs are inference inputs: same processor path, same prompt, same times."""
import pytest
import torch

from molmo2_ros.backends.inputs import build_inputs
from molmo2_ros.core.answer_parser import parse_answer
from molmo2_ros.training.batching import IGNORE, collate, encode
from molmo2_ros.training.shapes_tasks import make_example


@pytest.fixture(scope="module")
def model_and_processor(tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return (AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval(),
            AutoProcessor.from_pretrained(tiny_model_dir))


def test_encoded_prompt_is_the_inference_prompt_and_answer_parses_back(model_and_processor):
    _, processor = model_and_processor
    example = make_example("video_track", 3)
    enc = encode(processor, example)
    inference = build_inputs(processor, example.frames, example.prompt())
    n = inference.tensors["input_ids"].shape[1]
    assert torch.equal(enc.tensors["input_ids"][0, :n], inference.tensors["input_ids"][0])
    assert torch.equal(enc.tensors["pixel_values_videos"], inference.tensors["pixel_values_videos"])
    assert (enc.labels[:n] == IGNORE).all() and (enc.labels[n:] != IGNORE).all()
    assert enc.labels[-1] == processor.tokenizer.eos_token_id
    assert enc.weights[n:].eq(0.2).all() and enc.weights[:n].eq(0).all()
    # the target is in Molmo2 syntax at the processor's own frame times
    parsed = parse_answer(processor.tokenizer.decode(enc.tensors["input_ids"][0, n:-1]))
    assert {round(p.t, 1) for p in parsed.points} <= {round(t, 1) for t in enc.frame_times}
    truth_ids = {p.object_id for p in example.points}
    assert len(parsed.tracks) == len(truth_ids)
    assert len(parsed.points) == len(example.points)


@pytest.mark.parametrize("kind", ["image_count", "video_point"])
def test_collated_batch_equals_examples_alone(model_and_processor, kind):
    model, processor = model_and_processor
    encoded = [encode(processor, make_example(kind, s)) for s in (1, 2, 5)]
    batch = collate(encoded, processor.tokenizer.pad_token_id)
    labels = batch.pop("labels")
    batch.pop("weights")
    with torch.no_grad():
        together = model(**batch).logits
        for i, e in enumerate(encoded):
            alone = model(**e.tensors).logits[0]
            k = alone.shape[0]
            assert torch.allclose(together[i, :k], alone, atol=1e-4), i
            assert (labels[i, k:] == IGNORE).all()


def test_mixed_batch_is_refused(model_and_processor):
    _, processor = model_and_processor
    items = [encode(processor, make_example("image_point", 1)), encode(processor, make_example("video_point", 1))]
    with pytest.raises(ValueError, match="only image examples or only video"):
        collate(items, 0)
