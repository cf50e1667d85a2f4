"""The field fine-tuning loop through the public commands, on the shapes scene.

Default suite: `molmo2-ros record` against a running node (continuous query) and the video
publisher writes a rosbag2/MCAP recording that rosbags reads back with the message
definitions inside, and `molmo2-train convert` keeps only lines that load.
Slow: the rest of the loop on that recording: a scripted correction through the review
page in a real browser, `molmo2-train` with validation (metrics log, plot, best
checkpoint), `molmo2-engines export` of the best checkpoint, and the node serving answers
from those engines."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from node_harness import Harness, NodeProcess, write_params  # noqa: E402

BIN = Path(sys.executable).parent
TOPIC = "/field/camera/image_raw"
RESULTS = "/molmo2_grounding/grounding"


def env(domain: int) -> dict:
    return dict(os.environ, ROS_DOMAIN_ID=str(domain), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def node_params(path: Path, model: str, **extra) -> Path:
    params = dict(model=model, image_topic=TOPIC, query="red circle", query_period=1.0, window_seconds=2.0,
                  max_frames=4, tracking_enable=False, max_new_tokens=48)
    return write_params(path, **{**params, **extra})


@pytest.fixture(scope="module")
def field(pointing_model_dir, tmp_path_factory):
    """A node answering a continuous query on the published shapes scene, recorded for 10 s."""
    tmp = tmp_path_factory.mktemp("field")
    domain = 50 + (os.getpid() + 37) % 100
    publisher = subprocess.Popen([sys.executable, "-m", "molmo2_ros.ros.video_publisher", "--topic", TOPIC,
                                  "--rate", "10", "--size", "160x120"], env=env(domain), start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    node = NodeProcess(node_params(tmp / "params.yaml", str(pointing_model_dir)), domain, tmp / "node.log")
    harness = Harness(domain, "/unused/image")
    try:
        harness.wait_for(lambda: len(harness.groundings) >= 2, 240, "the node's continuous answers")
        record = subprocess.run([str(BIN / "molmo2-ros"), "record", "--out", str(tmp / "rec"), "--image-topic",
                                 TOPIC, "--duration", "10"], env=env(domain), capture_output=True, text=True,
                                timeout=120)
    finally:
        harness.close()
        node.stop()
        os.killpg(publisher.pid, signal.SIGINT)
        publisher.wait(timeout=20)
    assert record.returncode == 0, record.stdout + record.stderr
    return {"tmp": tmp, "bag": tmp / "rec", "record": record, "domain": domain, "model": pointing_model_dir}


def test_record_from_the_running_node_then_convert(field):
    from rosbags.highlevel import AnyReader

    from molmo2_ros.training.convert import convert
    from molmo2_ros.training.dataset import load_all

    out = field["record"].stdout
    assert f"recording {TOPIC}, {RESULTS} into {field['bag']}" in out
    assert "duration 10 s reached:" in out and f"on {RESULTS}" in out
    metadata = yaml.safe_load((field["bag"] / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert metadata["storage_identifier"] == "mcap"
    with AnyReader([field["bag"]]) as reader:   # no typestore given: the definitions come from the file
        counts = {c.topic: c.msgcount for c in reader.connections}
        types = {c.topic: c.msgtype for c in reader.connections}
        answers = [reader.deserialize(raw, c.msgtype)
                   for c, _, raw in reader.messages([c for c in reader.connections if c.topic == RESULTS])]
    assert types == {TOPIC: "sensor_msgs/msg/Image", RESULTS: "molmo2_ros/msg/Grounding"}
    assert counts[TOPIC] >= 30 and counts[RESULTS] >= 3
    assert {a.query for a in answers} == {"red circle"} and all(a.frame_stamps for a in answers)

    manifest = field["tmp"] / "data" / "train.jsonl"
    report = convert(field["bag"], TOPIC, manifest, results_topic=RESULTS)
    assert report.kept >= 2 and report.kept + sum(report.dropped.values()) == counts[RESULTS]
    assert set(report.dropped) <= {"frames from before the recording began", "frames from after the recording ended",
                                   "frames missing from the recording"}
    assert len(load_all(manifest)) == report.kept   # every line it wrote loads


@pytest.mark.slow
def test_the_whole_loop_review_train_export_serve(field, tmp_path):
    from browser import chromium, click_image, frame_canvases, press, wait_status

    from molmo2_ros.training.review import Review, make_server

    data = tmp_path / "data"
    manifest = data / "train.jsonl"
    done = subprocess.run([str(BIN / "molmo2-train"), "convert", str(field["bag"]), "--image-topic", TOPIC,
                           "--results-topic", RESULTS, "--out", str(manifest)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "kept " in done.stdout, done.stderr

    # review: move the first answer's first point to (40, 30) on its frame, save
    first = json.loads(manifest.read_text().splitlines()[0])
    server = make_server(Review(manifest), 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with chromium(tmp_path / "profile") as driver:
            url = f"http://127.0.0.1:{server.server_address[1]}/"
            driver.get(url)
            line = json.loads(urllib.request.urlopen(url + "api/line/0", timeout=30).read())
            point = line["points"][0]
            canvases = frame_canvases(driver, len(line["frames"]))
            click_image(driver, canvases[point["frame"]], point["x"], point["y"])
            click_image(driver, canvases[point["frame"]], 40, 30)
            press(driver, "a")
            press(driver, "s")
            wait_status(driver, "saved")
    finally:
        server.shutdown()
        server.server_close()
    corrected = json.loads(manifest.read_text().splitlines()[0])
    stamp = line["frames"][point["frame"]]["stamp_ns"]
    moved = [p for p in corrected["points"] if p["stamp_ns"] == stamp and p["id"] == point["id"]]
    assert len(moved) == 1 and abs(moved[0]["x"] - 40) <= 1 and abs(moved[0]["y"] - 30) <= 1
    assert corrected["reviewed"] is True and corrected["points"] != first["points"]

    # train a few steps with validation
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "output_dir": "run", "model": str(field["model"]), "data": {"manifest": "data/train.jsonl"},
        "validation": {"fraction": 0.25, "max_new_tokens": 48}, "steps": 4, "batch_size": 2, "lr": 1e-3,
        "warmup": 1, "save_every": 2, "log_every": 1, "threads": 1}))
    done = subprocess.run([str(BIN / "molmo2-train"), "--config", str(config)], capture_output=True, text=True,
                          timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = tmp_path / "run"
    assert "validation at step 4" in done.stdout and (run / "metrics.jsonl").is_file()
    assert subprocess.run([str(BIN / "molmo2-train"), "plot", str(run)], timeout=120).returncode == 0
    assert (run / "training.png").is_file() and (run / "best").is_dir()

    # export the best checkpoint; the node serves from the engines
    engines = tmp_path / "engines"
    done = subprocess.run([str(BIN / "molmo2-engines"), "export", "--model", str(run / "best"), "--out", str(engines),
                           "--max-frames", "8", "--max-prompt", "1024", "--max-new-tokens", "64"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    domain = field["domain"]
    params = node_params(tmp_path / "params.yaml", str(run / "best"), backend="onnxruntime",
                         engine_dir=str(engines), query="")
    node = NodeProcess(params, domain, tmp_path / "node.log")
    harness = Harness(domain, TOPIC)
    try:
        harness.wait_diag(lambda d: d.get("backend") == "onnxruntime" and d.get("state") == "active", 240,
                          "the node active on the onnxruntime engines")
        harness.publish_frames(12, hz=10)
        status, result, _ = harness.ask("red circle", timeout=240)
        assert result.error_code == 0, result.error_message
        assert result.grounding.backend == "onnxruntime" and result.grounding.answer
    finally:
        harness.close()
        node.stop()


def test_record_a_compressed_camera(tmp_path):
    """--compressed records CompressedImage on <topic>/compressed, and the frames convert back."""
    from molmo2_ros.training.dataset import read_recording_images

    domain = 50 + (os.getpid() + 41) % 100
    publisher = subprocess.Popen([sys.executable, "-m", "molmo2_ros.ros.video_publisher", "--topic", TOPIC,
                                  "--compressed", "--rate", "10", "--size", "96x64", "--seconds", "3"], env=env(domain),
                                 start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        record = subprocess.run([str(BIN / "molmo2-ros"), "record", "--out", str(tmp_path / "rec"), "--image-topic",
                                 TOPIC, "--compressed", "--results-topic", "", "--duration", "8"], env=env(domain),
                                capture_output=True, text=True, timeout=120)
    finally:
        os.killpg(publisher.pid, signal.SIGINT)
        publisher.wait(timeout=20)
    assert record.returncode == 0, record.stdout + record.stderr
    assert f"recording {TOPIC}/compressed into" in record.stdout
    images = list(read_recording_images(tmp_path / "rec", TOPIC + "/compressed"))
    assert len(images) >= 10 and images[0][1].shape == (64, 96, 3) and images[0][2] == (96, 64)


def test_record_refuses_to_overwrite(tmp_path):
    (tmp_path / "rec").mkdir()
    done = subprocess.run([str(BIN / "molmo2-ros"), "record", "--out", str(tmp_path / "rec"), "--duration", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"molmo2-ros record: error: {tmp_path / 'rec'} exists; choose a new --out folder" in done.stderr
