"""The openai backend: Molmo2 on an inference server (vLLM, `transformers serve`), this
node its client over the OpenAI chat-completions API.

The node keeps everything around the model (window, stamps, parsing, mapping, tracking,
3D); the server only answers. A query's frames go out as one video at the window's rate
(molmo2_ros.backends.server_video), and the answer's times are read back as the server
presented them: frame i at `i / rate` seconds, so each `T` maps to the frame sent at that
index. Each server takes video its own way (`server_kind`):
- "vllm": the video inline as a `data:video/mp4;base64,...` URL, and `media_io_kwargs`
  that make vLLM's Molmo2 loader keep exactly the frames sent (works for remote servers);
- "transformers": `transformers serve` on this machine reads a file path (it takes no
  `data:` video), written to a private temporary folder and deleted after the answer;
  `chat_template_kwargs` switch its frame sampling off.

HTTP is the standard library's (http.client, ssl: https verifies against the system's
CA store, or SSL_CERT_FILE). The request runs on a helper thread while the caller polls
`should_stop` and the deadline, so a canceled query, a hung server or one that never
answers costs at most the timeout: the connection is shut down and a ServerError says
why. The API key comes from an environment variable or a file, never from a parameter,
and appears in no message. Non-streaming: one JSON answer (the request is built so that
`"stream": true` server-sent events could feed a per-token hook later).
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import urlsplit

from molmo2_ros.backends.inputs import validate_frames
from molmo2_ros.backends.server_video import ENCODINGS, encode_image, encode_video, presented_times, video_rate
from molmo2_ros.core.backend import STAGE_GENERATING, STAGE_PREPROCESSING, Generation
from molmo2_ros.core.grounding import Frame

SERVER_KINDS = ("vllm", "transformers")
PROBE_TIMEOUT_S = 3.0
MAX_ANSWER_BYTES = 16 << 20
POLL_S = 0.05


class ServerError(RuntimeError):
    """The server gave no usable answer (unreachable, HTTP error, malformed answer, timeout)."""


@dataclass
class ServerTimings:
    """Where one query's time went, in seconds (the bench reports them)."""

    encode_s: float = 0.0      # frames -> video/image bytes (+ base64 or file)
    upload_s: float = 0.0      # connect and send the request
    server_s: float = 0.0      # request sent -> answer received
    parse_s: float = 0.0       # the answer's JSON
    request_bytes: int = 0     # the request body as sent (a file transport sends its path only)
    video_bytes: int = 0       # the encoded video or image


class Secret:
    """A value that never shows in a repr or a log line (the API key)."""

    __slots__ = ("value",)

    def __init__(self, value: str):
        self.value = value

    def __repr__(self) -> str:
        return "Secret('***')"


def read_api_key(env_name: str = "", key_file: str = "") -> str | None:
    """The API key from the environment variable named `env_name` or the file `key_file`
    (one of them; stripped of surrounding whitespace); None when neither is given."""
    if env_name and key_file:
        raise ValueError("give the API key by an environment variable or a file, not both")
    if env_name:
        key = os.environ.get(env_name, "").strip()
        if not key:
            raise ValueError(f"the API key's environment variable {env_name} is not set or empty")
        return key
    if key_file:
        try:
            key = Path(key_file).expanduser().read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the API key file {key_file}: {exc.strerror or exc}") from None
        if not key:
            raise ValueError(f"the API key file {key_file} is empty")
        return key
    return None


def api_base(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path prefix ending in /v1) of a server URL; ValueError if unusable."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"server URL must be http(s)://host[:port][/v1], got {url!r}")
    if parts.username or parts.password:
        raise ValueError("server URL must not hold credentials; give the API key by an environment "
                         "variable or a file")
    if parts.query or parts.fragment:
        raise ValueError(f"server URL must not have a query or fragment, got {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"server URL has a bad port: {url!r}") from None
    path = parts.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    return parts.scheme, parts.hostname, port, path


class OpenAIBackend:
    """Backend protocol (molmo2_ros.core.backend) over a chat-completions server."""

    name = "openai"
    compiles_on_first_use = False   # the server warms itself up

    def __init__(self, url: str, model: str, *, server_kind: str = "vllm", encoding: str = "compact",
                 timeout_s: float = 60.0, api_key: str | None = None):
        if not model:
            raise ValueError("the openai backend needs the served model's name (the model parameter: "
                             "e.g. allenai/Molmo2-4B, or the folder `transformers serve` loads)")
        if server_kind not in SERVER_KINDS:
            raise ValueError(f"server kind must be one of {', '.join(SERVER_KINDS)}, got {server_kind!r}")
        if encoding not in ENCODINGS:
            raise ValueError(f"video encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
        if not timeout_s > 0:
            raise ValueError(f"server timeout must be > 0 s, got {timeout_s}")
        self.scheme, self.host, self.port, self.path = api_base(url)
        self.model_id = model
        self.server_kind, self.encoding, self.timeout_s = server_kind, encoding, timeout_s
        self._auth = {"Authorization": Secret(f"Bearer {api_key}")} if api_key else {}
        self._tls = ssl.create_default_context() if self.scheme == "https" else None
        self._files = tempfile.TemporaryDirectory(prefix="molmo2-server-") if server_kind == "transformers" else None
        self.last_timings = ServerTimings()
        self.health = "not contacted yet"
        self.probe()

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"

    # --- health ---------------------------------------------------------------------------
    def probe(self) -> str:
        """Whether the server answers HTTP at all (GET /v1/models; its status and list are not
        judged: `transformers serve` answers 500 there when it has no hub cache); recorded in
        `health` ("ok" or why not) and returned; never raises."""
        try:
            self._exchange("GET", "/models", None, time.monotonic() + PROBE_TIMEOUT_S)
            self.health = "ok"
        except ServerError as exc:
            self.health = f"unreachable: {exc}"
        return self.health

    def diagnostics(self) -> dict[str, str]:
        """The server's health for /diagnostics (never the API key)."""
        return {"server": self.endpoint, "server_health": self.health}

    # --- one query -------------------------------------------------------------------------
    def generate(self, frames: Sequence[Frame], prompt: str, *, max_new_tokens: int,
                 progress: Callable[[str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> Generation:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if self._auth is None:
            raise RuntimeError("backend is closed")
        validate_frames(frames)
        timings = ServerTimings()
        if progress:
            progress(STAGE_PREPROCESSING)
        t0 = time.perf_counter()
        content, frame_times, media_kwargs, cleanup = self._media(frames, timings)
        is_video = len(frames) > 1
        try:
            body = json.dumps(self._request(content, prompt, max_new_tokens, media_kwargs)).encode()
            timings.encode_s = time.perf_counter() - t0
            timings.request_bytes = len(body)
            if should_stop is not None and should_stop():
                return self._generation("", frame_times, is_video, timings)
            if progress:
                progress(STAGE_GENERATING)
            try:
                status, answer = self._exchange("POST", "/chat/completions", body,
                                                time.monotonic() + self.timeout_s, should_stop, timings)
                if status is None:   # canceled: the request is closed
                    return self._generation("", frame_times, is_video, timings)
                t1 = time.perf_counter()
                text = self._answer_text(status, answer)
                timings.parse_s = time.perf_counter() - t1
            except ServerError as exc:
                self.health = f"failing: {exc}"
                raise
        finally:
            cleanup()
        self.health = "ok"
        return self._generation(text, frame_times, is_video, timings)

    def _generation(self, text: str, frame_times: list[float], is_video: bool, timings: ServerTimings) -> Generation:
        self.last_timings = timings
        return Generation(text=text, frame_times=frame_times, is_video=is_video, preprocess_s=timings.encode_s,
                          generate_s=timings.upload_s + timings.server_s + timings.parse_s)

    def _media(self, frames: Sequence[Frame], timings: ServerTimings):
        """(content part, presented frame times, extra request fields, cleanup) for `frames`."""
        from molmo2_ros.core.grounder import sampling_fps

        if len(frames) == 1:
            data, mime = encode_image(frames[0], self.encoding)
            timings.video_bytes = len(data)
            return {"type": "image_url", "image_url": {"url": _data_url(mime, data)}}, [1.0], {}, lambda: None
        rate = video_rate(sampling_fps(frames))
        data = encode_video(frames, rate, self.encoding)
        timings.video_bytes = len(data)
        times = presented_times(len(frames), rate)
        if self.server_kind == "vllm":
            part = {"type": "video_url", "video_url": {"url": _data_url("video/mp4", data)}}
            extra = {"media_io_kwargs": {"video": {"frame_sample_mode": "fps", "num_frames": len(frames),
                                                   "max_fps": float(rate), "sampling_fps": float(rate)}}}
            cleanup = lambda: None  # noqa: E731
        else:
            fd, path = tempfile.mkstemp(suffix=".mp4", dir=self._files.name)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            part = {"type": "video_url", "video_url": {"url": path}}
            extra = {"chat_template_kwargs": {"do_sample_frames": False}}
            cleanup = lambda: Path(path).unlink(missing_ok=True)  # noqa: E731
        return part, times, extra, cleanup

    def _request(self, content: dict, prompt: str, max_new_tokens: int, extra: dict) -> dict:
        """The chat-completions request: greedy, the media first, then the project's prompt."""
        return {"model": self.model_id, "temperature": 0, "max_tokens": max_new_tokens, "stream": False,
                "messages": [{"role": "user", "content": [content, {"type": "text", "text": prompt}]}],
                **extra}

    def _answer_text(self, status: int, body: bytes) -> str:
        if status != 200:
            raise ServerError(f"the server answered HTTP {status}: {_excerpt(body)}")
        answer = _json(body)
        try:
            text = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ServerError(f"malformed answer (no choices[0].message.content): {_excerpt(body)}") from None
        if not isinstance(text, str):
            raise ServerError(f"malformed answer (content is {type(text).__name__}, not text)")
        return text

    # --- HTTP ------------------------------------------------------------------------------
    def _exchange(self, method: str, route: str, body: bytes | None, deadline: float,
                  should_stop: Callable[[], bool] | None = None,
                  timings: ServerTimings | None = None) -> tuple[int | None, bytes]:
        """(HTTP status, body) of one request, on a helper thread so that a cancel or the
        deadline can close it; (None, b"") when `should_stop` said so first."""
        timings = timings or ServerTimings()
        remaining = max(deadline - time.monotonic(), 0.001)
        socket_timeout = remaining + 1.0   # a backstop: the deadline below closes the request first
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=socket_timeout, context=self._tls)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=socket_timeout)
        outcome: dict = {}
        finished = threading.Event()

        def talk():
            try:
                started = time.perf_counter()
                headers = {"Content-Type": "application/json", "Accept": "application/json",
                           **{name: secret.value for name, secret in self._auth.items()}}
                conn.request(method, self.path + route, body=body, headers=headers)
                sent = time.perf_counter()
                response = conn.getresponse()
                data = response.read(MAX_ANSWER_BYTES + 1)
                timings.upload_s, timings.server_s = sent - started, time.perf_counter() - sent
                outcome["result"] = (response.status, data)
            except Exception as exc:  # reported by the caller's thread
                outcome["error"] = exc
            finally:
                finished.set()

        threading.Thread(target=talk, name="molmo2-server-request", daemon=True).start()
        try:
            while not finished.wait(POLL_S):
                if should_stop is not None and should_stop():
                    return None, b""
                if time.monotonic() > deadline:
                    raise ServerError(f"no answer from {self.endpoint} within {remaining:.3g} s (timeout)")
        finally:
            _shut(conn)
        if "error" in outcome:
            raise ServerError(f"{self.endpoint}: {_describe(outcome['error'])}") from None
        status, data = outcome["result"]
        if len(data) > MAX_ANSWER_BYTES:
            raise ServerError(f"answer larger than {MAX_ANSWER_BYTES >> 20} MiB")
        return status, data

    def close(self) -> None:
        self._auth = None
        if self._files is not None:
            self._files.cleanup()
            self._files = None


def _shut(conn: http.client.HTTPConnection) -> None:
    """Close the connection now, also under a thread blocked reading it."""
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    conn.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listening; is the server running?)"
    if isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError, http.client.IncompleteRead)):
        return f"the server closed the connection mid-answer ({type(exc).__name__})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host: {exc.strerror}"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "no answer within the timeout"
    return f"{type(exc).__name__}: {exc}"


def _json(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ServerError(f"malformed answer (not JSON: {exc}): {_excerpt(body)}") from None
    if not isinstance(data, dict):
        raise ServerError(f"malformed answer (a JSON {type(data).__name__}, not an object): {_excerpt(body)}")
    return data


def _excerpt(body: bytes, limit: int = 300) -> str:
    text = body.decode("utf-8", "replace").strip()
    return text[:limit] + ("..." if len(text) > limit else "") or "(empty body)"


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
