"""A tiny, randomly initialised Molmo2 built fully offline.

It has the real architecture (transformers' native `Molmo2ForConditionalGeneration`),
a locally trained byte-level BPE tokenizer holding every Molmo2 special token at the
same offsets as the released checkpoints, the official chat template, and a real
`Molmo2Processor`. It is saved with `save_pretrained`, so the very code that loads
`allenai/Molmo2-4B` loads it. Tests, the CLI, the engines' exports and training's
from-scratch runs use it; its answers are noise, its plumbing is real.
"""
from __future__ import annotations

import json
from pathlib import Path

# Molmo2's extra tokens, in the order of the released checkpoints: they sit right after
# the base vocabulary (`text_config.vocab_size`), e.g. `<im_start>` = vocab_size + 0.
MOLMO2_EXTRA_TOKENS = (
    "<im_start>",
    "<im_end>",
    "<im_patch>",
    "<im_col>",
    "<low_res_im_start>",
    "<|image|>",
    "<im_low>",
    "<frame_start>",
    "<frame_end>",
    "<|video|>",
)
# Chat tokens of the Qwen3 base vocabulary that Molmo2's template and generation use.
CHAT_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# The chat template shipped with allenai/Molmo2-4B / -8B (chat_template.jinja): images or
# video first, then ChatML-style turns; `style` prefixes select non-demo output styles.
MOLMO2_CHAT_TEMPLATE = (
    "{% set DEMO_STYLES = ['point_count','pointing','cosyn_point','user_qa','long_caption','short_caption',"
    "'video_long_caption','video_short_caption','video_point_track_per_frame','video_point_track_start_end',"
    "'video_point_track_all_frames','video_single_point_track_start_end','video_transcript',"
    "'video_clip_caption_start_end','video_clip_caption_start_end_in_seconds','video_clip_transcript_start_end',"
    "'video_clip_transcript_start_end_in_seconds','video_frame_caption_timestamp',"
    "'video_frame_caption_timestamp_in_seconds','correction_qa','text_sft','video_point','video_point_count',"
    "'video_count','video_count_point','multi_image_pointing','multi_image_counting',"
    "'multi_image_point_then_count','multi_image_count_then_point','demo','a_okvqa_mc','ai2_diagram_no_letter',"
    "'ai2_diagram','science_qa','multi_image_mc','multi_image_mc_exp','mantis_instruct_mc',"
    "'video_multiple_choice','video_multiple_choice_count_without_pointing',"
    "'video_multiple_choice_multiple_correct','video_multiple_choice_w_subtitle'] %}"
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% set has_subtitle = messages and messages[0]['role'].lower() == 'subtitle' %}"
    "{% for message in messages %}{% if message['content'] is not string %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% elif content['type'] == 'video' or 'video' in content or 'video_url' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% endif %}{% endfor %}{% endif %}{% endfor %}"
    "{% if image_count.value == 1 %}{{ '<|image|>' }}{% elif image_count.value > 1 %}"
    "{% for i in range(image_count.value) %}{{ 'Image ' ~ (i + 1) ~ '<|image|>' }}{% endfor %}{% endif %}"
    "{% for _ in range(video_count.value) %}{{ '<|video|>' }}{% endfor %}"
    "{% if has_subtitle %}{{ messages[0]['content'] }}{% endif %}"
    "{% for message in messages %}{% set role = message['role'].lower() %}"
    "{% if role == 'subtitle' %}{% continue %}{% endif %}"
    "{% set conv_index = loop.index - (1 if has_subtitle else 0) %}"
    "{%- if (conv_index % 2 == 1 and role != 'user') or (conv_index % 2 == 0 and role != 'assistant') -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{% if message['content'] is string %}{% set text_content = message['content'] %}"
    "{% else %}{% set m = namespace(text='') %}{% for content in message['content'] %}"
    "{% if content['type'] == 'text' %}"
    "{% if content['style'] is defined and content['style'] not in DEMO_STYLES %}"
    "{% set seg = content['style'] ~ ': ' ~ content['text'] %}{% else %}{% set seg = content['text'] %}{% endif %}"
    "{% set m.text = m.text ~ ('' if not m.text else ' ') ~ seg %}{% endif %}{% endfor %}"
    "{% set text_content = m.text %}{% endif %}"
    "{% if role == 'user' %}"
    "{% if not (has_subtitle and loop.index == 2) and not (not has_subtitle and loop.first) %}"
    "{{ '<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>user\\n' }}{{ text_content }}{{ '<|im_end|>\\n' }}"
    "{% else %} {# assistant #}{{ '<|im_start|>assistant\\n' }}{{ text_content }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Text the tokenizer's BPE merges are learned from: Molmo2's prompts and answer syntax.
DEFAULT_TOKENIZER_TEXT = (
    "Point to the {0}. Point to all {0}. How many {0} are there? Track {0} in 2 FPS. track the {0}. "
    'Counting the <points coords="13.5 1 120 305 2 451 702;56.0 3 486 697">{0}</points> shows a total of 3. '
    '<tracks coords="0.0 1 078 278 2 500 500;0.5 2 508 503;1.0 1 094 292">{0}</tracks> There are none. '
    "What is the {0} doing? The {0} is on the table next to the robot gripper."
)
DEFAULT_LABELS = ("cup", "person", "robot gripper", "red ball", "car", "dog", "box", "bottle")

# Default sizes: a couple of MB on disk, a few hundred ms per generate() on one CPU core.
DEFAULT_SIZES = dict(
    vocab_size=512,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vit_hidden_size=32,
    vit_num_hidden_layers=3,
    vit_num_attention_heads=2,
    vit_intermediate_size=64,
    adapter_intermediate_size=64,
    image_size=126,
    patch_size=14,
    max_position_embeddings=4096,
)


def _train_tokenizer(vocab_size: int, texts: list[str]):
    """Byte-level BPE whose base vocabulary is exactly `vocab_size` tokens (chat tokens
    included), followed by Molmo2's extra tokens at vocab_size + 0, + 1, ..."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers import AddedToken

    tok = Tokenizer(models.BPE())
    # Every digit is its own token, so 0..1000 coordinates and times are learnable.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(CHAT_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.get_vocab_size() > vocab_size:
        raise ValueError(f"vocab_size={vocab_size} is smaller than the byte alphabet plus chat tokens")
    # Pad the base vocabulary like the released checkpoints do (|<EXTRA_TOKENS_i>|).
    padding = [f"|<EXTRA_TOKENS_{i}>|" for i in range(vocab_size - tok.get_vocab_size())]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in padding])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in MOLMO2_EXTRA_TOKENS])
    for offset, token in enumerate(MOLMO2_EXTRA_TOKENS):
        assert tok.token_to_id(token) == vocab_size + offset, token
    return tok


def build_tiny_molmo2(out_dir, seed: int = 0, tokenizer_texts: list[str] | None = None, **size_overrides) -> Path:
    """Build, save and return `out_dir` holding a random tiny Molmo2 + its processor.

    `size_overrides` override DEFAULT_SIZES (e.g. hidden_size=128, num_hidden_layers=4);
    `tokenizer_texts` replace the text the BPE merges are learned from.
    """
    import torch
    from transformers import (
        Molmo2Config,
        Molmo2ForConditionalGeneration,
        Molmo2ImageProcessor,
        Molmo2Processor,
        Molmo2VideoProcessor,
        PreTrainedTokenizerFast,
    )

    unknown = set(size_overrides) - set(DEFAULT_SIZES)
    if unknown:
        raise TypeError(f"unknown size overrides {sorted(unknown)}; known: {sorted(DEFAULT_SIZES)}")
    s = {**DEFAULT_SIZES, **size_overrides}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    texts = tokenizer_texts or [DEFAULT_TOKENIZER_TEXT.format(label) for label in DEFAULT_LABELS]
    texts = list(texts) + [" ".join(f"{i:03d}" for i in range(0, 1001, 7)), "0.0 0.5 1.0 1.5 2.0 12.5"]
    raw_tokenizer = _train_tokenizer(s["vocab_size"], texts)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw_tokenizer,
        bos_token="<|im_end|>",  # as in the released checkpoints
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=list(MOLMO2_EXTRA_TOKENS),
        model_max_length=s["max_position_embeddings"],
    )

    vocab = s["vocab_size"]
    ids = {t: vocab + i for i, t in enumerate(MOLMO2_EXTRA_TOKENS)}
    text_head_dim = s["hidden_size"] // s["num_attention_heads"]
    vit_head_dim = s["vit_hidden_size"] // s["vit_num_attention_heads"]
    config = Molmo2Config(
        vision_config=dict(
            hidden_size=s["vit_hidden_size"],
            intermediate_size=s["vit_intermediate_size"],
            num_hidden_layers=s["vit_num_hidden_layers"],
            num_attention_heads=s["vit_num_attention_heads"],
            num_key_value_heads=s["vit_num_attention_heads"],
            head_dim=vit_head_dim,
            image_size=[s["image_size"], s["image_size"]],
            patch_size=s["patch_size"],
        ),
        adapter_config=dict(  # pools ViT features, so it works at the ViT's width
            vision_feature_layer=[-1, -2],
            hidden_size=s["vit_hidden_size"],
            num_attention_heads=s["vit_num_attention_heads"],
            num_key_value_heads=s["vit_num_attention_heads"],
            head_dim=vit_head_dim,
            intermediate_size=s["adapter_intermediate_size"],
            text_hidden_size=s["hidden_size"],
        ),
        text_config=dict(
            hidden_size=s["hidden_size"],
            num_hidden_layers=s["num_hidden_layers"],
            num_attention_heads=s["num_attention_heads"],
            num_key_value_heads=s["num_key_value_heads"],
            head_dim=text_head_dim,
            intermediate_size=s["intermediate_size"],
            vocab_size=vocab,
            max_position_embeddings=s["max_position_embeddings"],
        ),
        image_start_token_id=ids["<im_start>"],
        low_res_image_start_token_id=ids["<low_res_im_start>"],
        image_end_token_id=ids["<im_end>"],
        image_patch_id=ids["<im_patch>"],
        frame_start_token_id=ids["<frame_start>"],
        frame_end_token_id=ids["<frame_end>"],
    )
    torch.manual_seed(seed)
    model = Molmo2ForConditionalGeneration(config).eval()
    model.generation_config.bos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")

    size = {"height": s["image_size"], "width": s["image_size"]}
    normalisation = dict(do_resize=True, do_rescale=True, do_normalize=True,
                         image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = Molmo2Processor(
        image_processor=Molmo2ImageProcessor(size=size, patch_size=s["patch_size"], max_crops=2, **normalisation),
        video_processor=Molmo2VideoProcessor(size=size, patch_size=s["patch_size"], **normalisation),
        tokenizer=tokenizer,
        chat_template=MOLMO2_CHAT_TEMPLATE,
    )
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    (out / "TINY_MODEL.json").write_text(json.dumps({"seed": seed, "sizes": s}, indent=2))
    return out


def add_arguments(parser) -> None:
    """`molmo2-ros tiny-model OUT_DIR`."""
    parser.add_argument("out_dir", help="folder to write the model and processor to")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    print(build_tiny_molmo2(args.out_dir, seed=args.seed))
    return 0
