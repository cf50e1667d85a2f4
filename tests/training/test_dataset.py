"""Manifest lines with video files and images load into the frames inference would see."""
import json

import av
import cv2
import numpy as np
import pytest

from molmo2_ros.core.grounding import Task
from molmo2_ros.training.dataset import LoadStats, ManifestError, load_examples
from molmo2_ros.sim.shapes_world import make_clip


def write_mp4(path, frames, fps):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_video_and_image_sources(tmp_path):
    clip = make_clip(2, n_frames=30, fps=10, size=(160, 120), n_objects=1)
    write_mp4(tmp_path / "clip.mp4", clip.frames, 10)
    cv2.imwrite(str(tmp_path / "img.png"), clip.frames[0][:, :, ::-1])
    obj = clip.objects[15][0]
    lines = [
        {"video": "clip.mp4", "start": 1.0, "end": 2.9, "task": "track", "query": obj.label,
         "points": [{"t": 0.5, "id": 1, "x": obj.cx, "y": obj.cy}]},
        {"image": "img.png", "task": "count", "query": obj.label + "s",
         "points": [{"id": 1, "x": clip.objects[0][0].cx, "y": clip.objects[0][0].cy}]},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    stats = LoadStats()
    video, image = load_examples(manifest, stats)
    # 2 fps over [1.0, 2.9] s of a 10 fps file: frames at 1.0, 1.5, 2.0, 2.5 s
    assert [round(f.stamp_ns / 1e9, 2) for f in video.frames] == [1.0, 1.5, 2.0, 2.5]
    assert video.points[0].stamp_ns == video.frames[1].stamp_ns and video.task is Task.TRACK
    assert np.abs(video.frames[1].image.astype(int) - clip.frames[15]).mean() < 8   # lossy codec
    assert len(image.frames) == 1 and image.count == 1 and image.frames[0].source_size == (160, 120)
    assert stats.examples == 2 and stats.points_kept == 2


def test_bad_lines_name_the_line(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "a.png", "video": "b.mp4", "query": "x"}\n')
    with pytest.raises(ManifestError, match="m.jsonl:1: give exactly one of"):
        list(load_examples(manifest))
    manifest.write_text('# comment\n{"shapes": {"kind": "image_point", "seed": 1}}\n'
                        '{"image": "a.png", "task": "dance", "query": "x"}\n')
    with pytest.raises(ManifestError, match="m.jsonl:3: unknown task"):
        list(load_examples(manifest))
