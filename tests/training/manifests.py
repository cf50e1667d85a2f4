"""Small manifests of shapes-world images written as PNG files (real files, real loader)."""
import json
from pathlib import Path

import cv2

from molmo2_ros.training.shapes_tasks import make_example


def write_image_manifest(folder: Path, n_images: int = 6, queries_per_image: int = 2, first_seed: int = 0) -> Path:
    """`n_images` PNGs, each asked `queries_per_image` point queries (lines sharing an image
    share its frame); truth from the shapes world."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n_images):
        example = make_example("image_point", first_seed + i)
        name = f"img{i}.png"
        cv2.imwrite(str(folder / name), example.frames[0].image[:, :, ::-1])
        truth = example.points[0]
        for q in range(queries_per_image):
            lines.append({"image": name, "task": "point", "query": example.query,
                          "points": [{"id": 1, "x": round(truth.x + q, 1), "y": round(truth.y, 1)}]})
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def write_scene_recording(path: Path, clip, topic: str = "/camera/image_raw") -> Path:
    """The clip as a camera recording (rosbag2/MCAP, sensor_msgs/Image rgb8, header stamps =
    the clip's), as `molmo2-ros record` writes one."""
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer
    from sensor_msgs.msg import Image

    from molmo2_ros.bag_types import typestore
    from molmo2_ros.ros.messages import to_time

    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        images = writer.add_connection(topic, "sensor_msgs/msg/Image", typestore=typestore())
        for frame, stamp in zip(clip.frames, clip.stamps_ns):
            msg = Image(height=frame.shape[0], width=frame.shape[1], encoding="rgb8", step=frame.shape[1] * 3,
                        data=frame.tobytes())
            msg.header.stamp = to_time(stamp)
            writer.write(images, stamp, serialize_message(msg))
    return path


def scene_annotations(clip, window_s: float = 2.0, frames: int = 4, fps: float = 2.0) -> list[dict]:
    """What a careful reviewer writes for the recorded scene: for every window of `frames`
    frames at `fps` (one every `window_s` s) and every object, a point query answered at the
    object's first visible frame (annotation lines: no source, `molmo2-train convert
    --annotations` adds the recording)."""
    step = round(clip.fps / fps)
    span = step * (frames - 1)
    lines = []
    for first in range(0, len(clip.frames) - span, round(window_s * clip.fps)):
        sampled = list(range(first, first + span + 1, step))
        labels = sorted({o.label for o in clip.objects[first]})
        for label in labels:
            seen = next(((i, o) for i in sampled for o in clip.objects[i] if o.label == label and o.visible), None)
            if seen is None:
                continue
            i, o = seen
            lines.append({"start_ns": clip.stamps_ns[first], "end_ns": clip.stamps_ns[sampled[-1]],
                          "max_frames": frames, "task": "point", "query": label,
                          "points": [{"stamp_ns": clip.stamps_ns[i], "id": 1, "x": round(o.cx, 1),
                                      "y": round(o.cy, 1)}]})
    return lines
