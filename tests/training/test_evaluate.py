"""Scoring a Grounding against shapes-world truth, and molmo2-eval end to end."""
import json

from molmo2_ros.core.grounding import GroundedPoint, Grounding, Task, Track
from molmo2_ros.training.cli import eval_main
from molmo2_ros.training.evaluate import score
from molmo2_ros.training.shapes_tasks import make_example


def grounding_from_truth(example, dx=0.0, shift_frame=0):
    stamps = [f.stamp_ns for f in example.frames]
    points = [GroundedPoint(stamps[(example.frame_index(p.stamp_ns) + shift_frame) % len(stamps)],
                            p.x + dx, p.y, p.object_id, example.query) for p in example.points]
    g = Grounding(task=example.task, query=example.query, points=points, frame_stamps_ns=stamps)
    if example.task is Task.TRACK:
        ids = sorted({p.object_id for p in points})
        g.tracks = [Track(i, example.query, [p for p in points if p.object_id == i]) for i in ids]
    if example.task is Task.COUNT:
        g.count = len(points)
    return g


def test_perfect_answers_score_one_and_misplaced_ones_zero():
    for kind in ("image_point", "image_count", "video_point", "video_track"):
        example = make_example(kind, 11)
        s = score(example, grounding_from_truth(example))
        assert s["prf"].f1 == 1.0, kind
        if kind == "image_count":
            assert s["count"] == (example.count, example.count)
        width = example.frames[0].source_size[0]
        far = score(example, grounding_from_truth(example, dx=0.6 * width))["prf"]
        assert far.hits == 0, kind
    video = make_example("video_point", 11)
    assert score(video, grounding_from_truth(video, shift_frame=1))["prf"].hits == 0   # wrong frame


def test_inside_the_object_counts_beyond_the_radius():
    # 200x200 images: the radius is 8 % of the 283 px diagonal = 22.6 px; objects reach 36 px
    for seed in range(20):
        example = make_example("image_point", seed, sizes=(200, 200, 200, 200))
        truth = example.points[0]
        far_on_object = [x for x in range(int(truth.x) - 40, int(truth.x) + 41)
                         if abs(x - truth.x) > 23 and example.inside(truth.stamp_ns, truth.object_id, x, truth.y)]
        if far_on_object:
            break
    assert far_on_object
    g = Grounding(task=Task.POINT, query=example.query, frame_stamps_ns=[truth.stamp_ns],
                  points=[GroundedPoint(truth.stamp_ns, far_on_object[0], truth.y, 1, example.query)])
    assert score(example, g)["prf"].hits == 1
    g.points = [GroundedPoint(truth.stamp_ns, truth.x, truth.y + 60, 1, example.query)]
    assert score(example, g)["prf"].hits == 0


def test_molmo2_eval_writes_a_report(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = eval_main(["--model", str(tiny_model_dir), "--shapes", "image_point=2,image_count=2,video_track=1",
                    "--max-new-tokens", "12", "--threads", "1", "--out", str(out), "--details"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert not printed.lstrip().startswith("{") and '"groups"' not in printed   # a summary, not the JSON
    assert "image_point: n 2, points P" in printed and "image_count: n 2" in printed and "count exact" in printed
    assert f"report: {out}" in printed
    report = json.loads(out.read_text())
    assert set(report["groups"]) == {"image_point", "image_count", "video_track"}
    assert report["groups"]["image_count"]["count"]["n"] == 2
    assert report["groups"]["image_point"]["points"]["n"] == 2
    assert len(report["examples"]) == 5 and report["backend"] == "torch"
