"""A real `transformers serve` process on the shipped model, for the server tests and
bench/bench_server.py: started on a free loopback port, waited for, paused (SIGSTOP),
killed and restarted on the same port.

What it needs beyond the runtime requirements: `transformers[serving]` (fastapi, uvicorn),
`torchcodec` and FFmpeg's libraries (Debian's ffmpeg); scripts/bootstrap.sh installs them.
`missing()` names what is absent; `require()` skips a test for it, except in CI (CI=true),
where it fails.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = ROOT / "molmo2_ros" / "assets" / "shapes-tiny"
TRANSFORMERS_CLI = Path(sys.executable).parent / "transformers"


def missing() -> list[str]:
    """What `transformers serve` with video input lacks here (empty: nothing)."""
    absent = [f"python package {name} (pip install 'transformers[serving]' torchcodec)"
              for name in ("fastapi", "uvicorn", "torchcodec") if importlib.util.find_spec(name) is None]
    if not absent:
        try:
            import torchcodec.decoders  # noqa: F401  (loads FFmpeg's libraries)
        except Exception as exc:  # its message names the libraries it looked for
            absent.append(f"FFmpeg's libraries for torchcodec (apt-get install ffmpeg): "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
    if not TRANSFORMERS_CLI.exists():
        absent.append(f"the transformers command ({TRANSFORMERS_CLI})")
    return absent


def require() -> None:
    """Skip the calling test when the server cannot run here, saying why (fail in CI)."""
    import pytest

    absent = missing()
    if absent:
        reason = "transformers serve cannot run: missing " + "; ".join(absent) + " (scripts/bootstrap.sh installs them)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TransformersServe:
    """`transformers serve MODEL --host 127.0.0.1 --port PORT --device cpu`, one thread."""

    def __init__(self, log_path: Path, model: Path = SHIPPED_MODEL, port: int | None = None):
        self.model, self.port, self.log_path = model, port or free_port(), log_path
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 240.0) -> "TransformersServe":
        env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen([str(TRANSFORMERS_CLI), "serve", str(self.model), "--host", "127.0.0.1",
                                      "--port", str(self.port), "--device", "cpu"],
                                     stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"transformers serve not ready in {timeout} s:\n{self.log()[-3000:]}")
            time.sleep(0.5)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pause(self) -> None:
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
