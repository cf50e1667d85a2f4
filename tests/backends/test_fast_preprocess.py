"""The fast preprocessing path equals transformers' Molmo2 processor (through build_inputs)
and, on a sliding window, computes only the frames it has not seen."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoProcessor, Molmo2ImageProcessor, Molmo2Processor, Molmo2VideoProcessor

from molmo2_ros.backends import fast_preprocess
from molmo2_ros.backends.fast_preprocess import FastPreprocessor
from molmo2_ros.backends.inputs import build_inputs
from molmo2_ros.core.grounding import Frame

PROMPT = "Point to the red ball."


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return AutoProcessor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def full_size_processor(processor):
    """The released checkpoints' geometry (378 px crops, 3x3 video / 2x2 image pooling,
    up to 8 crops, default mean/std) around the tiny tokenizer."""
    norm = dict(do_resize=True, do_rescale=True, do_normalize=True)
    return Molmo2Processor(image_processor=Molmo2ImageProcessor(**norm), video_processor=Molmo2VideoProcessor(**norm),
                           tokenizer=processor.tokenizer, chat_template=processor.chat_template)


@pytest.fixture
def threads():
    """Run a test body at a given torch thread count: torch's bilinear kernel (and so the
    reference's rounding) depends on it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def random_frames(n, width, height, seed=0, t0=1_700_000_000_000_000_000, frame_id="cam"):
    rng = np.random.default_rng(seed)
    return [Frame(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), t0 + i * 537_000_000,
                  (width, height), frame_id) for i in range(n)]


def assert_same_inputs(reference, ours):
    assert ours.frame_times == reference.frame_times
    assert ours.is_video == reference.is_video and ours.text == reference.text
    assert list(ours.tensors) == list(reference.tensors)
    for key, expected in reference.tensors.items():
        got = ours.tensors[key]
        assert type(got) is type(expected), key
        assert got.dtype == expected.dtype and tuple(got.shape) == tuple(expected.shape), key
        got, expected = np.asarray(got.cpu() if torch.is_tensor(got) else got), np.asarray(expected)
        assert np.array_equal(got, expected), f"{key}: max |diff| {np.abs(got.astype(float) - expected).max()}"


@pytest.mark.parametrize("n, width, height", [(3, 1920, 1080), (2, 640, 480), (4, 53, 37), (2, 126, 126)])
def test_video_equals_processor(processor, n, width, height):
    frames = random_frames(n, width, height, seed=n)
    ours = FastPreprocessor(processor, "cpu").build(frames, PROMPT)
    assert_same_inputs(build_inputs(processor, frames, PROMPT), ours)


@pytest.mark.parametrize("width, height", [(640, 480), (1920, 1080), (37, 53), (3000, 200), (126, 126)])
def test_image_equals_processor(processor, width, height):
    frames = random_frames(1, width, height, seed=width)
    ours = FastPreprocessor(processor, "cpu").build(frames, PROMPT)
    assert_same_inputs(build_inputs(processor, frames, PROMPT), ours)


@pytest.mark.parametrize("n, width, height", [(2, 1920, 1080), (1, 1920, 1080), (1, 640, 480), (1, 200, 700)])
def test_full_size_geometry_equals_processor(full_size_processor, n, width, height):
    frames = random_frames(n, width, height, seed=7)
    assert_same_inputs(build_inputs(full_size_processor, frames, PROMPT),
                       FastPreprocessor(full_size_processor, "cpu").build(frames, PROMPT))


@pytest.mark.parametrize("num_threads", [1, 2])
def test_equal_under_both_torch_kernels(processor, threads, num_threads):
    threads(num_threads)
    frames = random_frames(2, 333, 251, seed=num_threads)
    fast = FastPreprocessor(processor, "cpu")
    assert_same_inputs(build_inputs(processor, frames, PROMPT), fast.build(frames, PROMPT))
    assert_same_inputs(build_inputs(processor, frames[:1], PROMPT), fast.build(frames[:1], PROMPT))


def test_frames_of_different_sizes_and_numpy_output(processor):
    a = random_frames(1, 640, 480, seed=1)[0]
    b = random_frames(1, 192, 108, seed=2, t0=a.stamp_ns + 400_000_000)[0]
    c = random_frames(1, 640, 480, seed=3, t0=a.stamp_ns + 900_000_000)[0]
    frames = [a, b, c]
    fast = FastPreprocessor(processor, "cpu")
    assert_same_inputs(build_inputs(processor, frames, PROMPT), fast.build(frames, PROMPT))
    assert_same_inputs(build_inputs(processor, frames, PROMPT, return_tensors="np"),
                       fast.build(frames, PROMPT, return_tensors="np"))


@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("size, out", [((1080, 1920), (378, 378)), ((10, 14), (20, 28)), ((7, 9), (126, 126)),
                                       ((500, 31), (64, 60)), ((126, 126), (126, 126))])
def test_resize_equals_torch_kernel_including_ties(threads, num_threads, size, out):
    # Upscaling by 2 makes weights of 1/4 and 3/4: many results land exactly on k + 0.5,
    # where only the reference's own operation order rounds the same way.
    threads(num_threads)
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8))
    reference = F.interpolate(image.permute(2, 0, 1)[None].contiguous().float(), size=out, mode="bilinear",
                              align_corners=False, antialias=False)
    reference = reference.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0)
    ours = fast_preprocess.resize_u8(image[None], *out)[0]
    assert torch.equal(ours, reference)


def test_sliding_window_processes_only_the_new_frame(processor, monkeypatch):
    resized = []
    real_resize = fast_preprocess.resize_u8
    monkeypatch.setattr(fast_preprocess, "resize_u8", lambda *a: resized.extend(a[0]) or real_resize(*a))
    stream = random_frames(6, 320, 240, seed=5)
    fast = FastPreprocessor(processor, "cpu")

    fast.build(stream[0:4], PROMPT)
    assert (fast.frames_processed, len(resized)) == (4, 4)

    slid = fast.build(stream[1:5], PROMPT)          # the window gained frame 4 and dropped frame 0
    assert (fast.frames_processed, len(resized)) == (5, 5)
    assert_same_inputs(build_inputs(processor, stream[1:5], PROMPT), slid)

    fast.build(stream[1:5], "How many red ball are there?")   # same window, another question
    assert (fast.frames_processed, len(resized)) == (5, 5)

    fast.build(stream[0:2], PROMPT)                 # frame 0 was evicted with the old window
    assert fast.frames_processed == 6


def test_cache_key_includes_frame_id(processor):
    frames = random_frames(2, 64, 48, seed=1)
    other_camera = [Frame(np.ascontiguousarray(f.image[::-1]), f.stamp_ns, f.source_size, "other") for f in frames]
    fast = FastPreprocessor(processor, "cpu")
    fast.build(frames, PROMPT)
    assert_same_inputs(build_inputs(processor, other_camera, PROMPT), fast.build(other_camera, PROMPT))
    assert fast.frames_processed == 4


def test_bad_input_is_refused_like_build_inputs(processor):
    fast = FastPreprocessor(processor, "cpu")
    gray = Frame(np.zeros((8, 8), np.uint8), 1, (8, 8))
    with pytest.raises(ValueError, match="RGB uint8"):
        fast.build([gray], PROMPT)
    with pytest.raises(ValueError, match="at least one frame"):
        fast.build([], PROMPT)
    frames = random_frames(2, 16, 16)
    with pytest.raises(ValueError, match="strictly increase"):
        fast.build(frames[::-1], PROMPT)
    with pytest.raises(ValueError, match="control tokens"):
        fast.build(frames, "look at <|video|>")
    with pytest.raises(ValueError, match="return_tensors"):
        fast.build(frames, PROMPT, return_tensors="tf")


def test_non_bilinear_processor_is_refused(processor):
    bicubic = Molmo2Processor(
        image_processor=Molmo2ImageProcessor(resample=3), video_processor=processor.video_processor,
        tokenizer=processor.tokenizer, chat_template=processor.chat_template)
    with pytest.raises(ValueError, match="bilinear"):
        FastPreprocessor(bicubic, "cpu")


def test_torch_backend_prepares_with_the_fast_path(tiny_model_dir, processor):
    from molmo2_ros.backends.torch_backend import TorchBackend

    backend = TorchBackend(str(tiny_model_dir), device="cpu")
    frames = random_frames(3, 200, 150, seed=9)
    assert_same_inputs(build_inputs(processor, frames, PROMPT), backend.prepare(frames, PROMPT))
    backend.prepare(frames[1:] + random_frames(1, 200, 150, seed=10, t0=frames[-1].stamp_ns + 1), PROMPT)
    assert backend.preprocessor.frames_processed == 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("num_threads", [1, 4])
def test_gpu_path_equals_processor_on_cpu(full_size_processor, threads, num_threads):
    threads(num_threads)
    fast = FastPreprocessor(full_size_processor, "cuda")
    for frames in (random_frames(3, 1920, 1080, seed=11), random_frames(1, 1280, 720, seed=12)):
        ours = fast.build(frames, PROMPT)
        assert all(v.device.type == "cuda" for v in ours.tensors.values())
        assert_same_inputs(build_inputs(full_size_processor, frames, PROMPT), ours)


def test_vision_features_are_reused_and_generation_is_unchanged(tiny_model_dir):
    from molmo2_ros.backends.torch_backend import TorchBackend

    backend = TorchBackend(str(tiny_model_dir), device="cpu")
    stream = random_frames(5, 160, 120, seed=21)
    for window in (stream[0:4], stream[1:5]):                 # the second window gained one frame
        inputs = backend.prepare(window, PROMPT)
        with torch.inference_mode():
            full = backend.model.get_video_features(inputs.tensors["pixel_values_videos"],
                                                    inputs.tensors["video_token_pooling"],
                                                    inputs.tensors["video_grids"]).pooler_output[0]
            reference = backend.model.generate(**inputs.tensors, max_new_tokens=12, do_sample=False)
        cached = backend.vision_cache.video_inputs(backend.preprocessor.frame_keys(window), inputs.tensors)
        torch.testing.assert_close(cached["mm_encoder_outputs"]["video"].pooler_output[0], full,
                                   rtol=1e-5, atol=1e-5)
        generation = backend.generate(window, PROMPT, max_new_tokens=12)
        assert generation.token_ids == reference[0, inputs.tensors["input_ids"].shape[1]:].tolist()
    assert backend.vision_cache.frames_encoded == 5        # 4, then only the new frame
