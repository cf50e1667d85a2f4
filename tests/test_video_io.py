"""Reading videos and images into Frames: sampling by presentation time, true stamps."""
import cv2
import numpy as np
import pytest

from molmo2_ros.video_io import read_image, read_images, read_video

NS = 1_000_000_000


def gray_level(frame):
    return float(np.median(frame.image[60:, :, 0]))


def test_video_sampled_at_fps_keeps_presentation_stamps(test_video):
    frames = read_video(test_video, fps=2.0)  # 30 frames at 10 fps -> every 5th
    assert [f.stamp_ns for f in frames] == [i * NS // 2 for i in range(6)]
    assert [round(gray_level(f) / 8) for f in frames] == [0, 5, 10, 15, 20, 25]
    assert all(f.source_size == (160, 120) and f.image.shape == (120, 160, 3) for f in frames)
    assert frames[0].image.dtype == np.uint8


def test_max_frames_spreads_over_the_clip_and_t0_offsets(test_video):
    frames = read_video(test_video, fps=2.0, max_frames=3, t0_ns=7 * NS, frame_id="cam")
    assert [f.stamp_ns - 7 * NS for f in frames] == [0, NS, 5 * NS // 2]
    assert {f.frame_id for f in frames} == {"cam"}


def test_fps_above_the_video_rate_keeps_every_frame(test_video):
    assert len(read_video(test_video, fps=30)) == 30


def test_max_side_shrinks_the_model_view_not_the_source_size(test_video):
    frame = read_video(test_video, fps=1, max_side=80)[0]
    assert frame.image.shape == (60, 80, 3) and frame.source_size == (160, 120)


def test_images_are_rgb_frames_spaced_by_fps(tmp_path):
    image = np.zeros((20, 30, 3), np.uint8)
    image[..., 0] = 200  # red in RGB
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "b.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert read_image(tmp_path / "a.png")[0, 0].tolist() == [200, 0, 0]
    frames = read_images([tmp_path / "a.png", tmp_path / "b.png"], fps=4)
    assert [f.stamp_ns for f in frames] == [0, NS // 4]
    assert frames[1].source_size == (30, 20)


def test_bad_inputs_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_video(tmp_path / "none.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="cannot decode|no decodable"):
        read_video(tmp_path / "junk.mp4")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot decode image"):
        read_image(tmp_path / "junk.png")
    with pytest.raises(ValueError, match="fps"):
        read_images([tmp_path / "junk.png"], fps=0)
