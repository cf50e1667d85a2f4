"""The video an inference server gets: lossless is exact, compact is small and close,
the rate makes the server present the window's own seconds, a silent audio track is there."""
import io

import av
import numpy as np
import pytest

from molmo2_ros.backends.server_video import (decode_video, encode_image, encode_video, presented_times,
                                              video_rate)


def test_lossless_video_decodes_to_the_exact_frames_at_the_windows_rate(synthetic_frames):
    frames = synthetic_frames(6, size=(161, 121))
    data = encode_video(frames, video_rate(2.0), "lossless")
    decoded = decode_video(data)
    assert len(decoded) == 6 and all(np.array_equal(d, f.image) for d, f in zip(decoded, frames))
    with av.open(io.BytesIO(data)) as container:
        video = container.streams.video[0]
        assert float(video.average_rate) == 2.0
        assert len(container.streams.audio) == 1   # transformers serve needs one


def test_compact_video_is_smaller_and_close():
    from molmo2_ros.core.grounding import Frame
    from molmo2_ros.sim.shapes_world import make_clip

    clip = make_clip(3, n_frames=6, size=(320, 240), n_objects=3)
    rng = np.random.default_rng(0)   # a camera's sensor noise: what makes lossless video large
    frames = [Frame(image=np.clip(f + rng.normal(0, 3, f.shape), 0, 255).astype(np.uint8), stamp_ns=t,
                    source_size=clip.size) for f, t in zip(clip.frames, clip.stamps_ns)]
    lossless = encode_video(frames, video_rate(2.0), "lossless")
    compact = encode_video(frames, video_rate(2.0), "compact")
    assert len(compact) < len(lossless) / 3
    decoded = decode_video(compact)
    assert len(decoded) == 6
    error = np.mean([np.abs(d.astype(int) - f.image).mean() for d, f in zip(decoded, frames)])
    assert error < 4, error


def test_compact_pads_odd_sizes_to_even():
    from molmo2_ros.core.grounding import Frame

    frames = [Frame(image=np.full((121, 161, 3), 100, np.uint8), stamp_ns=i * 500_000_000, source_size=(161, 121))
              for i in range(2)]
    assert decode_video(encode_video(frames, video_rate(2.0), "compact"))[0].shape == (122, 162, 3)


@pytest.mark.parametrize("fps, times", [
    (2.0, [0.0, 0.5, 1.0, 1.5]),
    (3.0, [0.0, 0.3, 0.7, 1.0]),      # index / fps with one decimal, as the processor writes it
    (1.9999, [0.0, 0.5, 1.0, 1.5]),   # a median stamp gap a hair off 0.5 s still makes 2 fps
])
def test_presented_times(fps, times):
    assert presented_times(4, video_rate(fps)) == times


def test_a_rate_must_be_positive():
    with pytest.raises(ValueError, match="positive frame rate"):
        video_rate(0.0)


def test_one_frame_is_a_png_or_a_jpeg(synthetic_frames):
    frame = synthetic_frames(1)[0]
    png, mime = encode_image(frame, "lossless")
    assert mime == "image/png" and png.startswith(b"\x89PNG")
    jpeg, mime = encode_image(frame, "compact")
    assert mime == "image/jpeg" and jpeg.startswith(b"\xff\xd8")
