"""The node as the client of a real inference server: `transformers serve` on the shipped
model (tests/inference_server.py), the node in its own process, goals over DDS.

- parity: 22 point/count/track goals over two shapes clips, answered by the server with
  lossless video, equal the local torch backend's answers on the same frames, token for
  token, with every point on the same pixel and stamp; the API key set for the node
  appears in none of its log, `ros2 param dump`, its parameters or /diagnostics;
- faults, each against a real process on the server's port: nothing listening at
  configure (the node still comes up and says so), an HTTP server answering 500, one
  answering no JSON, the real server stopped with SIGSTOP (timeout; a cancel), killed
  mid-answer: every goal ERROR_BACKEND with the reason, the node active throughout, and
  answering again once the real server is back, without a restart;
- two node processes sharing one server are both answered, each with its own queue.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parents[1] / "backends"))
import inference_server  # noqa: E402
from chat_server import ChatServer  # noqa: E402
from node_harness import ROOT, Harness, NodeProcess, write_params  # noqa: E402

from molmo2_ros.action import Ground  # noqa: E402
from molmo2_ros.core.grounding import Frame  # noqa: E402
from molmo2_ros.ros.image_messages import rgb_to_image  # noqa: E402
from molmo2_ros.ros.messages import from_time, to_time  # noqa: E402
from molmo2_ros.sim.shapes_world import make_clip  # noqa: E402

pytestmark = pytest.mark.slow
SECRET = "sk-molmo2-test-3c8f1d2a-never-log-me"
ERROR_BACKEND = Ground.Result.ERROR_BACKEND
TASKS = {0: "point", 1: "count", 2: "track"}


def domain_for(offset: int) -> int:
    return 100 + (os.getpid() * 3 + offset) % 100


def node_params(tmp_path: Path, url: str, name: str = "params.yaml", **overrides) -> Path:
    return write_params(tmp_path / name, backend="openai", model=str(inference_server.SHIPPED_MODEL),
                        server_url=url, server_kind="transformers", server_encoding="lossless",
                        server_api_key_env="MOLMO2_TEST_SERVER_KEY", image_topic="/server_cam",
                        image_reliability="reliable", fps=2.0, window_seconds=8.0, max_frames=16,
                        tracking_enable=False, diagnostics_period=0.5, **overrides)


def publish_clip(harness: Harness, seed: int, start_ns: int | None = None) -> tuple[dict[int, Frame], list[str]]:
    """A 16-frame shapes clip at 2 fps, stamped from `start_ns` (default: now; a later clip
    continues the previous one's stamps, so the window never sees a jump): its frames by
    stamp, its labels."""
    clip = make_clip(seed, n_frames=16, fps=2.0, n_objects=3, start_ns=start_ns or time.time_ns())
    frames = {}
    for image, stamp in zip(clip.frames, clip.stamps_ns):
        harness.image_pub.publish(rgb_to_image(image, to_time(stamp), harness.frame_id))
        frames[stamp] = Frame(image=image, stamp_ns=stamp, source_size=clip.size, frame_id=harness.frame_id)
        time.sleep(0.02)
    harness.wait_diag(lambda d: d.get("window_frames") == "16" and d.get("window_span_s") == "7.50",
                      timeout=30, what="the clip in the window")
    return frames, clip.labels


@pytest.fixture
def node_env(monkeypatch):
    monkeypatch.setenv("MOLMO2_TEST_SERVER_KEY", SECRET)


def test_server_answers_equal_the_local_backends_and_the_key_stays_secret(tmp_path, node_env):
    inference_server.require()
    from molmo2_ros.backends.factory import make_backend
    from molmo2_ros.core.grounder import ground

    server = inference_server.TransformersServe(tmp_path / "server.log").start()
    domain = domain_for(1)
    node = NodeProcess(node_params(tmp_path, server.url), domain, tmp_path / "node.log")
    harness = Harness(domain, "/server_cam")
    local = make_backend("torch", str(inference_server.SHIPPED_MODEL), device="cpu")
    compared = 0
    try:
        harness.wait_diag(lambda d: d.get("state") == "active", timeout=120, what="the node active")
        start_ns = None
        for seed in (11, 12):
            frames, labels = publish_clip(harness, seed, start_ns)
            start_ns = max(frames) + 500_000_000
            goals = [(label, task, 0) for label in labels for task in TASKS] + [(labels[0], 0, 8), (labels[1], 2, 8)]
            for label, task, max_frames in goals:
                status, result, _ = harness.ask(label, task, timeout=240, max_frames=max_frames)
                assert result.error_code == 0, result.error_message
                g = result.grounding
                window = [frames[from_time(s)] for s in g.frame_stamps]
                assert len(window) == (max_frames or 16)
                expected = ground(local, window, label, TASKS[task], max_new_tokens=512)
                assert g.answer == expected.answer, (label, task)
                served = [(from_time(p.stamp), p.object_id, p.x, p.y) for p in g.points]
                mine = [(p.stamp_ns, p.object_id, pytest.approx(p.x, abs=1e-3), pytest.approx(p.y, abs=1e-3))
                        for p in expected.points]
                assert served == mine, (label, task, g.answer)
                compared += 1
        assert compared >= 20
        dumped = dump_parameters(domain)
        assert "MOLMO2_TEST_SERVER_KEY" in dumped and SECRET not in dumped
        diagnostics = str(harness.diagnostics)
        assert "server_health" in diagnostics and SECRET not in diagnostics
    finally:
        harness.close()
        node.stop()
        server.kill()
        local.close()
    assert SECRET not in node.log()
    assert SECRET not in (tmp_path / "params.yaml").read_text()


def dump_parameters(domain: int) -> str:
    """`ros2 param dump` of the node (the ROS 2 tools), else its parameters over the
    parameter services (what the dump reads)."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    ros2 = Path(sys.executable).parent / "ros2"
    if ros2.exists():
        out = subprocess.run(["bash", "-c", f"source {Path(sys.executable).parent / 'activate'} && "
                              "ros2 param dump /molmo2_grounding"], env=env, capture_output=True, text=True,
                             timeout=120, cwd=ROOT)
        assert out.returncode == 0, out.stdout + out.stderr
        assert yaml.safe_load(out.stdout)["/molmo2_grounding"]["ros__parameters"]["backend"] == "openai"
        return out.stdout
    from rcl_interfaces.srv import GetParameters, ListParameters
    harness = Harness(domain, "/unused_dump")
    try:
        names = harness._call(ListParameters, "/molmo2_grounding/list_parameters",
                              ListParameters.Request()).result.names
        values = harness._call(GetParameters, "/molmo2_grounding/get_parameters", GetParameters.Request(names=names))
        return str(dict(zip(names, values.values)))
    finally:
        harness.close()


def test_every_network_fault_is_a_backend_error_with_the_reason_and_the_node_recovers(tmp_path, node_env):
    inference_server.require()
    server = inference_server.TransformersServe(tmp_path / "server.log")   # not started: nothing listening
    domain = domain_for(2)
    node = NodeProcess(node_params(tmp_path, server.url, server_timeout=8.0), domain, tmp_path / "node.log")
    harness = Harness(domain, "/server_cam")
    fakes = []
    try:
        d = harness.wait_diag(lambda d: d.get("state") == "active", timeout=120, what="the node active")
        assert d["server_health"].startswith("unreachable") and "connection refused" in d["server_health"]
        assert d["_message"].startswith("server unreachable")
        assert "queries are answered ERROR_BACKEND until it answers" in node.log()
        publish_clip(harness, 21)

        def fails(reason: str, **goal):
            _, result, _ = harness.ask("red circle", timeout=120, **goal)
            assert result.error_code == ERROR_BACKEND and reason in result.error_message, result.error_message
            assert node.alive()
            harness.wait_diag(lambda d: d.get("state") == "active" and d["server_health"].startswith("failing"),
                              what="the node active, its server failing")

        def answers():
            _, result, _ = harness.ask("red circle", timeout=240)
            assert result.error_code == 0, result.error_message
            harness.wait_diag(lambda d: d["server_health"] == "ok", what="the server healthy again")

        fails("connection refused")
        for mode, reason in (("500", "HTTP 500"), ("badjson", "malformed answer (not JSON")):
            fakes.append(ChatServer(tmp_path, mode, port=server.port))
            fails(reason)
            fakes.pop().stop()
        server.start()
        answers()                                     # back, no restart

        server.pause()                                # SIGSTOP: a request hangs
        started = time.monotonic()
        fails("within 8 s (timeout)")
        assert time.monotonic() - started < 30
        handle, _ = harness.send_goal("red circle")   # a cancel stops waiting
        time.sleep(1.0)
        handle.cancel_goal_async()
        status, result = harness.result(handle, timeout=30)
        assert result.error_code == Ground.Result.ERROR_CANCELED, result.error_message
        server.resume()
        answers()

        server.pause()                                # killed with the request in flight
        handle, stages = harness.send_goal("blue square", task=2)
        harness.wait_for(lambda: Ground.Feedback.STAGE_GENERATING in stages, 60, "the request sent")
        time.sleep(0.5)
        server.kill()
        status, result = harness.result(handle, timeout=60)
        assert result.error_code == ERROR_BACKEND, result.error_message
        assert "closed the connection" in result.error_message or "refused" in result.error_message
        server.start()
        answers()
        assert node.alive() and "Traceback" not in node.log()
    finally:
        for fake in fakes:
            fake.stop()
        harness.close()
        node.stop()
        server.kill()


def test_two_nodes_share_one_server_each_with_its_own_queue(tmp_path, node_env):
    inference_server.require()
    server = inference_server.TransformersServe(tmp_path / "server.log").start()
    nodes, harnesses = [], []
    try:
        for i, queue_size in enumerate((1, 2)):
            domain = domain_for(10 + i)
            params = node_params(tmp_path, server.url, name=f"params{i}.yaml", queue_size=queue_size)
            nodes.append(NodeProcess(params, domain, tmp_path / f"node{i}.log"))
            harnesses.append(Harness(domain, "/server_cam"))
        for harness in harnesses:
            harness.wait_diag(lambda d: d.get("state") == "active", timeout=120, what="the node active")
            publish_clip(harness, 31)
        # node 0 (queue 1): one runs, one waits, the third is refused; node 1 (queue 2): all three answered
        sent = [[h.send_goal("red circle")[0] for _ in range(3)] for h in harnesses]
        codes = [[h.result(handle, timeout=300)[1].error_code for handle in handles]
                 for h, handles in zip(harnesses, sent)]
        assert sorted(codes[0]) == [0, 0, Ground.Result.ERROR_BUSY], codes
        assert codes[1] == [0, 0, 0], codes
    finally:
        for harness in harnesses:
            harness.close()
        for node in nodes:
            node.stop()
        server.kill()
