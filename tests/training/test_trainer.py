"""A few real training steps: the loss goes down, checkpoints load through the normal
inference loader, LoRA and full fine-tuning both run, and a rerun resumes."""
import json

import pytest
import torch
from safetensors import safe_open

from molmo2_ros.backends.factory import make_backend
from molmo2_ros.core.grounder import ground
from molmo2_ros.training.batching import collate, encode
from molmo2_ros.training.checkpoints import checkpoints
from molmo2_ros.training.config import Data, Freeze, Lora, TinyInit, TrainConfig, load_config
from molmo2_ros.training.shapes_tasks import make_example
from molmo2_ros.training.trainer import train


def fixed_loss(model_dir, examples):
    """Mean answer-token cross entropy of `model_dir` on `examples`."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    batch = collate([encode(processor, e) for e in examples], processor.tokenizer.pad_token_id)
    labels = batch.pop("labels")
    batch.pop("weights")
    with torch.no_grad():
        logits = model(**batch).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             labels[:, 1:].reshape(-1), ignore_index=-100).item()


def config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), tiny_init=TinyInit(seed=0),
                data=Data(shapes={"mix": {"image_point": 1.0}, "seed": 0}),
                steps=12, batch_size=4, lr=3e-3, lr_vision=3e-3, lr_adapter=3e-3, warmup=2,
                save_every=6, log_every=6, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def saved_keys(folder):
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return set(f.keys())


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_training_lowers_the_loss_and_checkpoints_load(tmp_path, mode):
    # LoRA adapts the language model's linear layers only (lm_head stays random): it learns slower
    extra = ({"lora": Lora(r=8, alpha=16), "lr": 1e-2, "dtype": "bf16", "weights_dtype": "bf16",
              "gradient_checkpointing": True}
             if mode == "lora" else {"data": Data(shapes={"mix": {"image_point": 1.0}, "seed": 0,
                                                           "aid": {"aux_weight": 1.0, "attention_weight": 1.0}}),
                                     "grad_accum": 2})
    drop = 0.3 if mode == "lora" else 0.5
    cfg = config(tmp_path, **extra)
    final = train(cfg, log=lambda m: None)
    held_out = [make_example("image_point", 10**6 + i) for i in range(4)]
    before = fixed_loss(cfg.out / "init", held_out)
    after = fixed_loss(final, held_out)
    assert after < before - drop, (before, after)
    # a plain HF checkpoint (LoRA merged): same tensor names as the starting model
    assert saved_keys(final) == saved_keys(cfg.out / "init")
    backend = make_backend("torch", str(final))
    example = held_out[0]
    g = ground(backend, example.frames, example.query, example.task, max_new_tokens=24)
    assert g.backend == "torch" and g.answer
    assert [c.name for c in checkpoints(cfg.out)] == ["checkpoint-6", "checkpoint-12"]


def test_rerun_resumes_from_the_newest_checkpoint(tmp_path):
    cfg = config(tmp_path, steps=2, save_every=1)
    train(cfg, log=lambda m: None)
    messages = []
    cfg.steps = 3
    train(cfg, log=messages.append)
    assert any("resumed from" in m and "checkpoint-2" in m for m in messages)
    state = torch.load(cfg.out / "checkpoint-3" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 3 and state["scheduler"]["last_epoch"] == 3


def test_config_file_errors_are_clear(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"output_dir": "x", "model": "m", "data": {"manifest": "a"}, "stepz": 3}))
    with pytest.raises(ValueError, match="unknown keys.*stepz"):
        load_config(path)
    path.write_text(json.dumps({"output_dir": "x", "data": {"manifest": "a"}}))
    with pytest.raises(ValueError, match="exactly one of 'model'"):
        load_config(path)


def test_processor_settings_are_saved_with_the_checkpoints(tmp_path):
    settings = {"max_crops": 4, "overlap_margins": [2, 2], "video_pooling_size": [2, 2]}
    final = train(config(tmp_path, steps=1, processor=settings), log=lambda m: None)
    saved = json.loads((final / "processor_config.json").read_text())
    assert saved["image_processor"]["max_crops"] == 4
    assert saved["image_processor"]["overlap_margins"] == [2, 2]
    assert saved["video_processor"]["pooling_size"] == [2, 2]
    with pytest.raises(ValueError, match="unknown setting 'crop_size'"):
        train(config(tmp_path, steps=1, processor={"crop_size": 3}), log=lambda m: None)


def test_freeze_switches_keep_those_weights(tmp_path):
    cfg = config(tmp_path, steps=2, freeze=Freeze(vision=True, adapter=True, embeddings=True))
    final = train(cfg, log=lambda m: None)
    with safe_open(str(cfg.out / "init" / "model.safetensors"), "pt") as a, \
            safe_open(str(final / "model.safetensors"), "pt") as b:
        for key in a.keys():
            same = torch.equal(a.get_tensor(key), b.get_tensor(key))
            if "vision_tower" in key or "multi_modal_projector" in key:
                assert same, key
            elif key.endswith("embed_tokens.weight"):
                vocab = 512   # base rows frozen, Molmo2's extra token rows train
                assert torch.equal(a.get_tensor(key)[:vocab], b.get_tensor(key)[:vocab])
            elif key == "lm_head.weight":
                assert not same


def test_two_process_ddp_on_cpu_averages_both_ranks(tmp_path):
    """`torchrun -m molmo2_ros.training.cli` (the documented multi-process route) really runs DDP:
    one process logs and saves, and the weights differ from what rank 0 alone would
    learn (independent copies, the failure mode without a process group, would match)."""
    import dataclasses
    import os
    import subprocess
    import sys

    alone = config(tmp_path / "alone", steps=2, batch_size=2, save_every=2, log_every=1)
    train(alone, log=lambda m: None)
    ddp = dataclasses.replace(alone, output_dir=str(tmp_path / "ddp" / "run"))
    path = tmp_path / "ddp.json"
    path.write_text(json.dumps(dataclasses.asdict(ddp)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--standalone", "-m", "molmo2_ros.training.cli", "--config", str(path)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("step 2/2") == 1, run.stdout
    with safe_open(str(alone.out / "final" / "model.safetensors"), "pt") as a, \
            safe_open(str(ddp.out / "final" / "model.safetensors"), "pt") as b:
        assert not torch.equal(a.get_tensor("lm_head.weight"), b.get_tensor("lm_head.weight"))
    make_backend("torch", str(ddp.out / "final"))


def test_checkpoints_state_the_window_they_were_trained_on(tmp_path):
    from molmo2_ros.backends.trained_window import TrainedWindow, read_trained_window

    cfg = config(tmp_path, steps=1, batch_size=1, save_every=1,
                 data=Data(shapes={"mix": {"video_count": 1.0}, "seed": 0, "frames": [2, 5]}))
    final = train(cfg, log=lambda m: None)
    assert read_trained_window(final) == TrainedWindow(2.0, 5)
    assert read_trained_window(cfg.out / "checkpoint-1") == TrainedWindow(2.0, 5)
