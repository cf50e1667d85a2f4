"""Fixtures for the node tests."""
from __future__ import annotations

import numpy as np
import pytest

from molmo2_ros.core.grounding import Frame

POINTING_ANSWER = '<points coords="0.0 1 500 500;0.5 1 250 750">red square</points>'


@pytest.fixture(scope="session")
def pointing_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny Molmo2 fine-tuned (a few seconds on CPU) to give one fixed pointing answer
    (POINTING_ANSWER, or close to it) to any point query on any frames. A random model
    never points; this one runs the real processor, generate(), parser and mapping and
    yields points, so the node's frame_id/stamp bookkeeping can be checked on them."""
    import torch

    from molmo2_ros.backends.torch_backend import TorchBackend
    from molmo2_ros.core.prompts import build_prompt

    torch.set_num_threads(1)
    torch.manual_seed(0)
    backend = TorchBackend(str(tiny_model_dir), device="cpu", dtype="float32")
    tokenizer = backend.tokenizer
    target = torch.tensor([tokenizer(POINTING_ANSWER, add_special_tokens=False)["input_ids"]
                           + [tokenizer.convert_tokens_to_ids("<|im_end|>")]])
    samples = []
    for n, size in ((1, (160, 120)), (2, (160, 120)), (4, (160, 120)), (8, (96, 72))):
        rng = np.random.default_rng(n)
        frames = [Frame(image=rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8),
                        stamp_ns=i * 500_000_000, source_size=size) for i in range(n)]
        inputs = backend.prepare(frames, build_prompt("point", "red square", video=n > 1, fps=2.0)).tensors
        ids = torch.cat([inputs["input_ids"], target], 1)
        samples.append((dict(inputs, input_ids=ids, attention_mask=torch.ones_like(ids),
                             mm_token_type_ids=torch.cat([inputs["mm_token_type_ids"],
                                                          torch.zeros_like(target)], 1)),
                        inputs["input_ids"].shape[1]))
    model = backend.model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(400):
        tensors, start = samples[step % len(samples)]
        logits = model(**tensors).logits[0, start - 1:-1]
        loss = torch.nn.functional.cross_entropy(logits.float(), tensors["input_ids"][0, start:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.002:
            break
    out = tmp_path_factory.mktemp("pointing_model")
    model.eval().save_pretrained(out)
    backend.processor.save_pretrained(out)
    backend.close()
    return out
