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
