"""The tiny Molmo2 loads through the same code path as real checkpoints and is sane."""
import json

import pytest


def test_saved_folder_holds_safetensors_processor_and_template(tiny_model_dir):
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert "model.safetensors" in names
    assert not any(n.endswith(".bin") for n in names)
    assert {"config.json", "processor_config.json", "tokenizer.json", "chat_template.jinja"} <= names
    total = sum(p.stat().st_size for p in tiny_model_dir.iterdir())
    assert total < 5_000_000


def test_loads_with_auto_classes_and_special_tokens_line_up(tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from molmo2_ros.tiny_model import MOLMO2_EXTRA_TOKENS

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, use_safetensors=True)
    assert type(processor).__name__ == "Molmo2Processor"
    assert type(model).__name__ == "Molmo2ForConditionalGeneration"
    cfg = model.config
    tok = processor.tokenizer
    vocab = cfg.text_config.vocab_size
    for offset, token in enumerate(MOLMO2_EXTRA_TOKENS):
        assert tok.convert_tokens_to_ids(token) == vocab + offset
    assert tok.convert_tokens_to_ids("<im_patch>") == cfg.image_patch_id
    assert tok.convert_tokens_to_ids("<frame_start>") == cfg.frame_start_token_id
    assert tok.convert_tokens_to_ids("<low_res_im_start>") == cfg.low_res_image_start_token_id
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    # 5.23 leaves these unset when built from scratch; the saved processor must carry them.
    for sub in (processor.image_processor, processor.video_processor):
        assert sub.do_resize and sub.do_rescale and sub.do_normalize
        assert sub.size["height"] == cfg.vision_config.image_size[0]


def test_digits_are_single_tokens_after_reload(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    pieces = tok.tokenize(' coords="13.5 1 078 999"')
    digits = [p for p in pieces if any(c.isdigit() for c in p)]
    assert digits and all(len(p) == 1 for p in digits)


def test_official_chat_template_places_video_first(tiny_model_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Point to the cup."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|video|><|im_start|>user\nPoint to the cup.<|im_end|>\n<|im_start|>assistant\n"


def test_size_overrides_and_seed(tmp_path):
    from molmo2_ros.tiny_model import build_tiny_molmo2

    out = build_tiny_molmo2(tmp_path / "m", seed=3, hidden_size=32, num_hidden_layers=1, vocab_size=400)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["text_config"]["hidden_size"] == 32
    assert cfg["text_config"]["num_hidden_layers"] == 1
    assert cfg["image_patch_id"] == 402
    with pytest.raises(TypeError, match="unknown size overrides"):
        build_tiny_molmo2(tmp_path / "bad", hidden=3)
