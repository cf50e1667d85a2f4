"""`molmo2-ros` end to end: the installed console script on a real video file and images."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from molmo2_ros import cli

NS = 1_000_000_000


def console_script() -> str:
    script = Path(sys.executable).with_name("molmo2-ros")
    return str(script) if script.exists() else shutil.which("molmo2-ros")


def run_cli(*args, env=None):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([console_script(), *map(str, args)], capture_output=True, text=True, timeout=300,
                          env=environment)


def test_infer_on_a_video_file_prints_json_and_writes_a_contact_sheet(tiny_model_dir, test_video, tmp_path):
    sheet = tmp_path / "sheet.png"
    proc = run_cli("infer", "--video", test_video, "--query", "white square", "--task", "point",
                   "--model", tiny_model_dir, "--max-new-tokens", "8", "--json", "--annotate", sheet)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["task"] == "point" and result["query"] == "white square"
    assert result["frame_stamps_ns"] == [i * NS // 2 for i in range(6)]  # 3 s clip at the default 2 fps
    assert result["backend"] == "torch" and result["model"] == str(tiny_model_dir)
    assert isinstance(result["warnings"], list) and isinstance(result["answer"], str)
    assert result["timings"]["generation"] > 0 and result["decode_s"] > 0
    image = cv2.imread(str(sheet))
    assert image.shape == (2 * 120, 4 * 160, 3)  # 6 frames on a 4-column sheet


def test_infer_on_images_writes_an_mp4(tiny_model_dir, tmp_path):
    paths = []
    for i in range(2):
        image = np.full((48, 64, 3), 40 * i, np.uint8)
        paths.append(tmp_path / f"img{i}.png")
        cv2.imwrite(str(paths[-1]), image)
    movie = tmp_path / "out.mp4"
    proc = run_cli("infer", "--images", *paths, "--query", "boxes", "--task", "count", "--fps", "1",
                   "--model", tiny_model_dir, "--max-new-tokens", "6", "--annotate", movie)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("count: 'boxes'  (2 frames, torch")
    assert "timings: decode" in proc.stdout
    from molmo2_ros.video_io import read_video

    assert [f.stamp_ns for f in read_video(movie, fps=10)] == [0, NS]


def test_single_image_ask_in_process(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "one.png"
    cv2.imwrite(str(path), np.zeros((32, 32, 3), np.uint8))
    code = cli.main(["infer", "--images", str(path), "--query", "What is here?", "--task", "ask",
                     "--model", str(tiny_model_dir), "--max-new-tokens", "3", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("ask: 'What is here?'  (1 frames") and "answer: " in out


def test_missing_weights_offline_fail_with_fetch_instructions(tmp_path, test_video):
    proc = run_cli("infer", "--video", test_video, "--query", "cup", "--model", "molmo2-ros-tests/no-such-model",
                   env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 1
    assert "hf download molmo2-ros-tests/no-such-model" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_arguments_are_refused(tmp_path, capsys):
    assert cli.main(["infer", "--video", str(tmp_path / "none.mp4"), "--query", "cup"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["infer", "--video", "x.mp4", "--query", "cup", "--annotate", "out.gif"]) == 1
    assert cli.main(["infer", "--images", "a.png", "--query", "cup", "--backend", "onnxruntime",
                     "--allow-pickle"]) == 1
    assert "torch backend" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["infer", "--query", "cup"])  # neither --video nor --images


def test_tiny_model_command(tmp_path, capsys):
    assert cli.main(["tiny-model", str(tmp_path / "tiny"), "--seed", "1"]) == 0
    assert (tmp_path / "tiny" / "model.safetensors").is_file()
    assert capsys.readouterr().out.strip() == str(tmp_path / "tiny")


def test_a_command_registers_with_one_table_row(tmp_path, monkeypatch, capsys):
    (tmp_path / "hello_cmd.py").write_text(
        "def add_arguments(p):\n    p.add_argument('--name')\n"
        "def run(a):\n    print('hello', a.name)\n    return 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "hello", ("hello_cmd", "say hello"))
    assert cli.main(["hello", "--name", "robot"]) == 7
    assert capsys.readouterr().out == "hello robot\n"


def test_infer_without_a_model_uses_the_node_default_the_packaged_model(test_video):
    from molmo2_ros.backends.default_model import default_model

    proc = run_cli("infer", "--video", test_video, "--query", "red circle", "--max-new-tokens", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model"] == default_model()[0]


def test_infer_uses_the_model_folders_trained_window_unless_told_otherwise(tiny_model_dir, test_video, tmp_path):
    from molmo2_ros.backends.trained_window import TrainedWindow, write_trained_window

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    write_trained_window(model, TrainedWindow(fps=1.0, max_frames=3))
    proc = run_cli("infer", "--video", test_video, "--query", "cup", "--model", model, "--max-new-tokens", "2",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    assert "trained on 3 frames at 1 fps (3 s)" in proc.stderr
    assert json.loads(proc.stdout)["frame_stamps_ns"] == [0, NS, 2 * NS]   # the 3 s clip at 1 fps
    proc = run_cli("infer", "--video", test_video, "--query", "cup", "--model", model, "--max-new-tokens", "2",
                   "--json", "--max-frames", "8", "--fps", "2")
    assert json.loads(proc.stdout)["frame_stamps_ns"] == [i * NS // 2 for i in range(6)]   # explicit flags win


def test_infer_stream_prints_points_before_the_result(tmp_path):
    """--stream on the shipped model: a 4-frame shapes clip's track points are printed as they
    become final, before the result, each equal to the result's point (JSON lines)."""
    from molmo2_ros.training.shapes_tasks import HELDOUT_SEED, make_example

    example = make_example("video_track", HELDOUT_SEED + 4, frames=(4, 4))
    paths = []
    for i, frame in enumerate(example.frames):
        paths.append(tmp_path / f"frame{i}.png")
        cv2.imwrite(str(paths[-1]), frame.image[:, :, ::-1])
    proc = run_cli("infer", "--images", *paths, "--query", example.query, "--task", "track", "--fps", "2",
                   "--stream", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    streamed = [json.loads(line)["stream"] for line in lines if line.startswith('{"stream"')]
    result = json.loads("\n".join(lines[len(streamed):]))
    assert streamed, proc.stdout
    tracks = {t["id"]: t["points"] for t in result["tracks"]}
    for track_id in {p["object_id"] for p in streamed}:
        mine = [(p["stamp_ns"], p["x"], p["y"]) for p in streamed if p["object_id"] == track_id]
        assert mine == [(p["stamp_ns"], p["x"], p["y"]) for p in tracks[track_id]][:len(mine)]
    assert [p["elapsed_s"] for p in streamed] == sorted(p["elapsed_s"] for p in streamed)
