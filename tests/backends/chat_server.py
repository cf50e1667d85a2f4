"""A small chat-completions server for the openai backend's fault tests, run as its own
process: `python chat_server.py PORT MODE REQUESTS_LOG [CERT KEY]`.

MODE: "ok" answers `{"choices": [{"message": {"content": ANSWER}}]}`; "500" answers HTTP 500;
"badjson" answers 200 with a body that is not JSON; "hang" reads the request and never
answers; "close" reads the request and closes the connection without a word. GET /v1/models
answers in every mode but "hang". Each request is appended to REQUESTS_LOG as one JSON line
(path, Authorization header, body; for "hang", a line when the client went away). With
CERT and KEY it speaks https. `ChatServer` starts it from a test.
"""
from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ANSWER = '<points coords="0.0 1 500 500">thing</points>'


def main(port: int, mode: str, log_path: str, cert: str | None = None, key: str | None = None) -> None:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _log(self, **fields):
            with open(log_path, "a") as f:
                f.write(json.dumps({"path": self.path, "authorization": self.headers.get("Authorization"),
                                    **fields}) + "\n")

        def _reply(self, status: int, body: bytes, content_type: str = "application/json"):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if mode == "hang":
                time.sleep(3600)
            self._reply(200, json.dumps({"object": "list", "data": []}).encode())

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self._log(body=body)
            if mode == "ok":
                self._reply(200, json.dumps({"choices": [{"message": {"role": "assistant",
                                                                      "content": ANSWER}}]}).encode())
            elif mode == "500":
                self._reply(500, b'{"error": "best audio stream is unknown"}')
            elif mode == "badjson":
                self._reply(200, b"<html>not json</html>", "text/html")
            elif mode == "close":
                self.close_connection = True
                self.connection.close()
            elif mode == "hang":   # until the client closes the connection
                self.connection.settimeout(None)
                while self.connection.recv(1):
                    pass
                self._log(event="client closed")

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    if cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print("listening", flush=True)
    server.serve_forever()


class ChatServer:
    """This script in its own process on `port` (default: a free one), answering in `mode`."""

    def __init__(self, log_dir: Path, mode: str, port: int | None = None, tls: tuple[Path, Path] | None = None):
        if port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port = port
        self.log = log_dir / f"requests-{mode}-{port}.jsonl"
        self.log.touch()
        args = [sys.executable, __file__, str(port), mode, str(self.log), *map(str, tls or ())]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "listening"
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    def requests(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3], *sys.argv[4:6])
