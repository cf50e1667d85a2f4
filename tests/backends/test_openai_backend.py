"""The openai backend against a real HTTP server process (tests/backends/chat_server.py):
what it sends each kind of server, how its answer is mapped back, and each network fault
(HTTP 500, not JSON, connection closed mid-answer, nothing listening, a hung server, a
cancel) ending in a ServerError that says why, or a prompt return; https; the API key.
The real inference server (`transformers serve`) is tests/ros/test_server_backend.py's."""
import base64
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from molmo2_ros.backends.factory import make_backend
from molmo2_ros.backends.openai_backend import OpenAIBackend, ServerError, api_base, read_api_key
from molmo2_ros.backends.server_video import decode_video
from molmo2_ros.core.grounder import ground

sys.path.insert(0, str(Path(__file__).parent))
from chat_server import ChatServer  # noqa: E402
ANSWER = '<points coords="0.0 1 500 500">thing</points>'
SECRET = "sk-test-5ecret-do-not-log"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def chat_server(tmp_path):
    servers = []

    def start(mode: str, **kw) -> ChatServer:
        servers.append(ChatServer(tmp_path, mode, **kw))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def test_a_window_goes_inline_to_vllm_losslessly_and_the_answer_maps_back(chat_server, synthetic_frames):
    server = chat_server("ok")
    frames = synthetic_frames(4, size=(161, 121))   # odd sides: lossless keeps them
    backend = OpenAIBackend(server.url, "allenai/Molmo2-4B", encoding="lossless")
    assert backend.health == "ok"
    result = ground(backend, frames, "thing", "point", max_new_tokens=77)
    body = server.requests()[-1]["body"]
    assert body["model"] == "allenai/Molmo2-4B" and body["temperature"] == 0 and body["max_tokens"] == 77
    video, prompt = body["messages"][0]["content"]
    assert prompt["type"] == "text" and "thing" in prompt["text"]
    url = video["video_url"]["url"]
    assert url.startswith("data:video/mp4;base64,")
    decoded = decode_video(base64.b64decode(url.split(",", 1)[1]))
    assert len(decoded) == 4 and all(np.array_equal(d, f.image) for d, f in zip(decoded, frames))
    assert body["media_io_kwargs"] == {"video": {"frame_sample_mode": "fps", "num_frames": 4,
                                                 "max_fps": 2.0, "sampling_fps": 2.0}}
    assert result.answer == ANSWER and result.backend == "openai"
    point = result.points[0]   # T 0.0 -> the first frame sent; 500/1000 of its source size
    assert point.stamp_ns == frames[0].stamp_ns and (point.x, point.y) == (80.5, 60.5)
    split = backend.last_timings
    assert split.video_bytes > 0 and split.request_bytes > split.video_bytes
    assert min(split.encode_s, split.upload_s, split.server_s, split.parse_s) >= 0 and split.server_s > 0


def test_transformers_serve_gets_a_file_path_deleted_after_the_answer(chat_server, synthetic_frames):
    server = chat_server("ok")
    frames = synthetic_frames(3)
    backend = OpenAIBackend(server.url, "/models/shapes-tiny", server_kind="transformers")
    generation = backend.generate(frames, "Point to the thing.", max_new_tokens=8)
    body = server.requests()[-1]["body"]
    path = body["messages"][0]["content"][0]["video_url"]["url"]
    assert body["chat_template_kwargs"] == {"do_sample_frames": False} and "media_io_kwargs" not in body
    assert path.endswith(".mp4") and not Path(path).exists()
    assert generation.frame_times == [0.0, 0.5, 1.0] and generation.is_video
    backend.close()
    assert not Path(path).parent.exists()


def test_one_frame_goes_as_an_image(chat_server, synthetic_frames):
    server = chat_server("ok")
    backend = OpenAIBackend(server.url, "m", encoding="lossless")
    generation = backend.generate(synthetic_frames(1), "Point to the thing.", max_new_tokens=8)
    part = server.requests()[-1]["body"]["messages"][0]["content"][0]
    assert part["image_url"]["url"].startswith("data:image/png;base64,")
    assert generation.frame_times == [1.0] and not generation.is_video


@pytest.mark.parametrize("mode, reason", [
    ("500", "HTTP 500: {\"error\": \"best audio stream is unknown\"}"),
    ("badjson", "malformed answer (not JSON"),
    ("close", "closed the connection mid-answer"),
])
def test_a_failing_server_is_a_server_error_with_the_reason_and_recovery_needs_no_restart(
        chat_server, synthetic_frames, mode, reason):
    failing = chat_server(mode)
    backend = OpenAIBackend(failing.url, "m", api_key=SECRET)
    with pytest.raises(ServerError, match="") as caught:
        backend.generate(synthetic_frames(2), "Point to the thing.", max_new_tokens=8)
    assert reason in str(caught.value) and SECRET not in str(caught.value)
    assert backend.health.startswith("failing") and SECRET not in backend.health
    failing.stop()
    chat_server("ok", port=failing.port)   # the server comes back on the same port
    assert backend.generate(synthetic_frames(2), "Point to the thing.", max_new_tokens=8).text == ANSWER
    assert backend.health == "ok"


def test_nothing_listening_is_reported_at_construction_and_per_query(synthetic_frames):
    backend = OpenAIBackend(f"http://127.0.0.1:{free_port()}", "m")
    assert backend.health.startswith("unreachable") and "connection refused" in backend.health
    assert backend.diagnostics()["server_health"] == backend.health
    with pytest.raises(ServerError, match="connection refused"):
        backend.generate(synthetic_frames(2), "Point to the thing.", max_new_tokens=8)


def test_a_hung_server_times_out_and_the_connection_is_closed(chat_server, synthetic_frames):
    server = chat_server("hang")
    backend = OpenAIBackend(server.url, "m", timeout_s=1.0)
    assert backend.health.startswith("unreachable")   # its /models never answers either
    started = time.monotonic()
    with pytest.raises(ServerError, match=r"no answer from .* within 1 s \(timeout\)"):
        backend.generate(synthetic_frames(2), "Point to the thing.", max_new_tokens=8)
    assert time.monotonic() - started < 3.0
    wait_for(lambda: any(r.get("event") == "client closed" for r in server.requests()), "the request closed")


def test_cancel_stops_waiting_and_closes_the_request(chat_server, synthetic_frames):
    server = chat_server("hang")
    backend = OpenAIBackend(server.url, "m", timeout_s=60.0)
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    generation = backend.generate(synthetic_frames(2), "Point to the thing.", max_new_tokens=8,
                                  should_stop=stop.is_set)
    assert generation.text == "" and time.monotonic() - started < 2.0
    wait_for(lambda: any(r.get("event") == "client closed" for r in server.requests()), "the request closed")


def test_https_verifies_the_server(chat_server, synthetic_frames, tmp_path, monkeypatch):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = chat_server("ok", tls=(cert, key))
    untrusted = OpenAIBackend(server.url, "m")
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.health
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))   # how a private CA is trusted
    backend = OpenAIBackend(server.url, "m")
    assert backend.health == "ok"
    assert backend.generate(synthetic_frames(2), "Point to the thing.", max_new_tokens=8).text == ANSWER


def test_the_api_key_comes_from_the_environment_or_a_file_and_goes_only_in_the_header(
        chat_server, synthetic_frames, tmp_path, monkeypatch):
    server = chat_server("ok")
    monkeypatch.setenv("MOLMO2_TEST_KEY", SECRET)
    backend = make_backend("openai", "m", url=server.url, api_key_env="MOLMO2_TEST_KEY")
    backend.generate(synthetic_frames(2), "Point to the thing.", max_new_tokens=8)
    key_file = tmp_path / "key"
    key_file.write_text(SECRET + "\n")
    make_backend("openai", "m", url=server.url, api_key_file=str(key_file)).generate(
        synthetic_frames(2), "Point to the thing.", max_new_tokens=8)
    requests = server.requests()
    assert [r["authorization"] for r in requests] == [f"Bearer {SECRET}"] * 2
    assert all(SECRET not in json.dumps(r["body"]) for r in requests)
    assert SECRET not in repr(vars(backend))
    assert read_api_key() is None
    monkeypatch.delenv("MOLMO2_TEST_KEY")
    with pytest.raises(ValueError, match="MOLMO2_TEST_KEY is not set"):
        read_api_key(env_name="MOLMO2_TEST_KEY")
    with pytest.raises(ValueError, match="cannot read the API key file"):
        read_api_key(key_file=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not both"):
        read_api_key(env_name="A", key_file="b")


@pytest.mark.parametrize("url, expected", [
    ("http://gpu-host:8000", ("http", "gpu-host", 8000, "/v1")),
    ("https://gpu-host/v1/", ("https", "gpu-host", 443, "/v1")),
    ("http://10.0.0.2:9000/molmo", ("http", "10.0.0.2", 9000, "/molmo/v1")),
])
def test_server_urls(url, expected):
    assert api_base(url) == expected


@pytest.mark.parametrize("url, message", [
    ("", "must be http"), ("ftp://host", "must be http"), ("http://user:pw@host", "must not hold credentials"),
    ("http://host:99999", "bad port"),
])
def test_bad_server_urls_are_refused(url, message):
    with pytest.raises(ValueError, match=message):
        api_base(url)


def test_the_factory_refuses_local_options_and_a_missing_model():
    with pytest.raises(ValueError, match="leave engine_dir, device and dtype unset"):
        make_backend("openai", "m", url="http://127.0.0.1:1", device="cuda")
    with pytest.raises(ValueError, match="served model's name"):
        make_backend("openai", "", url="http://127.0.0.1:1")


def wait_for(condition, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_infer_on_the_command_line_asks_the_server(chat_server, tmp_path, capsys, monkeypatch):
    import cv2

    from molmo2_ros.cli import main

    server = chat_server("ok")
    images = []
    for i in range(3):
        images.append(str(tmp_path / f"{i}.png"))
        cv2.imwrite(images[-1], np.full((120, 160, 3), 40 * i, np.uint8))
    monkeypatch.setenv("MOLMO2_TEST_KEY", SECRET)
    assert main(["infer", "--images", *images, "--query", "thing", "--backend", "openai", "--model", "served-name",
                 "--server-url", server.url, "--server-encoding", "lossless", "--api-key-env", "MOLMO2_TEST_KEY",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["backend"] == "openai" and out["model"] == "served-name" and out["answer"] == ANSWER
    assert out["points"][0]["stamp_ns"] == out["frame_stamps_ns"][0] and out["points"][0]["x"] == 80.0
    assert server.requests()[-1]["authorization"] == f"Bearer {SECRET}"
    assert main(["infer", "--images", *images, "--query", "thing", "--server-url", server.url]) == 1
    assert "--server-url is for --backend openai" in capsys.readouterr().err


def test_the_server_tests_skip_saying_why_except_in_ci(monkeypatch):
    sys.path.insert(0, str(Path(__file__).parents[1]))
    import inference_server

    monkeypatch.setattr(inference_server, "missing", lambda: ["python package torchcodec (pip install ...)"])
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="missing python package torchcodec"):
        inference_server.require()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="missing python package torchcodec"):
        inference_server.require()
